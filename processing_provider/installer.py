"""Install PyTorch for the plugin from inside QGIS: pip into a folder of the user's QGIS profile.

Pure Python (no Qt, no QGIS): the dependencies dialog runs :class:`PipInstaller` on a
background task and shows its progress and log; tests run it against a local wheel folder.

- **Where**: ``<profile>/python/dependencies/metric_change_detection`` (:func:`packages_dir`),
  never the plugin folder (plugin upgrades wipe it) and never QGIS's own Python: pip runs with
  ``--target`` into a staging folder that replaces the old one only when pip succeeded.
- **Which build**: the CPU wheels (``download.pytorch.org/whl/cpu``: small, no triton, no CUDA
  libraries) unless an NVIDIA GPU is detected and the user asks for CUDA (:func:`plan_install`).
  macOS gets PyPI's wheels (CPU + Apple MPS). When the user's environment names a package
  index itself (``PIP_INDEX_URL``, ``PIP_NO_INDEX``: a mirror, an offline wheel folder), pip
  uses that instead.
- **QGIS's numpy stays**: GDAL's Python bindings and QGIS are built against the numpy QGIS
  ships; the copy pip brings along for torchvision is removed (:data:`HOST_PROVIDED`).
- **Without a restart**: :func:`activate` puts the folder on ``sys.path`` (at plugin load and
  right after an install) and invalidates the import caches; that is enough unless torch was
  already imported in this QGIS session (:func:`restart_needed`).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import queue
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

PACKAGES: Tuple[str, ...] = ("torch", "torchvision")
PYPI = "https://pypi.org/simple"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_INDEX = "https://download.pytorch.org/whl/cu130"  # Windows (PyPI's is CPU-only); the pinned build
HOST_PROVIDED: Tuple[str, ...] = ("numpy",)  # QGIS's own copy wins: GDAL is built against it
FOLDER = ("python", "dependencies", "metric_change_detection")
MARKER = ".metric_change_detection-install.json"  # what was installed, by which command
PENDING_REMOVAL = ".remove-on-next-start"
USER_INDEX_ENV = ("PIP_INDEX_URL", "PIP_NO_INDEX")

Line = Callable[[str], None]
Progress = Callable[[float, str], None]
IsCancelled = Callable[[], bool]


class InstallerError(Exception):
    """The installation could not be done; the message says why and what to do."""


class InstallCancelled(InstallerError):
    """The user cancelled; nothing was changed."""


# ---------------------------------------------------------------------------------- places


def packages_dir(profile_dir: str | os.PathLike) -> Path:
    """The folder the plugin installs packages into, inside QGIS profile ``profile_dir``."""
    return Path(profile_dir).joinpath(*FOLDER)


def _staging(target: Path) -> Path:
    return target.with_name(f".{target.name}.staging")


def installed_info(target: Path) -> Optional[Dict[str, object]]:
    """What the plugin installed into ``target`` (None when it installed nothing there)."""
    try:
        return json.loads((target / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _site_index() -> int:
    """Where to insert a folder on ``sys.path``: before the first site-/dist-packages entry."""
    for i, entry in enumerate(sys.path):
        if entry.rstrip("/\\").endswith(("site-packages", "dist-packages")):
            return i
    return len(sys.path)


def has_install(target: Path) -> bool:
    """True when ``target`` holds packages (installed by the plugin or by the manual command)."""
    target = Path(target)
    try:
        return target.is_dir() and any(p.name != PENDING_REMOVAL for p in target.iterdir())
    except OSError:
        return False


def activate(target: Path, on_line: Optional[Line] = None) -> bool:
    """Put ``target`` on ``sys.path`` (once) when it holds packages; True when it is there.

    Finishes a removal left pending by :func:`remove` first (Windows keeps loaded DLLs open),
    and leaves out of the folder a :data:`HOST_PROVIDED` package QGIS's Python has too (a
    manual ``pip install --target`` brings numpy along).
    """
    target = Path(target)
    if (target / PENDING_REMOVAL).exists():
        shutil.rmtree(target, ignore_errors=True)
    if not has_install(target):
        return False
    leave_out_host_packages(target, on_line)
    entry = str(target)
    if entry not in sys.path:
        sys.path.insert(_site_index(), entry)
    importlib.invalidate_caches()
    return True


def deactivate(target: Path) -> None:
    """Take ``target`` off ``sys.path``."""
    entry = str(Path(target))
    while entry in sys.path:
        sys.path.remove(entry)
    importlib.invalidate_caches()


def restart_needed(packages: Sequence[str] = PACKAGES) -> bool:
    """True when one of ``packages`` (or a submodule) is already imported in this process.

    Python cannot swap an imported torch for another; QGIS must be restarted to use a new one.
    """
    return any(sys.modules.get(name) is not None and name.split(".")[0] in packages
               for name in list(sys.modules))


def remove(target: Path) -> bool:
    """Delete the plugin's install in ``target``; True when done now, False when it needs a restart.

    Takes the folder off ``sys.path``. Files that are in use (Windows keeps loaded DLLs open)
    are removed at the next start instead (:func:`activate` finishes the job).
    """
    target = Path(target)
    deactivate(target)
    shutil.rmtree(_staging(target), ignore_errors=True)
    if not target.exists():
        return True
    try:
        shutil.rmtree(target)
        return True
    except OSError:
        (target / PENDING_REMOVAL).write_text("", encoding="utf-8")
        return False


# ---------------------------------------------------------------------------------- GPU


def detect_nvidia_gpu(run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                      which: Callable[[str], Optional[str]] = shutil.which) -> Optional[str]:
    """The name of the first NVIDIA GPU (``nvidia-smi -L``), or None when there is none."""
    exe = which("nvidia-smi")
    if exe is None and sys.platform.startswith("win"):
        candidate = Path(os.environ.get("SystemRoot", r"C:\Windows")) / "System32" / "nvidia-smi.exe"
        exe = str(candidate) if candidate.is_file() else None
    if exe is None:
        return None
    try:
        done = run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (done.stdout or "").splitlines():
        match = re.match(r"GPU \d+: (.+?)(?: \(UUID: .*\))?$", line.strip())
        if done.returncode == 0 and match:
            return match.group(1)
    return None


# ---------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class InstallPlan:
    """One pip run: which Python, which build, from where, into which folder."""

    python: str
    target: Path
    variant: str  # "cpu" | "cuda"
    packages: Tuple[str, ...] = PACKAGES
    index_url: Optional[str] = None
    find_links: Tuple[str, ...] = ()
    no_index: bool = False
    retries: int = 2
    timeout: int = 30
    note: str = ""  # why this index (shown in the log)

    @property
    def staging(self) -> Path:
        """Where pip installs before the result replaces :attr:`target`."""
        return _staging(self.target)

    def command(self, progress_bar: str = "off", into: Optional[Path] = None) -> List[str]:
        """pip's command line, installing into ``into`` (default: :attr:`staging`)."""
        args = [self.python, "-m", "pip", "install", "--target", str(into or self.staging),
                "--no-input", "--disable-pip-version-check", "--no-warn-script-location",
                "--progress-bar", progress_bar, "--retries", str(self.retries),
                "--timeout", str(self.timeout)]
        return args + self._sources() + list(self.packages)

    def _sources(self) -> List[str]:
        """Where pip looks for the packages: index, no index, local folders of wheels."""
        args = ["--no-index"] if self.no_index else []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for link in self.find_links:
            args += ["--find-links", link]
        return args

    def command_text(self, windows: Optional[bool] = None) -> str:
        """The command a user can type in a terminal: pip straight into :attr:`target`."""
        args = [self.python, "-m", "pip", "install", "--target", str(self.target),
                *self._sources(), *self.packages]
        windows = sys.platform.startswith("win") if windows is None else windows
        if windows:
            return " ".join(f'"{a}"' if " " in a else a for a in args)
        return " ".join(shlex.quote(a) for a in args)


