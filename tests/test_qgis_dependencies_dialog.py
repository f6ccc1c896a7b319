"""The "Check dependencies" dialog and the structured report behind it."""

from __future__ import annotations

import sys

import pytest
from metric_change_detection.processing_provider import dependencies
from metric_change_detection.processing_provider.dependencies import (
    WEIGHT_FILES,
    dependency_report,
    install_hint,
    install_message,
)

pytestmark = pytest.mark.qgis


@pytest.fixture()
def no_torch(monkeypatch):
    """Simulate a QGIS whose Python has neither torch nor torchvision."""
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torchvision", None)


def test_report_with_torch_installed(monkeypatch, tmp_path):
    import torch
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / WEIGHT_FILES["mobilenet_v2"]).write_bytes(b"x")
    report = dependency_report()
    assert report.ok and report.missing == [] and report.install is None
    versions = {p.name: p.version for p in report.packages}
    assert versions == {"torch": torch.__version__, "torchvision": torchvision.__version__}
    assert report.cuda_available == torch.cuda.is_available()
    assert isinstance(report.mps_available, bool)
    assert report.weights_dir == str(tmp_path / "checkpoints")
    assert report.weights == {"vgg16-397923af.pth": False, "mobilenet_v2-b0353104.pth": True}


def test_report_without_torch(no_torch):
    report = dependency_report()
    assert not report.ok
    assert report.missing == ["torch", "torchvision"]
    assert report.cuda_available is None and report.weights_dir is None
    assert report.install is not None
    assert "-m pip install" in report.install.command
    assert report.install.command.endswith("torch torchvision")


@pytest.mark.parametrize(
    ("platform", "executable", "expected", "where"),
    [
        ("linux", "/usr/bin/qgis", "-m pip install --user torch torchvision", "terminal"),
        ("win32", r"C:\OSGeo4W\bin\qgis-bin.exe", "python -m pip install torch torchvision", "OSGeo4W Shell"),
        ("darwin", "/Applications/QGIS.app/Contents/MacOS/QGIS",
         "/Applications/QGIS.app/Contents/MacOS/bin/python3 -m pip install --user torch torchvision",
         "Terminal"),
        ("linux", "/opt/venv/bin/python3", "/opt/venv/bin/python3 -m pip install --user torch torchvision",
         "terminal"),
    ],
)
def test_install_command_per_platform(platform, executable, expected, where):
    hint = install_hint(platform=platform, executable=executable)
    assert hint.command.endswith(expected)
    assert where in hint.where


def test_install_command_on_this_machine_uses_this_python():
    hint = install_hint()
    assert hint.command.startswith(sys.executable) or sys.prefix == sys.base_prefix
    message = install_message(["torch"])
    assert "'torch'" in message and hint.command in message


def test_linux_system_python_gets_the_pep668_flag(monkeypatch):
    monkeypatch.setattr(dependencies.sys, "prefix", dependencies.sys.base_prefix)
    monkeypatch.setattr(dependencies, "_externally_managed", lambda: True)
    monkeypatch.setattr(dependencies.sys, "executable", "/usr/bin/qgis")
    hint = install_hint(platform="linux")
    assert "--user --break-system-packages torch torchvision" in hint.command


def test_dialog_opens_and_reports_installed(qgis_iface, tmp_path):
    import torch
    from metric_change_detection.ui.dependencies_dialog import DependenciesDialog

    dialog = DependenciesDialog(qgis_iface.mainWindow(), target=tmp_path / "deps")
    dialog.show()
    try:
        assert dialog.isVisible()
        text = dialog.browser.toPlainText()
        assert f"torch ✔ {torch.__version__}" in " ".join(text.split())
        assert "CUDA GPU" in text and "Apple MPS" in text and "NVIDIA GPU" in text
        assert "triton" in text and "PyTorch from" in text
        assert "vgg16-397923af.pth" in text and "mobilenet_v2-b0353104.pth" in text
        assert "Everything the plugin needs is installed" in text
        assert not dialog.copy_button.isEnabled() and not dialog.command_field.isVisibleTo(dialog)
        assert dialog.install_button.text() == "Install PyTorch" and dialog.install_button.isEnabled()
        assert not dialog.remove_button.isEnabled() and not dialog.cancel_button.isEnabled()
    finally:
        dialog.close()


def test_dialog_reports_missing_torch_with_install_button_and_wrapping_command(
    qgis_iface, no_torch, tmp_path
):
    from metric_change_detection.ui.dependencies_dialog import DependenciesDialog
    from qgis.PyQt.QtWidgets import QApplication, QPlainTextEdit

    target = tmp_path / "deps"
    dialog = DependenciesDialog(qgis_iface.mainWindow(), target=target)
    dialog.show()
    try:
        text = dialog.browser.toPlainText()
        assert "Missing: torch, torchvision" in text and "Install PyTorch" in text
        command = install_hint(target=target).command
        assert f"--target {target}" in command and "--index-url" in command
        field = dialog.command_field
        assert field.toPlainText() == command and field.isReadOnly()
        assert field.lineWrapMode() == QPlainTextEdit.LineWrapMode.WidgetWidth  # never cut off
        assert dialog.install_button.isEnabled() and dialog.copy_button.isEnabled()
        dialog.copy_button.click()
        assert QApplication.clipboard().text() == command
        assert str(target) in dialog.folder_label.text()
    finally:
        dialog.close()


def test_install_hint_into_the_plugin_folder_needs_no_system_change(tmp_path):
    for platform in ("linux", "win32", "darwin"):
        hint = install_hint(platform=platform, target=tmp_path / "my deps")
        assert "--target" in hint.command and "--user" not in hint.command
        assert "--break-system-packages" not in hint.command
        assert hint.command.endswith("torch torchvision") and hint.target == str(tmp_path / "my deps")
    assert '"' in install_hint(platform="win32", target=tmp_path / "my deps").command
    assert "CUDA" in install_hint(platform="linux", target=tmp_path, gpu="NVIDIA H200").note
    message = install_message(["torch"], target=tmp_path)
    assert "Check dependencies > Install PyTorch" in message and str(tmp_path) in message


def test_embedded_python_reporting_a_foreign_python3_is_not_trusted(monkeypatch):
    """Inside QGIS, sys.executable may be whatever python3 is first on PATH (e.g. pyenv's shim)."""
    monkeypatch.setattr(dependencies.sys, "executable", "/home/u/.pyenv/shims/python3")
    python = dependencies.qgis_python(platform="linux")
    assert python != "/home/u/.pyenv/shims/python3"
    assert python.startswith(sys.base_prefix) or python == "/usr/bin/python3"
