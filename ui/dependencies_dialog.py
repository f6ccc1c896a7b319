"""The "Check dependencies" dialog: what is installed, and *Install PyTorch* from inside QGIS.

The report (torch, torchvision, accelerators, cached weights) comes from
``processing_provider.dependencies``; installing runs ``processing_provider.installer`` on a
:class:`~.install_task.InstallTask` into the plugin's folder of the QGIS profile, with its
progress and pip's log here. Nothing in QGIS's own Python changes.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import MissingDependency
from ..core.torch_import import import_torch
from ..processing_provider import installer
from ..processing_provider.dependencies import (
    WEIGHT_FILES,
    DependencyReport,
    dependency_report,
    torch_home_hint,
)
from ..processing_provider.provider import packages_target
from .install_task import InstallTask

OK = '<span style="color:#1a7f37">&#10004;</span>'
MISSING = '<span style="color:#bd0026">&#10008;</span>'
TRITON = {
    "blocked": "blocked for this plugin (never needed; its LLVM would crash QGIS's OpenGL)",
    "loaded": "loaded by something else before the plugin (may crash QGIS on Mesa OpenGL)",
    "not loaded": "not loaded",
}


def _e(value: object) -> str:
    return html.escape(str(value))


def report_html(report: DependencyReport) -> str:
    """Render a :class:`DependencyReport` as the dialog's HTML."""
    rows = []
    for pkg in report.packages:
        state = f"{OK} {_e(pkg.version)}" if pkg.installed else f"{MISSING} not installed"
        rows.append(f"<tr><th align='left'>{_e(pkg.name)}</th><td>{state}</td></tr>")
    if report.torch_path:
        where = ("the plugin's folder (installed here)" if report.target
                 and Path(report.torch_path) == Path(report.target) else report.torch_path)
        rows.append(f"<tr><th align='left'>PyTorch from</th><td>{_e(where)}</td></tr>")
    if report.cuda_available is not None:
        cuda = (f"{OK} {_e(report.cuda_device)} (CUDA {_e(report.cuda_version)})"
                if report.cuda_available else "not available (computing on the CPU)")
        rows.append(f"<tr><th align='left'>CUDA GPU</th><td>{cuda}</td></tr>")
        mps = f"{OK} available" if report.mps_available else "not available"
        rows.append(f"<tr><th align='left'>Apple MPS</th><td>{mps}</td></tr>")
    gpu = _e(report.nvidia_gpu) if report.nvidia_gpu else "none found"
    rows.append(f"<tr><th align='left'>NVIDIA GPU</th><td>{gpu}</td></tr>")
    rows.append(f"<tr><th align='left'>triton</th><td>{_e(TRITON.get(report.triton, report.triton))}"
                "</td></tr>")
    rows.append(f"<tr><th align='left'>QGIS's Python</th><td>{_e(report.python)}</td></tr>")
    parts = ["<h3>Metric Change Detection: dependencies</h3>", f"<table>{''.join(rows)}</table>"]

    if report.install is not None:
        parts.append(
            f"<h4>{MISSING} Missing: {_e(', '.join(report.missing))}</h4>"
            "<p>Click <b>Install PyTorch</b> below: pip downloads it into the plugin's folder of "
            "your QGIS profile (about 200 MB for the CPU build); QGIS's own Python is left as it "
            f"is. Or run the command below {_e(report.install.where)}. {_e(report.install.note)}</p>"
        )
    else:
        parts.append(f"<p>{OK} Everything the plugin needs is installed.</p>")

    parts.append("<h4>Feature-extractor weights (ImageNet)</h4>")
    if report.weights_dir is None:
        parts.append(f"<p>Unknown until torch is installed (normally {_e(torch_home_hint())}).</p>")
    else:
        parts.append(f"<p>Cache folder: <code>{_e(report.weights_dir)}</code></p><ul>")
        for backbone, name in WEIGHT_FILES.items():
            present = report.weights.get(name, False)
            state = f"{OK} cached" if present else "not downloaded yet (downloaded on first use)"
            parts.append(f"<li>{_e(backbone)}: <code>{_e(name)}</code> {state}</li>")
        parts.append("</ul><p>Offline, copy the file into that folder, or choose it as the "
                     "algorithm's weights file.</p>")
    return "".join(parts)


