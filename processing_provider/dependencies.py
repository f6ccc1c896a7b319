"""What the plugin needs from QGIS's Python (torch, torchvision, weights) and how to install it.

Pure Python (no qgis import) so it is usable from the algorithm, the dialog and tests alike.
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from ..core.torch_import import block_triton, triton_state

REQUIRED = ("torch", "torchvision")
# torchvision's ImageNet checkpoints of the D-FE backbones (file names of its weights API).
WEIGHT_FILES = {"vgg16": "vgg16-397923af.pth", "mobilenet_v2": "mobilenet_v2-b0353104.pth"}
CPU_ONLY_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class InstallHint:
    """The command installing packages into QGIS's Python, where to type it, and what next."""

    command: str
    where: str
    note: str = "Then restart QGIS."
    target: Optional[str] = None  # the plugin's packages folder the command installs into


@dataclass(frozen=True)
class PackageStatus:
    """One required package: its version, or why it cannot be imported."""

    name: str
    version: Optional[str]
    error: Optional[str] = None

    @property
    def installed(self) -> bool:
        """True when the package imports."""
        return self.version is not None


@dataclass
class DependencyReport:
    """Everything the "Check dependencies" dialog shows."""

    python: str
    platform: str
    packages: List[PackageStatus]
    cuda_available: Optional[bool] = None
    cuda_device: Optional[str] = None
    cuda_version: Optional[str] = None
    mps_available: Optional[bool] = None
    weights_dir: Optional[str] = None
    weights: Dict[str, bool] = field(default_factory=dict)
    install: Optional[InstallHint] = None
    torch_path: Optional[str] = None  # the folder torch was imported from
    triton: str = "not loaded"  # "blocked" | "loaded" | "not loaded" (see core.torch_import)
    nvidia_gpu: Optional[str] = None  # the NVIDIA GPU nvidia-smi lists (None: none found)
    target: Optional[str] = None  # the plugin's packages folder in the QGIS profile
    target_installed: bool = False  # that folder holds packages

    @property
    def missing(self) -> List[str]:
        """Names of the required packages that do not import."""
        return [p.name for p in self.packages if not p.installed]

    @property
    def ok(self) -> bool:
        """True when every required package imports."""
        return not self.missing


def platform_name(platform: Optional[str] = None) -> str:
    """``"windows"``, ``"macos"`` or ``"linux"`` for ``platform`` (default: this machine)."""
    value = platform or sys.platform
    if value.startswith("win"):
        return "windows"
    if value == "darwin":
        return "macos"
    return "linux"


def qgis_python(platform: Optional[str] = None, executable: Optional[str] = None) -> str:
    """Path of the Python interpreter that QGIS runs (inside QGIS ``sys.executable`` is QGIS)."""
    exe = executable if executable is not None else sys.executable
    name = Path(exe).name.lower()
    kind = platform_name(platform)
    if name.startswith("python") and (executable is not None or _inside(exe, sys.prefix)):
        return exe
    if kind == "windows":
        return "python"  # on PATH inside the OSGeo4W Shell
    if kind == "macos":
        marker = "QGIS.app"
        if marker in exe:
            app = exe[: exe.index(marker) + len(marker)]
            return f"{app}/Contents/MacOS/bin/python3"
        return "/Applications/QGIS.app/Contents/MacOS/bin/python3"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidate = Path(sys.base_prefix) / "bin" / f"python{version}"
    return str(candidate) if candidate.is_file() else "/usr/bin/python3"


def _inside(path: str, folder: str) -> bool:
    """True when ``path`` lies in ``folder`` (embedded Pythons may report a PATH python3)."""
    try:
        return Path(folder).resolve() in Path(path).absolute().parents
    except (OSError, ValueError):
        return False


def _externally_managed() -> bool:
    """True for a system Python that refuses pip without a flag (PEP 668, e.g. Debian 12)."""
    if sys.prefix != sys.base_prefix:  # a virtual environment
        return False
    return (Path(sysconfig.get_paths()["stdlib"]) / "EXTERNALLY-MANAGED").is_file()


def _quote(path: str) -> str:
    return f'"{path}"' if " " in path else path


Target = Union[str, os.PathLike, None]


