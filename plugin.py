"""QGIS plugin entry: Processing provider, toolbar button and Plugins-menu entries."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .core.torch_import import block_triton, passive_thread_waiting
from .processing_provider import installer
from .processing_provider.provider import PROVIDER_NAME, MetricChangeDetectionProvider, packages_target

ALGORITHM_ID = "metriccd:metricchangedetection"
MENU = "&Metric Change Detection"
ICON = Path(__file__).resolve().parent / "resources" / "icon.svg"


class MetricChangeDetectionPlugin:
    """Adds the ``metriccd`` provider, a toolbar button and two Plugins-menu entries."""

    def __init__(self, iface) -> None:
        # Before anything can import torch in this QGIS process (another plugin, the Python
        # console, our dialog): triton's LLVM crashes the desktop beside Mesa's (see
        # core/torch_import.py). Never imports torch itself.
        block_triton()
        passive_thread_waiting()  # torch's threads must not spin against QGIS's own
        self._activate_packages()
        self.iface = iface
        self.provider: Optional[MetricChangeDetectionProvider] = None
        self.actions: List[QAction] = []
        self.dialog = None

    @staticmethod
    def _activate_packages() -> None:
        """Put the packages *Install PyTorch* installed into this profile on ``sys.path``."""
        try:
            installer.activate(packages_target())
        except OSError as exc:  # an unreadable folder must not stop QGIS from loading the plugin
            QgsMessageLog.logMessage(f"Cannot use the plugin's packages folder: {exc}",
                                     PROVIDER_NAME, Qgis.Warning)

    def initProcessing(self) -> None:  # noqa: N802 (QGIS API name)
        """Register the Processing provider (also called by qgis_process)."""
        if self.provider is None:
            provider = MetricChangeDetectionProvider()
            if QgsApplication.processingRegistry().addProvider(provider):
                self.provider = provider  # else another copy is registered: leave it alone

    def initGui(self) -> None:  # noqa: N802
        """Register the provider and add the toolbar button and menu entries."""
        self.initProcessing()
        parent = self.iface.mainWindow()
        run = QAction(QIcon(str(ICON)), "Metric Change Detection…", parent)
        run.setObjectName("metriccd_run")
        run.setToolTip("Detect changes between two rasters (Metric-CD)")
        run.triggered.connect(self.open_algorithm_dialog)
        check = QAction("Check dependencies…", parent)
        check.setObjectName("metriccd_dependencies")
        check.triggered.connect(self.open_dependencies_dialog)
        self.iface.addToolBarIcon(run)
        self.iface.addPluginToMenu(MENU, run)
        self.iface.addPluginToMenu(MENU, check)
        self.actions = [run, check]

    def unload(self) -> None:
        """Remove everything :meth:`initGui` and :meth:`initProcessing` added."""
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
            if action.objectName() == "metriccd_run":
                self.iface.removeToolBarIcon(action)
            action.setParent(None)
        self.actions = []
        if self.dialog is not None:
            self.dialog.cancel_install()
            self.dialog.close()
            self.dialog.setParent(None)
            self.dialog = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    def open_algorithm_dialog(self) -> None:
        """Open the Processing dialog of the main algorithm."""
        import processing

        processing.execAlgorithmDialog(ALGORITHM_ID)

    def open_dependencies_dialog(self) -> None:
        """Show the "Check dependencies" dialog."""
        from .ui.dependencies_dialog import DependenciesDialog

        if self.dialog is None:
            self.dialog = DependenciesDialog(self.iface.mainWindow())
        else:
            self.dialog.refresh()
        self.dialog.show()
        self.dialog.raise_()
