"""The one place the plugin imports PyTorch, with ``triton`` blocked first.

Why: torchvision imports ``torch._dynamo``, which imports ``triton`` when it is installed
(PyPI's Linux torch wheels depend on it). ``triton/_C/libtriton.so`` carries its own LLVM whose
static initialisers crash (signal 11 in ``free()``) in a process that has already loaded another
LLVM — and the QGIS desktop has: Mesa's OpenGL (``swrast_dri.so``/llvmpipe) loads Debian's
``libLLVM-15.so.1``. The plugin never uses ``torch.compile``, triton's only user, so triton is
made unimportable before the first torch import: ``sys.modules["triton"] = None`` makes
``import triton`` raise ``ModuleNotFoundError`` and ``importlib.util.find_spec("triton")``
return None, which torch reads as "triton is not installed" (``torch._dynamo`` and
torchvision import fine without it).

Every import path of the plugin goes through here: ``core/__init__.py`` calls
:func:`block_triton` (so the algorithm, the pipeline, the report, the Dask client and Dask
workers unpickling a tile task are covered), the plugin calls it when QGIS loads it (so the
dependencies dialog is covered before anything else), and :func:`import_torch` is how code
imports torch. Set ``METRICCD_ALLOW_TRITON=1`` to leave triton alone (never needed by this
plugin). Pure Python: never imports Qt or QGIS.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import ModuleType
from typing import Optional, Tuple

from .errors import MissingDependency

log = logging.getLogger(__name__)

ALLOW_ENV = "METRICCD_ALLOW_TRITON"
BLOCKED = "triton"
INSTALL_HINT = (
    "Install PyTorch into the Python that runs this program, e.g. "
    "'python3 -m pip install torch torchvision' (in QGIS: Plugins > Metric Change Detection > "
    "Check dependencies > Install PyTorch)."
)
_seconds: Optional[float] = None  # how long this process took to import torch + torchvision


def block_triton() -> bool:
    """Make ``triton`` unimportable in this process (see the module docstring).

    Returns:
        True when triton is blocked (now or by an earlier call), False when it was already
        imported (too late: someone imported it before the plugin) or ``METRICCD_ALLOW_TRITON=1``.
    """
    if os.environ.get(ALLOW_ENV) == "1":
        return False
    if BLOCKED in sys.modules:
        return sys.modules[BLOCKED] is None
    sys.modules[BLOCKED] = None  # type: ignore[assignment]
    return True


def passive_thread_waiting() -> bool:
    """Let torch's OpenMP threads sleep, not spin, while they wait (``OMP_WAIT_POLICY=PASSIVE``).

    Only effective before torch (its bundled libgomp) is loaded, and only where the user set no
    policy. For processes that share the CPU — the QGIS desktop draws maps, other programs run:
    with spinning threads as many as the cores, a thread that waits for a descheduled one burns
    the time slice the other needs. Measured on a loaded 2-core machine (load 5-7, issue 18):
    the feature-extractor pass of a 256 x 256 pair took 0.9-5.2 s and three iterations 2-11 s
    with libgomp's default; 0.04-0.2 s and 0.4-1.0 s with PASSIVE. The plugin calls this at
    load; the CLI leaves libgomp's default alone.

    Returns:
        True when the policy is PASSIVE now.
    """
    if not torch_imported():
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def triton_state() -> str:
    """``"blocked"``, ``"loaded"`` or ``"not loaded"`` (for the dependencies dialog and the log)."""
    if BLOCKED not in sys.modules:
        return "not loaded"
    return "blocked" if sys.modules[BLOCKED] is None else "loaded"


def torch_imported() -> bool:
    """True when torch is already imported in this process (importing it again costs nothing)."""
    return sys.modules.get("torch") is not None


def loading_message() -> str:
    """The progress text shown while :func:`import_torch` runs."""
    if torch_imported():
        return "Loading PyTorch (already loaded in this session)"
    return "Loading PyTorch (once per session: can take several seconds)"


def import_seconds() -> Optional[float]:
    """Seconds the first :func:`import_torch` of this process took (None before it ran)."""
    return _seconds


def import_torch(hint: str = INSTALL_HINT) -> Tuple[ModuleType, ModuleType]:
    """Import torch and torchvision with triton blocked; the modules.

    Raises:
        MissingDependency: a package is missing or does not load; the message names it,
            says why and ends with ``hint``.
    """
    global _seconds
    block_triton()
    start = time.perf_counter()
    try:
        import torch
        import torchvision
    except ImportError as exc:
        name = exc.name if exc.name in ("torch", "torchvision") else None
        if name is not None:
            raise MissingDependency(f"The package '{name}' is missing. {hint}") from None
        raise MissingDependency(
            f"PyTorch is installed but does not import ({exc}). Reinstall it; {hint}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a broken install raises OSError, RuntimeError, ...
        raise MissingDependency(
            f"PyTorch is installed but does not load ({type(exc).__name__}: {exc}). "
            f"Reinstall it; {hint}"
        ) from None
    if _seconds is None:
        _seconds = time.perf_counter() - start
        log.info("Imported torch %s and torchvision %s in %.1f s (triton %s)", torch.__version__,
                 torchvision.__version__, _seconds, triton_state())
    return torch, torchvision
