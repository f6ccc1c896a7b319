"""Runs inside the QGIS desktop (``qgis --code THIS``), driven by ``tests/screenshots.py``.

What a new user sees, step by step, saved as PNG files into ``$METRICCD_SHOTS_OUT``:

* ``dialog.png``: the Metric Change Detection dialog as it opens (the pair loaded as layers);
* ``dialog_advanced.png`` / ``dialog_advanced_full.png``: the advanced parameters expanded
  (the dialog, then the whole parameter panel);
* ``log.png``: the dialog's log after a run on the pair;
* ``layers.png`` / ``layers_panel.png`` / ``layers_zoom.png``: the main window with the loaded,
  styled outputs, the Layers panel alone, and the map zoomed in.

Environment: ``METRICCD_SHOTS_OUT`` (folder), ``METRICCD_SHOTS_BEFORE`` / ``_AFTER`` (rasters),
``METRICCD_SHOTS_PARAMS`` (JSON: the run's other parameters, e.g. the weights file). Events
go to ``events.jsonl`` there; QGIS quits with 0 when every picture is taken.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.gui import QgsCollapsibleGroupBoxBasic
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import QDockWidget, QGroupBox, QScrollArea, QTextEdit
from qgis.utils import iface

OUT = Path(os.environ["METRICCD_SHOTS_OUT"])
OUT.mkdir(parents=True, exist_ok=True)
BEFORE = os.environ["METRICCD_SHOTS_BEFORE"]
AFTER = os.environ["METRICCD_SHOTS_AFTER"]
PARAMS: Dict[str, Any] = json.loads(os.environ.get("METRICCD_SHOTS_PARAMS", "{}"))
ALGORITHM = "metriccd:metricchangedetection"
T0 = time.monotonic()
KEEP: list = []  # Python references Qt must not lose


def event(kind: str, **data: Any) -> None:
    """Append one event to events.jsonl."""
    data.update(kind=kind, t=round(time.monotonic() - T0, 2))
    with open(OUT / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(data) + "\n")


def later(ms: int, fn: Callable[[], None]) -> None:
    """Call ``fn`` on the main thread after ``ms``; an exception ends QGIS with code 2."""

    def guarded() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - report anything, then quit
            event("error", traceback=traceback.format_exc())
            QgsApplication.exit(2)

    QTimer.singleShot(ms, guarded)


def grab(widget, name: str) -> None:
    """Save ``widget`` (rendered whole, scrolled-away parts included) as ``name``.png."""
    QgsApplication.processEvents()
    path = OUT / f"{name}.png"
    widget.grab().save(str(path))
    event("screenshot", path=str(path), size=[widget.width(), widget.height()])


def start() -> None:
    """Load the pair as layers, then open the dialog with nothing else set."""
    import processing

    layers = [QgsRasterLayer(path, Path(path).stem) for path in (BEFORE, AFTER)]
    QgsProject.instance().addMapLayers(layers)
    iface.mapCanvas().setExtent(layers[0].extent())
    KEEP.extend(layers)
    iface.mainWindow().resize(1600, 1000)
    dialog = processing.createAlgorithmDialog(
        ALGORITHM, {"BEFORE": layers[0].id(), "AFTER": layers[1].id()})
    dialog.resize(1180, 860)
    dialog.show()
    KEEP.append(dialog)
    later(1500, lambda: opened(dialog))


def opened(dialog) -> None:
    """The dialog as it opens, then with the advanced parameters expanded."""
    grab(dialog, "dialog")
    # "Advanced Parameters" is a QgsCollapsibleGroupBoxBasic that PyQt sees as a QGroupBox
    boxes = [sip.cast(box, QgsCollapsibleGroupBoxBasic)
             for box in dialog.findChildren(QGroupBox, "grpAdvanced")]
    for box in boxes:
        box.setCollapsed(False)
    QgsApplication.processEvents()
    scroll = max(dialog.findChildren(QScrollArea), key=lambda s: s.widget().height() if s.widget() else 0)
    if boxes:
        scroll.ensureWidgetVisible(boxes[0], 0, 0)
        scroll.verticalScrollBar().setValue(boxes[0].y())
    event("advanced", boxes=[b.title() for b in boxes])
    later(800, lambda: advanced(dialog, scroll))


def advanced(dialog, scroll: QScrollArea) -> None:
    grab(dialog, "dialog_advanced")
    grab(scroll.widget(), "dialog_advanced_full")
    dialog.close()
    later(300, run)


def run() -> None:
    """Run from the algorithm dialog with the given parameters, as its Run button does."""
    import processing

    layers = list(QgsProject.instance().mapLayers().values())
    by_source = {lyr.source(): lyr.id() for lyr in layers}
    params = {"BEFORE": by_source[BEFORE], "AFTER": by_source[AFTER],
              "OUTPUT": str(OUT / "change_probability.tif"),
              "OUTPUT_MASK": str(OUT / "change_mask.tif"),
              "OUTPUT_POLYGONS": str(OUT / "change_polygons.gpkg"), **PARAMS}
    dialog = processing.createAlgorithmDialog(ALGORITHM, params)
    dialog.resize(1180, 860)
    dialog.show()
    KEEP.append(dialog)
    start_time = time.monotonic()
    dialog.runAlgorithm()
    event("run_start")

    def poll() -> None:
        log = dialog.findChild(QTextEdit, "txtLog")
        text = log.toPlainText() if log is not None else ""
        if "Execution completed" in text or "Execution failed" in text:
            event("run_done", seconds=round(time.monotonic() - start_time, 1), log=text[-4000:])
            later(1500, lambda: done(dialog))
        elif time.monotonic() - start_time > 480:
            raise RuntimeError("the run did not finish in 480 s")
        else:
            later(500, poll)

    later(500, poll)


def done(dialog) -> None:
    """The log, then the main window with the loaded layers and the Layers panel."""
    grab(dialog, "log")
    dialog.close()
    canvas = iface.mapCanvas()
    canvas.zoomToFullExtent()
    canvas.refreshAllLayers()
    docks = {d.objectName(): d for d in iface.mainWindow().findChildren(QDockWidget)}
    if "Browser" in docks:  # the Layers panel gets the whole height
        docks["Browser"].hide()
    dock = docks.get("Layers")
    if dock is not None:
        iface.mainWindow().resizeDocks([dock], [420], Qt.Horizontal)
    root = QgsProject.instance().layerTreeRoot()
    event("tree", nodes=[[n.name(), [c.name() for c in getattr(n, "children", lambda: [])()]]
                         for n in root.children()])
    later(4000, lambda: layers(dock))


def layers(dock) -> None:
    grab(iface.mainWindow(), "layers")
    if dock is not None:
        grab(dock, "layers_panel")
    canvas = iface.mapCanvas()
    extent = canvas.extent()
    extent.scale(0.25)  # a quarter of the width: the polygons' outlines in view
    canvas.setExtent(extent)
    canvas.refreshAllLayers()
    later(4000, zoomed)


def zoomed() -> None:
    grab(iface.mapCanvas(), "layers_zoom")
    event("finished")
    # QGIS 3.22 may crash tearing down a project with styled layers at exit: clear it first
    QgsProject.instance().clear()
    QTimer.singleShot(300, lambda: QgsApplication.exit(0))


QTimer.singleShot(600_000, lambda: (event("timeout"), QgsApplication.exit(3)))
later(3000, start)
event("script_loaded")
