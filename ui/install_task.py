"""The background task running :class:`~..processing_provider.installer.PipInstaller` in QGIS."""

from __future__ import annotations

from typing import Optional

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..processing_provider.installer import (
    InstallCancelled,
    InstallerError,
    InstallPlan,
    InstallResult,
    PipInstaller,
)


class InstallTask(QgsTask):
    """pip on a QGIS task (shown in the task manager, cancellable there and in the dialog).

    ``line`` and ``step`` are emitted on the worker thread and delivered to the dialog on the
    main thread; ``done(ok)`` comes on the main thread when the task has ended.
    """

    line = pyqtSignal(str)
    step = pyqtSignal(float, str)
    done = pyqtSignal(bool)

    def __init__(self, plan: InstallPlan) -> None:
        super().__init__("Installing PyTorch for Metric Change Detection", QgsTask.CanCancel)
        self.plan = plan
        self.outcome: Optional[InstallResult] = None
        self.error: Optional[str] = None
        self.was_cancelled = False

    def _progress(self, percent: float, message: str) -> None:
        self.setProgress(percent)
        self.step.emit(percent, message)

    def run(self) -> bool:  # worker thread
        """Run pip; never raises (QGIS would only log it)."""
        runner = PipInstaller(self.plan, on_line=self.line.emit, progress=self._progress,
                              is_cancelled=self.isCanceled)
        try:
            self.outcome = runner.run()
            return True
        except InstallCancelled as exc:
            self.error, self.was_cancelled = str(exc), True
        except InstallerError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - report anything in the dialog
            self.error = f"The installation failed: {type(exc).__name__}: {exc}"
        return False

    def finished(self, result: bool) -> None:  # main thread
        """Tell the dialog."""
        self.done.emit(bool(result))
