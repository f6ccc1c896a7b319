"""The dependencies dialog's *Install PyTorch*: a QgsTask running pip, progress, log, cancel (issue 18).

pip installs fake wheels made in the test (no network); the plan the dialog would use is
replaced by one pointing at them.
"""

from __future__ import annotations

import sys
import time
import types

import pytest
from fake_wheels import closed_port, make_wheel, stuck_index
from metric_change_detection.processing_provider import installer
from qgis.PyQt.QtCore import QCoreApplication

pytestmark = [pytest.mark.qgis, pytest.mark.usefixtures("isolated_pip")]


@pytest.fixture()
def dialog(qgis_iface, tmp_path, monkeypatch):
    """The dialog installing into a throw-away folder."""
    from metric_change_detection.ui.dependencies_dialog import DependenciesDialog

    path = list(sys.path)
    dlg = DependenciesDialog(qgis_iface.mainWindow(), target=tmp_path / "deps")
    dlg.show()
    yield dlg
    dlg.cancel_install()
    wait_until(lambda: not dlg.installing, 30)
    dlg.close()
    sys.path[:] = path


def wait_until(predicate, timeout: float = 120) -> None:
    """Run the event loop until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the install task")
        QCoreApplication.processEvents()
        time.sleep(0.02)


def use_plan(monkeypatch, dialog, **fields) -> None:
    def plan():
        return installer.plan_install(dialog.target, dialog.variant.currentData() or "cpu",
                                      python=sys.executable, environ={}, retries=0, **fields)

    monkeypatch.setattr(dialog, "plan", plan)


def test_install_reinstall_remove(dialog, monkeypatch, tmp_path):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "mcd-fake-torch", "1.0", requires=["numpy", "mcd-fake-helper"])
    make_wheel(wheels, "mcd-fake-helper", "0.1")
    make_wheel(wheels, "numpy", "99.0")
    use_plan(monkeypatch, dialog, packages=("mcd-fake-torch",), no_index=True,
             find_links=(str(wheels),))
    dialog.install_button.click()
    assert dialog.installing and dialog.cancel_button.isEnabled()
    assert not dialog.install_button.isEnabled() and not dialog.remove_button.isEnabled()
    wait_until(lambda: not dialog.installing)
    log = dialog.log.toPlainText()
    assert "Successfully installed" in log and "Kept QGIS's own numpy" in log
    assert dialog.progress.value() == 100
    status = dialog.status.text()
    assert status.startswith("Installed") and "mcd-fake-helper-0.1" in status
    assert "restart QGIS" in status  # torch is already loaded in this test process
    assert (dialog.target / "mcd_fake_torch").is_dir() and not (dialog.target / "numpy").exists()
    assert dialog.install_button.text() == "Reinstall PyTorch" and dialog.remove_button.isEnabled()

    # Where torch was not loaded yet, the algorithm works at once: no restart.
    from metric_change_detection.ui import dependencies_dialog

    fake = types.ModuleType("torch")
    fake.__version__ = "9.9-test"
    monkeypatch.setattr(installer, "restart_needed", lambda packages=installer.PACKAGES: False)
    monkeypatch.setattr(dependencies_dialog, "import_torch", lambda: (fake, None))
    dialog.install_button.click()
    wait_until(lambda: not dialog.installing)
    assert "PyTorch 9.9-test is loaded: the algorithm works now, no restart needed" in dialog.status.text()
    assert str(dialog.target) in sys.path

    assert dialog.remove_now() == "Removed."
    assert not dialog.target.exists() and str(dialog.target) not in sys.path
    assert dialog.install_button.text() == "Install PyTorch" and not dialog.remove_button.isEnabled()


def test_cancel_stops_pip(dialog, monkeypatch):
    with stuck_index() as url:
        use_plan(monkeypatch, dialog, index_url=url, timeout=60)
        dialog.install_button.click()
        wait_until(lambda: "$ " in dialog.log.toPlainText(), 60)
        start = time.monotonic()
        dialog.cancel_button.click()
        wait_until(lambda: not dialog.installing, 60)
    assert time.monotonic() - start < 30
    assert "cancelled" in dialog.status.text().lower() and dialog.progress.value() == 0
    assert not dialog.target.exists() and dialog.install_button.isEnabled()


def test_offline_message(dialog, monkeypatch):
    use_plan(monkeypatch, dialog, index_url=f"http://127.0.0.1:{closed_port()}/simple", timeout=5)
    dialog.install_button.click()
    wait_until(lambda: not dialog.installing, 90)
    assert "offline" in dialog.status.text() and "offline" in dialog.log.toPlainText()
    assert not dialog.target.exists()


def test_cuda_only_offered_with_an_nvidia_gpu(dialog, monkeypatch):
    assert dialog.variant.currentData() == "cpu"
    monkeypatch.setattr(installer, "detect_nvidia_gpu", lambda: None)
    dialog.refresh()
    assert not dialog.variant.model().item(1).isEnabled()
    monkeypatch.setattr(installer, "detect_nvidia_gpu", lambda: "NVIDIA H200")
    dialog.refresh()
    assert dialog.variant.model().item(1).isEnabled() and "NVIDIA H200" in dialog.variant.itemText(1)
    assert dialog.plan().index_url == installer.CPU_INDEX or sys.platform == "darwin"
    dialog.variant.setCurrentIndex(1)
    plan = dialog.plan()
    assert plan.variant == "cuda"
    dialog.refresh()  # the choice survives a refresh
    assert dialog.variant.currentData() == "cuda"


def test_plugin_load_puts_the_profile_packages_on_sys_path(qgis_iface, tmp_path, monkeypatch):
    import metric_change_detection
    from metric_change_detection import plugin as plugin_module
    from metric_change_detection.processing_provider.provider import packages_target
    from qgis.core import QgsApplication

    assert packages_target() == installer.packages_dir(QgsApplication.qgisSettingsDirPath())
    target = tmp_path / "profile_deps"
    (target / "mcd_fake_loaded_at_start").mkdir(parents=True)
    (target / "mcd_fake_loaded_at_start" / "__init__.py").write_text("")
    monkeypatch.setattr(plugin_module, "packages_target", lambda: target)
    path = list(sys.path)
    try:
        metric_change_detection.classFactory(qgis_iface)
        assert str(target) in sys.path
        import mcd_fake_loaded_at_start  # noqa: F401
    finally:
        sys.path[:] = path
        sys.modules.pop("mcd_fake_loaded_at_start", None)


def test_status_names_torch_first(dialog):
    outcome = installer.InstallResult(dialog.target, "cpu",
                                      ["filelock-3", "torch-2.14.1", "sympy-1", "torchvision-0.29.1"])
    status = dialog._after_install(outcome)
    assert status.startswith("Installed: torch-2.14.1, torchvision-0.29.1 and 2 dependencies.")
