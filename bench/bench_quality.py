"""Quality and cost of Metric-CD (and the classical floor) on every labelled shared dataset.

Each run goes through the real raster pipeline (the pair is written to temporary GeoTIFFs)
in its own process, so the peak memory column is that run's own. Labels are used only to
score, never by a method.

    .venv/bin/python bench/bench_quality.py                       # default preset, scene mode
    .venv/bin/python bench/bench_quality.py --presets paper fast default --modes scene per-tile
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metric_change_detection.core.accuracy import assessment  # noqa: E402

from bench import datasets  # noqa: E402

COLUMNS = ("dataset", "method", "precision", "recall", "F1", "kappa", "ROC-AUC", "changed",
           "seconds", "peak MB")


def _write(path: Path, array: np.ndarray) -> str:
    from osgeo import gdal

    ds = gdal.GetDriverByName("GTiff").Create(str(path), array.shape[2], array.shape[1],
                                              array.shape[0], gdal.GDT_Float32)
    for i, band in enumerate(array, 1):
        ds.GetRasterBand(i).WriteArray(band)
    ds = None
    return str(path)


def _run_metric_cd(job: dict) -> dict:
    """Child process: one pipeline run; returns the probability map, threshold, time, memory."""
    from metric_change_detection.core.config import MetricCDConfig, PipelineOptions
    from metric_change_detection.core.pipeline import detect_change
    from osgeo import gdal

    data = datasets.load(job["dataset"])
    with tempfile.TemporaryDirectory() as tmp:
        before = _write(Path(tmp) / "before.tif", data.before)
        after = _write(Path(tmp) / "after.tif", data.after)
        out = str(Path(tmp) / "p.tif")
        config = MetricCDConfig.preset(job["preset"], **job.get("overrides", {}))
        start = time.perf_counter()
        result = detect_change(before, after, out, config=config,
                               options=PipelineOptions(mode=job["mode"]))
        seconds = time.perf_counter() - start
        p = gdal.Open(out).ReadAsArray().astype(np.float32)
    p[p == -9999.0] = np.nan
    return {"p": p, "threshold": result.threshold, "seconds": seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_cva(job: dict) -> dict:
    from metric_change_detection.core.baselines import CVA
    from metric_change_detection.core.threshold import otsu_threshold

    data = datasets.load(job["dataset"])
    start = time.perf_counter()
    valid = np.ones(data.change.shape, bool)
    score = CVA().fit(data.before, data.after, valid).score(data.before, data.after, valid)
    seconds = time.perf_counter() - start
    finite = score[np.isfinite(score)]
    threshold = otsu_threshold(score, value_range=(float(finite.min()), float(finite.max())))
    return {"p": score, "threshold": threshold, "seconds": seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_job(job: dict) -> dict:
    """Run ``job`` in a fresh process and score it on the labelled pixels."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        out = pool.apply(_run_cva if job["preset"] == "cva" else _run_metric_cd, (job,))
    data = datasets.load(job["dataset"])
    p = out["p"]
    m = assessment(p > out["threshold"], data.change, data.labelled & np.isfinite(p), scores=p)
    return {"dataset": job["dataset"], "method": job["label"], "precision": m["precision"],
            "recall": m["recall"], "F1": m["f1"], "kappa": m["kappa"], "ROC-AUC": m["roc_auc"],
            "changed": float(np.nanmean(p > out["threshold"])), "seconds": out["seconds"],
            "peak MB": out["peak_mb"]}


def _cell(row: dict, column: str) -> str:
    value = row[column]
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if column in ("seconds", "peak MB") else f"{value:.3f}"
    return str(value)


def print_header() -> None:
    """Markdown table header."""
    print("| " + " | ".join(COLUMNS) + " |")  # noqa: T201
    print("|" + "---|" * len(COLUMNS), flush=True)  # noqa: T201


def print_row(row: dict) -> None:
    """One markdown table row."""
    print("| " + " | ".join(_cell(row, c) for c in COLUMNS) + " |", flush=True)  # noqa: T201


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["default"])
    parser.add_argument("--modes", nargs="+", default=["scene"])
    parser.add_argument("--datasets", nargs="+", default=list(datasets.NAMES))
    parser.add_argument("--overrides", default="{}", help="JSON settings applied to every preset")
    parser.add_argument("--no-cva", action="store_true", help="skip the CVA + Otsu floor")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    overrides = json.loads(args.overrides)
    from metric_change_detection.core.demo import offline_weights

    if "weights" not in overrides and offline_weights():
        overrides["weights"] = offline_weights()
        overrides.setdefault("backbone", "mobilenet_v2")
    rows = []
    print_header()
    for name in args.datasets:
        jobs = [] if args.no_cva else [{"dataset": name, "preset": "cva", "label": "CVA + Otsu"}]
        for preset in args.presets:
            for mode in args.modes:
                jobs.append({"dataset": name, "preset": preset, "mode": mode,
                             "overrides": overrides, "label": f"Metric-CD {preset} {mode}"})
        for job in jobs:
            row = run_job(job)
            rows.append(row)
            print_row(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
