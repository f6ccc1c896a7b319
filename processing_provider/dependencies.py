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
from typing import Dict, List, Optional, Sequence

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


def install_hint(
    packages: Sequence[str] = REQUIRED,
    platform: Optional[str] = None,
    executable: Optional[str] = None,
) -> InstallHint:
    """The exact command installing ``packages`` into QGIS's Python on ``platform``."""
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


def install_message(packages: Sequence[str]) -> str:
    """User-facing sentence naming the missing ``packages`` and how to install them."""
    hint = install_hint(REQUIRED)
    plural = "s" if len(packages) != 1 else ""
    listed = ", ".join(f"'{p}'" for p in packages)
    return (
        f"The Python package{plural} {listed} required by Metric Change Detection "
        f"{'are' if plural else 'is'} not installed in QGIS's Python. Install PyTorch by "
        f"running this command {hint.where}:  {hint.command}  {hint.note}"
    )


def _version(name: str) -> PackageStatus:
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


def dependency_report() -> DependencyReport:
    """Check torch/torchvision, the accelerators and the cached D-FE weights."""
    packages = [_version(name) for name in REQUIRED]
    report = DependencyReport(
        python=qgis_python(), platform=platform_name(), packages=packages
    )
    if packages[0].installed:
        import torch

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
        report.install = install_hint(REQUIRED)
    return report


def torch_home_hint() -> str:
    """Where torch caches downloads when torch is missing (its documented default)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "torch"
    )
    return os.path.join(home, "hub", "checkpoints")