def plan_install(
    target: Path,
    variant: str = "cpu",
    gpu: Optional[str] = None,
    python: Optional[str] = None,
    platform: Optional[str] = None,
    environ: Optional[Dict[str, str]] = None,
    **overrides,
) -> InstallPlan:
    """The pip run installing PyTorch's ``variant`` build into ``target``.

    Args:
        target: the plugin's packages folder (:func:`packages_dir`).
        variant: ``"cpu"`` (default) or ``"cuda"`` (needs ``gpu``, the detected NVIDIA GPU).
        gpu: the name :func:`detect_nvidia_gpu` returned, or None.
        python: the interpreter that runs pip (default: QGIS's, see ``dependencies.qgis_python``).
        platform: ``sys.platform``-style name (default: this machine).
        environ: the environment pip will see (default: ``os.environ``).
        overrides: :class:`InstallPlan` fields (``index_url``, ``find_links``, ``no_index``,
            ``packages``, ``retries``, ``timeout``).

    Raises:
        InstallerError: CUDA asked for without an NVIDIA GPU, or an unknown variant.
    """
    from .dependencies import platform_name, qgis_python

    if variant not in ("cpu", "cuda"):
        raise InstallerError(f"Unknown PyTorch build {variant!r}; choose 'cpu' or 'cuda'.")
    if variant == "cuda" and not gpu:
        raise InstallerError(
            "No NVIDIA GPU was detected (nvidia-smi found none), so the CUDA build would not be "
            "used; install the CPU build, or install the NVIDIA driver first."
        )
    kind = platform_name(platform)
    env = os.environ if environ is None else environ
    user_index = [k for k in USER_INDEX_ENV if env.get(k)]
    if user_index:
        index, note = None, f"package index from your pip settings ({', '.join(user_index)})"
    elif kind == "macos":
        index, note = None, "PyPI (macOS wheels: CPU and Apple MPS)"
    elif variant == "cpu":
        index, note = CPU_INDEX, "PyTorch's CPU-only wheels (smaller; no CUDA libraries, no triton)"
    elif kind == "windows":
        index, note = CUDA_INDEX, f"PyTorch's CUDA wheels for {gpu}"
    else:
        index, note = None, f"PyPI's Linux wheels (CUDA) for {gpu}"
    fields = dict(python=python or qgis_python(platform), target=Path(target), variant=variant,
                  index_url=index, note=note)
    fields.update(overrides)
    return InstallPlan(**fields)


