"""Runs inside the QGIS desktop (``qgis --code THIS``), driven by ``tests/test_qgis_desktop.py``.

Opens the plugin's dependencies dialog, then runs the main algorithm through
``QgsProcessingAlgRunnerTask`` (what the algorithm dialog's Run does) ``METRICCD_DESKTOP_RUNS``
times, records every progress value and message with its time, grabs screenshots and quits
QGIS. Each event is appended to ``$METRICCD_DESKTOP_OUT/events.jsonl`` at once, so a crash
still leaves a trace of how far QGIS got; ``result.json`` is written only on success.

Environment: ``METRICCD_DESKTOP_OUT`` (folder), ``METRICCD_DESKTOP_PARAMS`` (JSON parameters,
``OUTPUT`` gets a per-run suffix), ``METRICCD_DESKTOP_RUNS`` (default 1),
``METRICCD_DESKTOP_DIALOG_RUN`` (1: one more run in the real algorithm dialog, for a screenshot
of its log), ``METRICCD_DESKTOP_SKIP_DEPENDENCIES`` (1: no dependencies dialog, so the first run
imports torch), ``METRICCD_DESKTOP_TIMEOUT`` (seconds before giving up, default 240).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict

from qgis.core import (
    QgsApplication,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
)
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QTextEdit
from qgis.utils import iface, plugins

OUT = Path(os.environ["METRICCD_DESKTOP_OUT"])
SHOTS = OUT / "shots"
SHOTS.mkdir(parents=True, exist_ok=True)
PARAMS: Dict[str, Any] = json.loads(os.environ["METRICCD_DESKTOP_PARAMS"])
RUNS = int(os.environ.get("METRICCD_DESKTOP_RUNS", "1"))
DIALOG_RUN = os.environ.get("METRICCD_DESKTOP_DIALOG_RUN") == "1"
SKIP_DEPENDENCIES = os.environ.get("METRICCD_DESKTOP_SKIP_DEPENDENCIES") == "1"  # timing runs
TIMEOUT = float(os.environ.get("METRICCD_DESKTOP_TIMEOUT", "240"))
ALGORITHM = "metriccd:metricchangedetection"
T0 = time.monotonic()
STATE: Dict[str, Any] = {"runs": [], "keep": []}  # Python references Qt must not lose
_lock = threading.Lock()


def event(kind: str, **data: Any) -> None:
    """Append one event (with seconds since start and the thread) to events.jsonl."""
    data.update(kind=kind, t=round(time.monotonic() - T0, 3),
                main_thread=threading.current_thread() is threading.main_thread())
    with _lock, open(OUT / "events.jsonl", "a", encoding="utf-8") as f:
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
    """Save a screenshot of ``widget`` under shots/."""
    QgsApplication.processEvents()
    path = SHOTS / f"{name}.png"
    widget.grab().save(str(path))
    event("screenshot", path=str(path))


class RecordingFeedback(QgsProcessingFeedback):
    """Records progress texts and log lines (called on the worker thread) with their time."""

    def __init__(self, run: Dict[str, Any]) -> None:
        super().__init__()
        self.run = run
        self.progressChanged.connect(self._progress)

    def _progress(self, value: float) -> None:
        self.run["progress"].append([round(time.monotonic() - self.run["start"], 3), float(value)])

    def setProgressText(self, text: str) -> None:  # noqa: N802 (QGIS API)
        self.run["texts"].append([round(time.monotonic() - self.run["start"], 3), self.progress(), text])
        super().setProgressText(text)

    def pushInfo(self, info: str) -> None:  # noqa: N802
        self.run["log"].append(info)
        super().pushInfo(info)

    def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N802, N803
        self.run["log"].append(f"ERROR: {error}")
        super().reportError(error, fatalError)


def start() -> None:
    """Check the plugin loaded, then open the dependencies dialog."""
    plugin = plugins.get("metric_change_detection")
    event("started", plugin_loaded=plugin is not None, torch_imported="torch" in sys.modules,
          triton_blocked=sys.modules.get("triton", 0) is None,
          omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    if plugin is None:
        raise RuntimeError("the plugin metric_change_detection is not loaded")
    STATE["plugin"] = plugin
    if SKIP_DEPENDENCIES:  # the first run then imports torch itself, as after a fresh start
        later(100, lambda: run(0))
        return
    action = next(a for a in plugin.actions if a.objectName() == "metriccd_dependencies")
    action.trigger()  # imports torch and torchvision (the first crash of issue 18)
    dialog = plugin.dialog
    dialog.resize(760, 640)
    later(300, lambda: dependencies_shown(dialog))


def dependencies_shown(dialog) -> None:
    """Screenshot of the dialog, then the runs."""
    grab(dialog, "dependencies_dialog")
    event("dependencies_dialog", visible=dialog.isVisible(), text=dialog.browser.toPlainText()[:4000],
          triton_loaded=bool(sys.modules.get("triton")))
    dialog.close()
    later(100, lambda: run(0))


def run(i: int) -> None:
    """Start run ``i`` through QgsProcessingAlgRunnerTask."""
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM)
    if alg is None:
        raise RuntimeError(f"{ALGORITHM} is not registered")
    output = str(OUT / f"change_{i}.tif")
    params = dict(PARAMS, OUTPUT=output)
    record: Dict[str, Any] = {"index": i, "output": output, "start": time.monotonic(),
                              "progress": [], "texts": [], "log": []}
    context = QgsProcessingContext()
    feedback = RecordingFeedback(record)
    task = QgsProcessingAlgRunnerTask(alg, params, context, feedback)
    STATE["keep"].extend([alg, context, feedback, task])

    def executed(ok: bool, results: Dict[str, Any]) -> None:
        record["seconds"] = round(time.monotonic() - record["start"], 3)
        record["ok"] = bool(ok)
        record["exists"] = os.path.exists(output)
        record.pop("start")
        STATE["runs"].append(record)
        event("run_done", index=i, ok=bool(ok), seconds=record["seconds"], exists=record["exists"])
        if not ok:
            raise RuntimeError(f"run {i} failed: {record['log'][-5:]}")
        if i + 1 < RUNS:
            later(100, lambda: run(i + 1))
        elif DIALOG_RUN:
            later(100, dialog_run)
        else:
            later(100, finish)

    task.executed.connect(executed)
    event("run_start", index=i)
    QgsApplication.taskManager().addTask(task)
    later(1500, lambda: grab(iface.mainWindow(), f"main_window_run{i}") if "seconds" not in record else None)


def dialog_run() -> None:
    """One more run from the real algorithm dialog; screenshots of its log while it runs."""
    import processing

    params = dict(PARAMS, OUTPUT=str(OUT / "change_dialog.tif"))
    dialog = processing.createAlgorithmDialog(ALGORITHM, params)
    dialog.resize(900, 700)
    dialog.show()
    STATE["keep"].append(dialog)
    start_time = time.monotonic()
    dialog.runAlgorithm()  # what the Run button does: a QgsProcessingAlgRunnerTask
    event("dialog_run_start")
    shots = [1500, 4000]

    def poll() -> None:
        elapsed = (time.monotonic() - start_time) * 1000
        if shots and elapsed >= shots[0]:
            grab(dialog, f"algorithm_dialog_{shots.pop(0)}ms")
        log = dialog.findChild(QTextEdit, "txtLog")
        text = log.toPlainText() if log is not None else ""
        if "Execution completed" in text or "Execution failed" in text:
            grab(dialog, "algorithm_dialog_done")
            event("dialog_run_done", seconds=round(elapsed / 1000, 3), log=text[-3000:])
            dialog.close()
            later(100, finish)
        else:
            later(250, poll)

    later(250, poll)


def finish() -> None:
    """Write result.json and quit QGIS."""
    result = {"runs": STATE["runs"], "triton_loaded": bool(sys.modules.get("triton")),
              "seconds": round(time.monotonic() - T0, 3)}
    (OUT / "result.json").write_text(json.dumps(result), encoding="utf-8")
    event("finished")
    QTimer.singleShot(200, lambda: QgsApplication.exit(0))


def watchdog() -> None:
    event("timeout", seconds=TIMEOUT)
    QgsApplication.exit(3)


QTimer.singleShot(int(TIMEOUT * 1000), watchdog)
later(500, start)
event("script_loaded", python=sys.version.split()[0], argv=sys.argv[:1])
