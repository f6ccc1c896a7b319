"""Quality and cost of every method on every labelled shared dataset, in one table.

Metric-CD (any presets and modes) and the classics (CVA, PCA-KMeans, IR-MAD) all go through
the real raster pipelines (the pair is written to temporary GeoTIFFs), each run in its own
process, so the peak memory column is that run's own. Every mask comes from the method's own
label-free threshold; labels are used only to score, never by a method.

    .venv/bin/python bench/bench_quality.py                       # default preset + classics
    .venv/bin/python bench/bench_quality.py --presets paper fast default --modes scene per-tile
    .venv/bin/python bench/bench_quality.py --presets paper fast --baselines --crop 256
    .venv/bin/python bench/bench_quality.py --datasets landsat_taizhou --fe-bands 5,4,3
    .venv/bin/python bench/bench_quality.py --presets default fast --seeds 0 1 2 --baselines

After the table, a summary: each method's mean F1 and ROC-AUC over the scored pairs and what it
marks on pairs without change; with several seeds, each preset's spread over them per pair.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metric_change_detection.core.accuracy import assessment  # noqa: E402
from metric_change_detection.core.cli import band_list  # noqa: E402

from bench import datasets  # noqa: E402

#: Classical methods run through the same raster pipeline, with their label-free thresholds.
BASELINES = {"cva": "CVA + Otsu", "pcakmeans": "PCA-KMeans", "irmad": "IR-MAD + Otsu"}

COLUMNS = ("dataset", "method", "precision", "recall", "F1", "kappa", "ROC-AUC", "changed",
           "seconds", "peak MB")


def _write(path: Path, array: np.ndarray, wavelengths: Optional[Sequence[float]]) -> str:
    """A float32 GeoTIFF of ``array``, its bands' centre wavelengths (micrometres) recorded."""
    from osgeo import gdal

    ds = gdal.GetDriverByName("GTiff").Create(str(path), array.shape[2], array.shape[1],
                                              array.shape[0], gdal.GDT_Float32)
    for i, band in enumerate(array, 1):
        ds.GetRasterBand(i).WriteArray(band)
        if wavelengths:
            ds.GetRasterBand(i).SetMetadataItem("CENTRAL_WAVELENGTH_UM", str(wavelengths[i - 1]),
                                                "IMAGERY")
    ds = None
    return str(path)


def _load(job: dict) -> datasets.Dataset:
    """The job's dataset, or its central ``crop`` x ``crop`` window when the job names one."""
    data = datasets.load(job["dataset"])
    crop = job.get("crop")
    if not crop:
        return data
    h, w = data.change.shape
    r, c = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    rows, cols = slice(r, r + crop), slice(c, c + crop)
    return datasets.Dataset(data.name, data.before[:, rows, cols], data.after[:, rows, cols],
                            data.change[rows, cols], data.labelled[rows, cols], data.wavelengths)