# ---------------------------------------------------------------------------------- run


@dataclass
class InstallResult:
    """What an install did."""

    target: Path
    variant: str
    installed: List[str] = field(default_factory=list)  # "name-version" as pip reported them
    kept_from_qgis: List[str] = field(default_factory=list)  # HOST_PROVIDED packages left out
    seconds: float = 0.0


def check_pip(python: str, timeout: float = 60) -> str:
    """pip's version in ``python`` (which must be QGIS's Python version); else InstallerError."""
    code = "import sys, pip; print(sys.version_info[0], sys.version_info[1], pip.__version__)"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallerError(
            f"Cannot run QGIS's Python ({python}): {exc}. Install PyTorch with the command "
            "shown below in a terminal instead."
        ) from None
    parts = done.stdout.split()
    if done.returncode != 0 or len(parts) != 3:
        raise InstallerError(
            f"pip is not available in QGIS's Python ({python}). Install it (Debian/Ubuntu: "
            "'sudo apt install python3-pip'; Windows/macOS: reinstall QGIS, which ships pip), "
            "then try again."
        )
    major, minor, version = int(parts[0]), int(parts[1]), parts[2]
    if (major, minor) != sys.version_info[:2]:
        raise InstallerError(
            f"The Python found at {python} is {major}.{minor} but QGIS runs Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}; packages for it would not load. "
            "Install PyTorch with the command shown below in QGIS's own shell instead."
        )
    return version