def install_hint(
    packages: Sequence[str] = REQUIRED,
    platform: Optional[str] = None,
    executable: Optional[str] = None,
    target: Target = None,
    gpu: Optional[str] = None,
) -> InstallHint:
    """The exact command installing ``packages`` for QGIS's Python on ``platform``.

    With ``target`` (the plugin's packages folder, see ``installer.packages_dir``): pip
    ``--target`` that folder with the CPU wheels — nothing in QGIS's or the system's Python
    changes, so no administrator rights and no PEP 668 override are needed. Without it, the
    older per-user command.
    """
    if target is not None:
        return _target_hint(packages, platform, executable, Path(target), gpu)
    names = " ".join(packages)
    kind = platform_name(platform)
    python = _quote(qgis_python(platform, executable))
    if kind == "windows":
        return InstallHint(
            f"{python} -m pip install {names}",
            "in the OSGeo4W Shell (Start menu > QGIS > OSGeo4W Shell, run as administrator)",
        )
    if kind == "macos":
        return InstallHint(f"{python} -m pip install --user {names}", "in a Terminal")
    in_venv = executable is None and sys.prefix != sys.base_prefix
    user = "" if in_venv else " --user"
    flag = " --break-system-packages" if executable is None and _externally_managed() else ""
    return InstallHint(
        f"{python} -m pip install{user}{flag} {names}",
        "in a terminal",
        f"Then restart QGIS. For the smaller CPU-only build add '--index-url {CPU_ONLY_INDEX}'.",
    )


def _target_hint(packages: Sequence[str], platform: Optional[str], executable: Optional[str],
                 target: Path, gpu: Optional[str]) -> InstallHint:
    from .installer import CUDA_INDEX, plan_install

    kind = platform_name(platform)
    python = qgis_python(platform, executable)
    plan = plan_install(target, "cpu", python=python, platform=platform or sys.platform,
                        environ={}, packages=tuple(packages))
    where = {
        "windows": "in the OSGeo4W Shell (Start menu > QGIS > OSGeo4W Shell)",
        "macos": "in a Terminal",
    }.get(kind, "in a terminal")
    note = "Then click Check again (or restart QGIS if PyTorch was loaded before)."
    if gpu and kind == "linux":
        note += f" For the CUDA build ({gpu}) leave out '--index-url {plan.index_url}'."
    elif gpu and kind == "windows":
        note += f" For the CUDA build ({gpu}) use '--index-url {CUDA_INDEX}'."
    return InstallHint(plan.command_text(windows=kind == "windows"), where, note, str(target))


def install_message(packages: Sequence[str], target: Target = None) -> str:
    """User-facing sentence naming the missing ``packages`` and how to install them."""
    hint = install_hint(REQUIRED, target=target)
    plural = "s" if len(packages) != 1 else ""
    listed = ", ".join(f"'{p}'" for p in packages)
    return (
        f"The Python package{plural} {listed} required by Metric Change Detection "
        f"{'are' if plural else 'is'} not installed in QGIS's Python. Install PyTorch from "
        "Plugins > Metric Change Detection > Check dependencies > Install PyTorch (no terminal "
        f"needed), or by running this command {hint.where}:  {hint.command}  {hint.note}"
    )


def _version(name: str) -> PackageStatus:
    block_triton()  # torchvision imports torch._dynamo, which would load triton's LLVM
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        return PackageStatus(name, None, str(exc) or exc.__class__.__name__)
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything on import
        return PackageStatus(name, None, f"{exc.__class__.__name__}: {exc}")
    return PackageStatus(name, str(getattr(module, "__version__", "unknown")))


def missing_packages() -> List[str]:
    """Required packages that do not import (imports them: call only when about to use them)."""
    return [name for name in REQUIRED if not _version(name).installed]


def dependency_report(target: Target = None, detect_gpu: bool = True) -> DependencyReport:
    """Check torch/torchvision, the accelerators and the cached D-FE weights.

    Args:
        target: the plugin's packages folder (where *Install PyTorch* installs).
        detect_gpu: ask ``nvidia-smi`` for an NVIDIA GPU (offers the CUDA build).
    """
    from .installer import detect_nvidia_gpu, has_install

    packages = [_version(name) for name in REQUIRED]
    report = DependencyReport(
        python=qgis_python(), platform=platform_name(), packages=packages
    )
    report.triton = triton_state()
    if target is not None:
        report.target = str(target)
        report.target_installed = has_install(Path(target))
    if detect_gpu:
        report.nvidia_gpu = detect_nvidia_gpu()
    if packages[0].installed:
        import torch

        report.torch_path = str(Path(torch.__file__).parent.parent)
        report.cuda_available = bool(torch.cuda.is_available())
        if report.cuda_available:
            report.cuda_device = str(torch.cuda.get_device_name(0))
        report.cuda_version = getattr(torch.version, "cuda", None)
        mps = getattr(torch.backends, "mps", None)
        report.mps_available = bool(mps is not None and mps.is_available())
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        report.weights_dir = str(folder)
        report.weights = {f: (folder / f).is_file() for f in WEIGHT_FILES.values()}
    if report.missing:
        report.install = install_hint(REQUIRED, target=target, gpu=report.nvidia_gpu)
    return report


def torch_home_hint() -> str:
    """Where torch caches downloads when torch is missing (its documented default)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "torch"
    )
    return os.path.join(home, "hub", "checkpoints")
