"""The plugin loads, adds its provider, toolbar button and menu entries, and unloads cleanly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import metric_change_detection
import pytest
from metric_change_detection.plugin import MENU, MetricChangeDetectionPlugin
from qgis.core import QgsApplication
from qgis.PyQt.QtWidgets import QAction

pytestmark = pytest.mark.qgis


class RecordingIface:
    """pytest-qgis' iface, recording the toolbar icons and Plugins-menu entries a plugin adds."""

    def __init__(self, iface) -> None:
        self._iface = iface
        self.toolbar: list[QAction] = []
        self.menu: list[tuple[str, QAction]] = []

    def __getattr__(self, name):
        return getattr(self._iface, name)

    def addToolBarIcon(self, action):  # noqa: N802
        self.toolbar.append(action)

    def removeToolBarIcon(self, action):  # noqa: N802
        self.toolbar.remove(action)

    def addPluginToMenu(self, menu, action):  # noqa: N802
        self.menu.append((menu, action))

    def removePluginMenu(self, menu, action):  # noqa: N802
        self.menu.remove((menu, action))


@pytest.fixture()
def iface(qgis_iface, qgis_processing):
    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("metriccd")
    if existing is not None:  # registered by another test: start from a clean registry
        registry.removeProvider(existing)
    return RecordingIface(qgis_iface)


def own_actions(iface) -> list[QAction]:
    return [a for a in iface.mainWindow().findChildren(QAction) if a.objectName().startswith("metriccd_")]


def test_class_factory_returns_the_plugin(iface):
    plugin = metric_change_detection.classFactory(iface)
    assert isinstance(plugin, MetricChangeDetectionPlugin)


def test_init_gui_adds_provider_button_and_menu(iface):
    plugin = metric_change_detection.classFactory(iface)
    plugin.initGui()
    try:
        provider = QgsApplication.processingRegistry().providerById("metriccd")
        assert provider is not None
        assert provider.name() == "Metric Change Detection"
        assert not provider.icon().isNull()
        assert [a.objectName() for a in iface.toolbar] == ["metriccd_run"]
        assert not iface.toolbar[0].icon().isNull()
        assert {menu for menu, _ in iface.menu} == {MENU}
        names = [a.text() for _, a in iface.menu]
        assert any("Metric Change Detection" in n for n in names)
        assert any("Check dependencies" in n for n in names)
        assert QgsApplication.processingRegistry().algorithmById("metriccd:metricchangedetection")
    finally:
        plugin.unload()


def test_unload_then_load_again_leaves_nothing_behind(iface):
    registry = QgsApplication.processingRegistry()
    for _ in range(2):
        plugin = metric_change_detection.classFactory(iface)
        plugin.initGui()
        assert registry.providerById("metriccd") is not None
        assert len(own_actions(iface)) == 2
        plugin.unload()
        assert registry.providerById("metriccd") is None
        assert iface.toolbar == [] and iface.menu == []
        assert own_actions(iface) == []


def test_init_processing_alone_registers_the_provider(iface):
    """qgis_process calls only initProcessing (no GUI)."""
    plugin = MetricChangeDetectionPlugin(None)
    plugin.initProcessing()
    plugin.initProcessing()  # idempotent
    try:
        assert QgsApplication.processingRegistry().providerById("metriccd") is not None
    finally:
        plugin.unload()
    assert QgsApplication.processingRegistry().providerById("metriccd") is None


def test_toolbar_action_opens_the_algorithm_dialog(iface, monkeypatch):
    import processing

    opened = []
    monkeypatch.setattr(processing, "execAlgorithmDialog", lambda alg_id, *a, **k: opened.append(alg_id))
    plugin = metric_change_detection.classFactory(iface)
    plugin.initGui()
    try:
        iface.toolbar[0].trigger()
    finally:
        plugin.unload()
    assert opened == ["metriccd:metricchangedetection"]


def test_dependencies_action_opens_the_dialog(iface):
    plugin = metric_change_detection.classFactory(iface)
    plugin.initGui()
    try:
        check = next(a for _, a in iface.menu if a.objectName() == "metriccd_dependencies")
        check.trigger()
        assert plugin.dialog is not None and plugin.dialog.isVisible()
        assert "torch" in plugin.dialog.browser.toPlainText()
    finally:
        plugin.unload()
    assert plugin.dialog is None


def test_plugin_modules_do_not_import_torch():
    """Loading the plugin (provider, algorithm, dialog) must not import torch: QGIS starts without it."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any 'import torch' now fails
        sys.modules["torchvision"] = None
        from qgis.core import QgsApplication
        app = QgsApplication([], False)
        app.initQgis()
        import metric_change_detection
        from metric_change_detection.processing_provider.provider import MetricChangeDetectionProvider
        from metric_change_detection.ui import dependencies_dialog
        plugin = metric_change_detection.classFactory(None)
        plugin.initProcessing()
        alg = QgsApplication.processingRegistry().algorithmById("metriccd:metricchangedetection")
        assert alg is not None, "algorithm not registered without torch"
        report = dependencies_dialog.dependency_report()
        assert report.missing == ["torch", "torchvision"], report.missing
        plugin.unload()
        sys.stdout.write("OK")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == 0 and done.stdout.endswith("OK"), done.stdout + done.stderr