def _pip_version_tuple(version: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


NETWORK_ERRORS = ("Failed to establish a new connection", "Name or service not known",
                  "Temporary failure in name resolution", "Network is unreachable",
                  "Connection refused", "Read timed out", "ConnectTimeoutError", "getaddrinfo failed",
                  "No address associated with hostname", "ProxyError", "SSLError",
                  "Could not fetch URL")


def index_reachable(url: str, timeout: float = 5.0) -> bool:
    """True when a TCP connection to ``url``'s host opens (a ``file:`` URL: the folder exists)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path)).exists()
    if not parsed.hostname:
        return True
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def explain_failure(code: int, log: Sequence[str], plan: InstallPlan,
                    reachable: Callable[[str], bool] = index_reachable) -> str:
    """A user-facing message for pip's failure with exit ``code`` and output ``log``.

    pip says "no matching distribution" both when the index has no build and when it cannot
    reach the index at all (without retries it does not even warn), so the index is probed.
    """
    text = "\n".join(log[-200:])
    tail = next((line.strip() for line in reversed(log) if line.strip().startswith("ERROR")), "")
    url = plan.index_url or os.environ.get("PIP_INDEX_URL") or PYPI
    where = plan.index_url or "your configured package index"
    not_found = "No matching distribution found" in text or "Could not find a version" in text
    if "No space left on device" in text:
        return (f"The disk is full: pip could not write to {plan.target.parent}. Free some space "
                "(PyTorch needs about 1 GB for the CPU build, 5 GB for CUDA) and try again.")
    if any(marker in text for marker in NETWORK_ERRORS) or (
        not_found and not plan.no_index and not reachable(url)
    ):
        return (f"Cannot reach {url}: this computer seems to be offline or behind a proxy. "
                "Connect to the internet (or set HTTPS_PROXY / pip's proxy setting) and try "
                "again, or copy the command below and run it where pip can download. " + tail)
    if not_found:
        return (f"pip found no PyTorch build for this Python ({sys.version.split()[0]}) and "
                f"platform on {where}. Try the other build (CPU/CUDA), or install PyTorch "
                "following pytorch.org for your system. " + tail)
    return f"pip failed (exit code {code}). {tail or 'See the log above.'}"


_COLLECT = re.compile(r"^\s*(?:Collecting|Processing) (\S+)")
_RESOLVER_NOTE = "ERROR: pip's dependency resolver does not currently take into account"
_DOWNLOAD = re.compile(r"^\s*Downloading (\S+)(?: \((.+)\))?")
_RAW = re.compile(r"^Progress (\d+) of (\d+)")
_DONE = re.compile(r"^Successfully installed (.+)$")


class PipInstaller:
    """Runs one :class:`InstallPlan`: pip in a subprocess, its output line by line, cancellable.

    ``on_line`` gets every line pip prints; ``progress(percent, message)`` an estimate (pip has
    no overall progress: resolving and each download count as steps, pip >= 24.1 also reports
    the bytes of each download); ``is_cancelled`` is polled several times a second. Call
    :meth:`run` on a background thread; it blocks until pip ends.
    """

    def __init__(self, plan: InstallPlan, on_line: Optional[Line] = None,
                 progress: Optional[Progress] = None, is_cancelled: Optional[IsCancelled] = None):
        self.plan = plan
        self.on_line = on_line or (lambda line: None)
        self.progress = progress or (lambda pct, msg: None)
        self.is_cancelled = is_cancelled or (lambda: False)
        self.log: List[str] = []
        self._percent = 0.0

    def _report(self, percent: float, message: str) -> None:
        self._percent = max(self._percent, min(99.0, percent))
        self.progress(self._percent, message)

    def _line(self, line: str, state: Dict[str, object]) -> None:
        self.log.append(line)
        self.on_line(line)
        if _COLLECT.match(line):
            state["collected"] = int(state["collected"]) + 1
            name = _COLLECT.match(line).group(1).rsplit("/", 1)[-1]  # type: ignore[union-attr]
            self._report(2 + min(8.0, int(state["collected"])), f"Resolving: {name}")
        elif _DOWNLOAD.match(line):
            state["downloads"] = int(state["downloads"]) + 1
            name = _DOWNLOAD.match(line).group(1).rsplit("/", 1)[-1]  # type: ignore[union-attr]
            state["file"] = name
            done = int(state["downloads"]) / max(int(state["collected"]), 1)
            self._report(10 + 70 * min(done, 1.0), f"Downloading {name}")
        elif _RAW.match(line):
            now, total = (int(v) for v in _RAW.match(line).groups())  # type: ignore[union-attr]
            if total > 0:
                step = 70 / max(int(state["collected"]), 1)
                base = 10 + 70 * min((int(state["downloads"]) - 1) / max(int(state["collected"]), 1), 1)
                self._report(base + step * now / total,
                             f"Downloading {state.get('file', '')}: {now / 1e6:.0f} of {total / 1e6:.0f} MB")
        elif line.startswith("Installing collected packages"):
            self._report(82, "Installing (unpacking the wheels)")
        elif _DONE.match(line):
            state["installed"] = _DONE.match(line).group(1).split()  # type: ignore[union-attr]

    def _stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def run(self) -> InstallResult:
        """Install; return what was installed. Raises InstallerError / InstallCancelled."""
        plan, start = self.plan, time.monotonic()
        self._report(0, f"Checking pip in {plan.python}")
        version = check_pip(plan.python)
        bar = "raw" if _pip_version_tuple(version) >= (24, 1) else "off"
        command = plan.command(bar)
        self.on_line(f"$ {' '.join(shlex.quote(a) for a in command)}")
        if plan.note:
            self.on_line(f"# {plan.note}")
        shutil.rmtree(plan.staging, ignore_errors=True)
        plan.target.parent.mkdir(parents=True, exist_ok=True)
        self._report(1, "Starting pip")
        env = dict(os.environ, PYTHONIOENCODING="utf-8", PIP_NO_INPUT="1",
                   PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # pip's own imports come from QGIS's Python only
        creation = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window on Windows
        try:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, text=True,
                                    encoding="utf-8", errors="replace", bufsize=1,
                                    creationflags=creation)
        except OSError as exc:
            raise InstallerError(f"Cannot start pip ({exc}).") from None
        lines: queue.Queue[Optional[str]] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                for part in raw.replace("\r", "\n").splitlines():
                    if part.strip():
                        lines.put(part.rstrip())
            lines.put(None)

        reader = threading.Thread(target=pump, name="metriccd-pip-output", daemon=True)
        reader.start()
        state: Dict[str, object] = {"collected": 0, "downloads": 0, "installed": []}
        try:
            while True:
                if self.is_cancelled():
                    self._stop(proc)
                    raise InstallCancelled("Installation cancelled; nothing was changed.")
                try:
                    line = lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if line is None:
                    break
                self._line(line, state)
            code = proc.wait()
            if code != 0:
                raise InstallerError(explain_failure(code, self.log, plan))
            if self.is_cancelled():
                raise InstallCancelled("Installation cancelled; nothing was changed.")
            if any(line.startswith(_RESOLVER_NOTE) for line in self.log):
                self.on_line("# pip's note on dependency conflicts above compares with packages "
                             "outside the plugin's folder (QGIS's own); they are not changed, "
                             "and the installation succeeded.")
            self._report(92, "Finishing")
            kept = leave_out_host_packages(plan.staging, self.on_line)
            self._write_marker(command, state, kept)
            self._swap()
        except BaseException:
            self._stop(proc)
            shutil.rmtree(plan.staging, ignore_errors=True)
            raise
        finally:
            reader.join(5)
        installed = [p for p in state["installed"] if not any(  # type: ignore[union-attr]
            p.lower().startswith(f"{h}-") for h in kept)]
        self._report(100, "Installed")
        self.progress(100.0, "Installed")
        return InstallResult(plan.target, plan.variant, installed, kept, time.monotonic() - start)

    def _write_marker(self, command: List[str], state: Dict[str, object], kept: List[str]) -> None:
        info = {"variant": self.plan.variant, "command": command, "installed": state["installed"],
                "kept_from_qgis": kept, "python": sys.version.split()[0],
                "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        (self.plan.staging / MARKER).write_text(json.dumps(info, indent=1), encoding="utf-8")

    def _swap(self) -> None:
        """Replace the target with the staging folder (the old install is removed)."""
        target, staging = self.plan.target, self.plan.staging
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            deactivate(target)
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)  # files in use (Windows) stay until next time


def _host_has(name: str, folder: Path) -> bool:
    """True when QGIS's Python finds ``name`` somewhere on ``sys.path`` other than ``folder``."""
    folder = Path(folder).resolve()
    paths = [p for p in sys.path if p and Path(p).resolve() != folder]
    spec = importlib.machinery.PathFinder.find_spec(name, paths)
    return spec is not None


def leave_out_host_packages(folder: Path, on_line: Optional[Line] = None) -> List[str]:
    """Remove from ``folder`` the :data:`HOST_PROVIDED` packages QGIS's Python has itself."""
    folder, kept = Path(folder), []
    for name in HOST_PROVIDED:
        present = (folder / name).exists() or any(folder.glob(f"{name}-*.dist-info"))
        if not present or not _host_has(name, folder):
            continue
        for path in [folder / name, folder / f"{name}.libs", *folder.glob(f"{name}-*.dist-info"),
                     *folder.glob("bin/f2py*")]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
        kept.append(name)
        if on_line is not None:
            on_line(f"# Kept QGIS's own {name} (GDAL and QGIS are built against it); removed "
                    "the copy pip brought along.")
    return kept