def _run(job: dict) -> dict:
    """Child process: one pipeline run; returns the score map, its threshold, time, memory."""
    from metric_change_detection.core.baseline_pipeline import detect_change_baseline
    from metric_change_detection.core.config import MetricCDConfig, PipelineOptions
    from metric_change_detection.core.pipeline import detect_change
    from osgeo import gdal

    data = _load(job)
    with tempfile.TemporaryDirectory() as tmp:
        before = _write(Path(tmp) / "before.tif", data.before, data.wavelengths)
        after = _write(Path(tmp) / "after.tif", data.after, data.wavelengths)
        out = str(Path(tmp) / "p.tif")
        start = time.perf_counter()
        if job["method"] in BASELINES:
            result = detect_change_baseline(job["method"], before, after, out)
        else:
            config = MetricCDConfig.preset(job["method"], **job.get("overrides", {}))
            options = PipelineOptions(mode=job["mode"], fe_bands=job.get("fe_bands"))
            result = detect_change(before, after, out, config=config, options=options)
        seconds = time.perf_counter() - start
        p = gdal.Open(out).ReadAsArray().astype(np.float32)
    p[p == -9999.0] = np.nan
    return {"p": p, "threshold": result.threshold, "seconds": seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_job(job: dict, save: Optional[str] = None) -> dict:
    """Run ``job`` in a fresh process and score it on the labelled pixels."""
    with mp.get_context("spawn").Pool(1) as pool:
        out = pool.apply(_run, (job,))
    if save:
        seed = "" if job.get("seed") is None else f" seed {job['seed']}"
        name = f"{job['dataset']}__{job['label']}{seed}".replace("/", "_").replace(" ", "_")
        np.save(Path(save) / f"{name}.npy", out["p"])
    data = _load(job)
    p = out["p"]
    m = assessment(p > out["threshold"], data.change, data.labelled & np.isfinite(p), scores=p)
    return {"dataset": job["dataset"], "method": job["label"], "seed": job.get("seed"),
            "precision": m["precision"], "recall": m["recall"], "F1": m["f1"],
            "kappa": m["kappa"], "ROC-AUC": m["roc_auc"],
            "changed": float(np.nanmean(p > out["threshold"])), "seconds": out["seconds"],
            "peak MB": out["peak_mb"]}


def _cell(row: dict, column: str) -> str:
    value = row[column]
    if column == "method" and row.get("seed") is not None:
        return f"{value} (seed {row['seed']})"
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


def _mean(values: List[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def summarise(rows: List[dict]) -> List[dict]:
    """Per method (seeds pooled): mean F1 / ROC-AUC over scored pairs, mean marked on no-change
    pairs, and per pair the F1 range over seeds (``seed`` key, absent: one run)."""
    by_method: Dict[str, List[dict]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    summary = []
    for method, group in by_method.items():
        scored = [r for r in group if r["ROC-AUC"] is not None]
        spread: Dict[str, List[float]] = defaultdict(list)
        for r in scored:
            spread[r["dataset"]].append(r["F1"])
        summary.append({
            "method": method,
            "runs": len(group),
            "mean F1": _mean([r["F1"] for r in scored]),
            "mean ROC-AUC": _mean([r["ROC-AUC"] for r in scored]),
            "no-change marked": _mean([r["changed"] for r in group if r["ROC-AUC"] is None]),
            "F1 range": {d: (min(v), max(v)) for d, v in spread.items() if len(v) > 1},
        })
    return summary


def print_summary(rows: List[dict]) -> None:
    """The summary of ``rows`` as a markdown table (and the seed spreads, if any)."""
    summary = summarise(rows)
    print("\n| method | runs | mean F1 | mean ROC-AUC | no-change marked |")  # noqa: T201
    print("|---|---|---|---|---|")  # noqa: T201
    for s in summary:
        cells = [s["method"], str(s["runs"])] + [
            "-" if s[k] is None else f"{s[k]:.3f}"
            for k in ("mean F1", "mean ROC-AUC", "no-change marked")
        ]
        print("| " + " | ".join(cells) + " |")  # noqa: T201
    for s in summary:
        if s["F1 range"]:
            ranges = ", ".join(f"{d} {lo:.3f}-{hi:.3f}" for d, (lo, hi) in s["F1 range"].items())
            print(f"F1 over seeds, {s['method']}: {ranges}")  # noqa: T201


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["default"])
    parser.add_argument("--modes", nargs="+", default=["scene"])
    parser.add_argument("--datasets", nargs="+", default=list(datasets.NAMES))
    parser.add_argument("--overrides", default="{}", help="JSON settings applied to every preset")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=list(BASELINES),
                        help="classical methods to run alongside (none: --baselines)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--fe-bands", type=band_list,
                        help="bands (1-based, as in the CLI: 5,4,3) Metric-CD's feature extractor "
                        "sees (default: the preset's fe_band_rule)")
    parser.add_argument("--crop", type=int, help="score the central N x N window of each dataset")
    parser.add_argument("--save", help="folder for every run's score map (<dataset>__<method>.npy)")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="run every preset with each of these seeds (default: the preset's)")
    args = parser.parse_args()
    overrides = json.loads(args.overrides)
    from metric_change_detection.core.demo import offline_weights

    if "weights" not in overrides and offline_weights():
        overrides["weights"] = offline_weights()
        overrides.setdefault("backbone", "mobilenet_v2")
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
    rows = []
    print_header()
    for name in args.datasets:
        jobs = [{"method": key, "label": BASELINES[key]} for key in args.baselines]
        for preset in args.presets:
            for mode in args.modes:
                for seed in args.seeds or [None]:
                    seeded = overrides if seed is None else {**overrides, "seed": seed}
                    jobs.append({"method": preset, "mode": mode, "overrides": seeded,
                                 "fe_bands": args.fe_bands, "seed": seed,
                                 "label": f"Metric-CD {preset} {mode}"})
        for job in jobs:
            job.update(dataset=name, crop=args.crop)
            row = run_job(job, args.save)
            rows.append(row)
            print_row(row)
    print_summary(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