class DependenciesDialog(QDialog):
    """Shows :func:`dependency_report`; installs, reinstalls or removes the plugin's PyTorch."""

    def __init__(self, parent: Optional[QWidget] = None, target: Optional[Path] = None) -> None:
        super().__init__(parent)
        self.setObjectName("metriccd_dependencies_dialog")
        self.setWindowTitle("Metric Change Detection: check dependencies")
        self.resize(720, 720)
        self.target = Path(target) if target is not None else packages_target()
        self.task: Optional[InstallTask] = None
        self.report: Optional[DependencyReport] = None

        self.browser = QTextBrowser(self)
        self.browser.setOpenExternalLinks(True)

        box = QGroupBox("Install PyTorch for this plugin", self)
        self.folder_label = QLabel(f"Into: {self.target}", box)
        self.folder_label.setWordWrap(True)
        self.folder_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.variant = QComboBox(box)
        self.variant.setObjectName("metriccd_variant")
        self.install_button = QPushButton("Install PyTorch", box)
        self.install_button.setObjectName("metriccd_install")
        self.install_button.clicked.connect(self.start_install)
        self.remove_button = QPushButton("Remove", box)
        self.remove_button.setObjectName("metriccd_remove")
        self.remove_button.clicked.connect(self.remove_install)
        self.cancel_button = QPushButton("Cancel", box)
        self.cancel_button.setObjectName("metriccd_cancel")
        self.cancel_button.clicked.connect(self.cancel_install)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar(box)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status = QLabel("", box)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.log = QPlainTextEdit(box)
        self.log.setReadOnly(True)
        self.log.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.log.setPlaceholderText("pip's output appears here while installing.")
        self.log.setMaximumBlockCount(5000)
        row = QHBoxLayout()
        row.addWidget(QLabel("Build:", box))
        row.addWidget(self.variant, 1)
        row.addWidget(self.install_button)
        row.addWidget(self.remove_button)
        row.addWidget(self.cancel_button)
        inner = QVBoxLayout(box)
        inner.addWidget(self.folder_label)
        inner.addLayout(row)
        inner.addWidget(self.progress)
        inner.addWidget(self.status)
        inner.addWidget(self.log, 1)

        self.command_label = QLabel("Or install it yourself in a terminal:", self)
        self.command_field = QPlainTextEdit(self)  # copyable, wraps: the command is long
        self.command_field.setObjectName("metriccd_command")
        self.command_field.setReadOnly(True)
        self.command_field.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.command_field.setMaximumHeight(72)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        self.copy_button = QPushButton("Copy install command", self)
        self.copy_button.clicked.connect(self.copy_command)
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.refresh_button = QPushButton("Check again", self)
        self.refresh_button.clicked.connect(self.refresh)
        buttons.addButton(self.refresh_button, QDialogButtonBox.ButtonRole.ActionRole)

        layout = QVBoxLayout(self)
        layout.addWidget(self.browser, 3)
        layout.addWidget(box, 2)
        layout.addWidget(self.command_label)
        layout.addWidget(self.command_field)
        layout.addWidget(buttons)
        self.refresh()

    # ------------------------------------------------------------------ state

    @property
    def installing(self) -> bool:
        """True while pip runs."""
        return self.task is not None

    def refresh(self) -> None:
        """Check again and redraw."""
        self.report = dependency_report(self.target)
        self.browser.setHtml(report_html(self.report))
        gpu = self.report.nvidia_gpu
        chosen = self.variant.currentData()
        self.variant.clear()
        self.variant.addItem("CPU (recommended: smaller, works on every computer)", "cpu")
        cuda_text = f"CUDA for {gpu}" if gpu else "CUDA (no NVIDIA GPU found)"
        self.variant.addItem(cuda_text, "cuda")
        self.variant.model().item(1).setEnabled(bool(gpu))
        if chosen == "cuda" and gpu:
            self.variant.setCurrentIndex(1)
        ours = self.report.target_installed
        self.install_button.setText("Reinstall PyTorch" if ours else "Install PyTorch")
        self._set_buttons()
        command = self.report.install.command if self.report.install is not None else ""
        self.command_field.setPlainText(command)
        self.command_label.setVisible(bool(command))
        self.command_field.setVisible(bool(command))
        self.copy_button.setEnabled(bool(command))

    def _set_buttons(self) -> None:
        busy = self.installing
        ours = bool(self.report and self.report.target_installed)
        self.install_button.setEnabled(not busy)
        self.variant.setEnabled(not busy)
        self.remove_button.setEnabled(not busy and ours)
        self.cancel_button.setEnabled(busy)
        self.refresh_button.setEnabled(not busy)

    def _say(self, text: str) -> None:
        self.status.setText(text)

    # ------------------------------------------------------------------ install

    def plan(self) -> installer.InstallPlan:
        """The pip run for the chosen build."""
        gpu = self.report.nvidia_gpu if self.report else None
        return installer.plan_install(self.target, self.variant.currentData() or "cpu", gpu=gpu)

    def start_install(self) -> None:
        """Start pip on a background task (the dialog stays usable; QGIS too)."""
        if self.installing:
            return
        try:
            plan = self.plan()
        except installer.InstallerError as exc:
            self._say(str(exc))
            return
        self.log.clear()
        self.progress.setValue(0)
        self._say(f"Installing the {plan.variant.upper()} build of PyTorch…")
        task = InstallTask(plan)
        task.line.connect(self._line)
        task.step.connect(self._step)
        task.done.connect(self._done)
        self.task = task
        self._set_buttons()
        QgsApplication.taskManager().addTask(task)

    def cancel_install(self) -> None:
        """Stop pip (nothing is changed)."""
        if self.task is not None:
            self._say("Cancelling…")
            self.task.cancel()

    def _line(self, line: str) -> None:
        self.log.appendPlainText(line)

    def _step(self, percent: float, message: str) -> None:
        self.progress.setValue(int(percent))
        self._say(message)

    def _done(self, ok: bool) -> None:
        task, self.task = self.task, None
        if task is None:
            return
        if ok and task.outcome is not None:
            self.progress.setValue(100)
            self._say(self._after_install(task.outcome))
        else:
            self.progress.setValue(0)
            self._say(task.error or "The installation failed; see pip's log above.")
            self.log.appendPlainText(f"# {task.error}")
        self.refresh_keep_status()

    def _after_install(self, outcome: installer.InstallResult) -> str:
        """Make the new packages importable now when Python allows it; the status text."""
        seconds = f" in {outcome.seconds:.0f} s" if outcome.seconds else ""
        main = [p for p in outcome.installed if p.lower().startswith(("torch-", "torchvision-"))]
        others = [p for p in outcome.installed if p not in main]
        listed = ", ".join((main or others)[:4]) or "PyTorch"
        if main and others:
            listed += f" and {len(others)} dependenc{'y' if len(others) == 1 else 'ies'}"
        head = f"Installed{seconds}: {listed}."
        if installer.restart_needed():
            return (f"{head} PyTorch was already loaded in this QGIS session: restart QGIS to "
                    "use the new installation.")
        installer.activate(self.target)
        try:
            torch, _ = import_torch()
        except MissingDependency as exc:
            return f"{head} It does not load yet ({exc}); restart QGIS and check again."
        return (f"{head} PyTorch {torch.__version__} is loaded: the algorithm works now, no "
                "restart needed.")

    def refresh_keep_status(self) -> None:
        """:meth:`refresh` without losing the status line."""
        text = self.status.text()
        self.refresh()
        self._say(text)

    def remove_install(self) -> None:
        """Delete the plugin's PyTorch folder (after asking)."""
        if self.installing:
            return
        answer = QMessageBox.question(
            self, "Remove PyTorch",
            f"Delete the plugin's PyTorch installation in\n{self.target}?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        self._say(self.remove_now())

    def remove_now(self) -> str:
        """Delete the folder without asking; the status text."""
        loaded = installer.restart_needed()
        done = installer.remove(self.target)
        self.refresh()
        if not done:
            return "Some files are in use; they are removed when QGIS starts next time."
        return ("Removed. PyTorch stays loaded until QGIS is restarted." if loaded
                else "Removed.")

    # ------------------------------------------------------------------ misc

    def copy_command(self) -> None:
        """Put the install command on the clipboard."""
        if self.report is not None and self.report.install is not None:
            QApplication.clipboard().setText(self.report.install.command)
