"""The "Check dependencies" dialog: torch, torchvision, accelerators, cached weights, install help."""

from __future__ import annotations

import html
from typing import Optional

from qgis.PyQt.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ..processing_provider.dependencies import (
    WEIGHT_FILES,
    DependencyReport,
    dependency_report,
    torch_home_hint,
)

OK = '<span style="color:#1a7f37">&#10004;</span>'
MISSING = '<span style="color:#bd0026">&#10008;</span>'


def _e(value: object) -> str:
    return html.escape(str(value))


def report_html(report: DependencyReport) -> str:
    """Render a :class:`DependencyReport` as the dialog's HTML."""
    rows = []
    for pkg in report.packages:
        state = f"{OK} {_e(pkg.version)}" if pkg.installed else f"{MISSING} not installed"
        rows.append(f"<tr><th align='left'>{_e(pkg.name)}</th><td>{state}</td></tr>")
    if report.cuda_available is not None:
        cuda = (f"{OK} {_e(report.cuda_device)} (CUDA {_e(report.cuda_version)})"
                if report.cuda_available else "not available (computing on the CPU)")
        rows.append(f"<tr><th align='left'>CUDA GPU</th><td>{cuda}</td></tr>")
        mps = f"{OK} available" if report.mps_available else "not available"
        rows.append(f"<tr><th align='left'>Apple MPS</th><td>{mps}</td></tr>")
    rows.append(f"<tr><th align='left'>QGIS's Python</th><td>{_e(report.python)}</td></tr>")
    parts = ["<h3>Metric Change Detection: dependencies</h3>", f"<table>{''.join(rows)}</table>"]

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

    if report.install is not None:
        parts.append(
            f"<h4>{MISSING} Missing: {_e(', '.join(report.missing))}</h4>"
            f"<p>Install PyTorch into QGIS's Python by running this command "
            f"{_e(report.install.where)}:</p><pre>{_e(report.install.command)}</pre>"
            f"<p>{_e(report.install.note)}</p>"
        )
    else:
        parts.append(f"<p>{OK} Everything the plugin needs is installed.</p>")
    return "".join(parts)


class DependenciesDialog(QDialog):
    """Shows :func:`dependency_report` and, when something is missing, the install command."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setObjectName("metriccd_dependencies_dialog")
        self.setWindowTitle("Metric Change Detection: check dependencies")
        self.resize(640, 460)
        self.browser = QTextBrowser(self)
        self.browser.setOpenExternalLinks(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        self.copy_button = QPushButton("Copy install command", self)
        self.copy_button.clicked.connect(self.copy_command)
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        refresh = QPushButton("Check again", self)
        refresh.clicked.connect(self.refresh)
        buttons.addButton(refresh, QDialogButtonBox.ButtonRole.ActionRole)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        layout.addWidget(buttons)
        self.report: Optional[DependencyReport] = None
        self.refresh()

    def refresh(self) -> None:
        """Check again and redraw."""
        self.report = dependency_report()
        self.browser.setHtml(report_html(self.report))
        self.copy_button.setEnabled(self.report.install is not None)

    def copy_command(self) -> None:
        """Put the install command on the clipboard."""
        if self.report is not None and self.report.install is not None:
            QApplication.clipboard().setText(self.report.install.command)
