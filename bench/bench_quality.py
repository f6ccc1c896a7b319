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
    .venv/bin/python bench/bench_quality.py --presets --textbook --otb --no-change  # classics

After the table, a summary: each method's mean F1 and ROC-AUC over the scored pairs and what it
marks on pairs without change; with several seeds, each preset's spread over them per pair.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
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

#: Classical methods run through the same raster pipeline and the same decision layer.
BASELINES = {"cva": "CVA", "pcakmeans": "PCA-KMeans", "irmad": "IR-MAD"}
#: The classics' decision without the evidence gate and the sharpness hypotheses (--textbook).
TEXTBOOK = {"gate": False, "sharpness": 0.0}
#: Orfeo ToolBox's MAD with the textbook chi-square decision at this quantile (--otb), as the
#: issue measured it: standardise each MAD variate, Z = sum (MAD_i / sigma_i)^2.
OTB_QUANTILE = 0.99
#: False-alarm rates of the decision swept (from one run each: thresholds recorded).
ALPHAS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
#: Bins of the reliability (calibration) curves.
RELIABILITY_BINS = np.linspace(0.0, 1.0, 11)

COLUMNS = ("dataset", "method", "precision", "recall", "F1", "best F1", "kappa", "ROC-AUC",
           "changed", "true", "seconds", "peak MB")


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
    swept = _record_thresholds()
    with tempfile.TemporaryDirectory() as tmp:
        before = _write(Path(tmp) / "before.tif", data.before, data.wavelengths)
        after = _write(Path(tmp) / "after.tif", data.after, data.wavelengths)
        out = str(Path(tmp) / "p.tif")
        prob = str(Path(tmp) / "prob.tif")
        options = PipelineOptions(mode=job.get("mode", "scene"), fe_bands=job.get("fe_bands"),
                                  threshold=job.get("threshold", "auto"),
                                  alpha=job.get("alpha", PipelineOptions().alpha))
        start = time.perf_counter()
        if job["method"] == "otb":
            p, threshold, swept[:], probability = otb_mad_chi2(before, after, Path(tmp))
            seconds = time.perf_counter() - start
            return {"p": p, "probability": probability, "threshold": threshold, "swept": swept,
                    "changed": float(np.nanmean(p > threshold)), "seconds": seconds,
                    "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
        if job["method"] in BASELINES:
            result = detect_change_baseline(
                job["method"], before, after, out, options=options,
                method_options={"probability_path": prob, **job.get("method_options", {})})
        else:
            config = MetricCDConfig.preset(job["method"], **job.get("overrides", {}))
            result = detect_change(before, after, out, config=config, options=options)
            prob = out
        seconds = time.perf_counter() - start
        p = gdal.Open(out).ReadAsArray().astype(np.float32)
        probability = gdal.Open(prob).ReadAsArray().astype(np.float32)
    p[p == -9999.0] = np.nan
    probability[probability == -9999.0] = np.nan
    return {"p": p, "probability": probability, "threshold": result.threshold,
            "swept": swept or [result.threshold] * len(ALPHAS),
            "changed": result.changed_fraction, "seconds": seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def otb_mad_chi2(before: str, after: str, folder: Path):
    """OTB's MAD variates of the pair and the textbook decision: (Z, threshold, thresholds at
    every rate of ``ALPHAS``, the chi-square CDF of Z as its probability)."""
    import subprocess

    from osgeo import gdal
    from scipy.stats import chi2

    mad = str(folder / "otb_mad.tif")
    subprocess.run(["otbcli_MultivariateAlterationDetector", "-in1", before, "-in2", after,
                    "-out", mad, "float"], check=True, capture_output=True)
    variates = gdal.Open(mad).ReadAsArray().astype(np.float64)
    variates = variates.reshape(-1, *variates.shape[-2:])  # one band: (H, W)
    z = np.sum([(v / v.std()) ** 2 for v in variates], axis=0).astype(np.float32)
    bands = len(variates)
    return (z, float(chi2.isf(1 - OTB_QUANTILE, bands)), [float(chi2.isf(a, bands)) for a in ALPHAS],
            chi2.cdf(z, bands).astype(np.float32))


def _record_thresholds() -> list:
    """Make the decision layer also record its thresholds at every rate of ``ALPHAS``."""
    from metric_change_detection.core.calibration import Calibrator
    from metric_change_detection.core.decision import NullModel

    swept: list = []
    for cls, name in ((Calibrator, "threshold"), (NullModel, "score_threshold")):
        original = getattr(cls, name)

        def recording(self, alpha, _original=original):
            swept[:] = [_original(self, a) for a in ALPHAS]
            return _original(self, alpha)

        setattr(cls, name, recording)
    return swept


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
    labelled = data.labelled & np.isfinite(p)
    m = assessment(p > out["threshold"], data.change, labelled, scores=p)
    return {"dataset": job["dataset"], "group": datasets.group(job["dataset"]),
            "method": job["label"], "seed": job.get("seed"),
            "precision": m["precision"], "recall": m["recall"], "F1": m["f1"],
            "kappa": m["kappa"], "ROC-AUC": m["roc_auc"],
            "changed": out["changed"], "true": data.changed_fraction,
            "best F1": best_f1(p[labelled], data.change[labelled]),
            "reliability": reliability(out["probability"][labelled], data.change[labelled]),
            "sweep": [[assessment(p > t, data.change, labelled)["f1"], float(np.nanmean(p > t))]
                      for t in out["swept"]],
            "seconds": out["seconds"], "peak MB": out["peak_mb"]}


def best_f1(scores: np.ndarray, truth: np.ndarray) -> Optional[float]:
    """The best F1 any threshold on ``scores`` reaches (a diagnosis: labels choose nothing)."""
    ok = np.isfinite(scores)
    scores, truth = scores[ok], truth[ok]
    positives = int(truth.sum())
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(truth[order])
    marked = np.arange(1, tp.size + 1)
    return float(np.max(2 * tp / (marked + positives)))


def reliability(probability: np.ndarray, truth: np.ndarray) -> List[List[float]]:
    """Per bin of ``RELIABILITY_BINS``: [pixels, sum of probabilities, changed pixels]."""
    ok = np.isfinite(probability)
    index = np.clip(np.digitize(probability[ok], RELIABILITY_BINS[1:-1]), 0, len(RELIABILITY_BINS) - 2)
    bins = len(RELIABILITY_BINS) - 1
    return [np.bincount(index, minlength=bins).tolist(),
            np.bincount(index, probability[ok], minlength=bins).tolist(),
            np.bincount(index, truth[ok].astype(float), minlength=bins).tolist()]


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


def _spearman(x: List[float], y: List[float]) -> Optional[float]:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).correlation)


def summarise(rows: List[dict]) -> List[dict]:
    """Per method (seeds pooled): means over the labelled pairs with change (overall and per
    group), the rank correlation of the marked and true fractions, the most any pair without
    change (generated or labelled) marks, and per pair the F1 range over seeds."""
    by_method: Dict[str, List[dict]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    summary = []
    for method, group in by_method.items():
        scored = [r for r in group if r["ROC-AUC"] is not None]
        spread: Dict[str, List[float]] = defaultdict(list)
        for r in scored:
            spread[r["dataset"]].append(r["F1"])
        groups = {g: [r for r in scored if r["group"] == g] for g in datasets.GROUPS}
        summary.append({
            "method": method,
            "runs": len(group),
            "mean F1": _mean([r["F1"] for r in scored]),
            "mean kappa": _mean([r["kappa"] for r in scored]),
            "mean ROC-AUC": _mean([r["ROC-AUC"] for r in scored]),
            "mean best F1": _mean([r["best F1"] for r in scored]),
            "rank corr": _spearman([r["changed"] for r in scored], [r["true"] for r in scored]),
            "no-change max": max([r["changed"] for r in group if r["ROC-AUC"] is None],
                                 default=None),
            "groups": {g: _mean([r["F1"] for r in rs]) for g, rs in groups.items()},
            "F1 range": {d: (min(v), max(v)) for d, v in spread.items() if len(v) > 1},
        })
    return summary


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_summary(rows: List[dict]) -> None:
    """The summary of ``rows`` as markdown tables (and the seed spreads, if any)."""
    summary = summarise(rows)
    keys = ("mean F1", "mean kappa", "mean ROC-AUC", "mean best F1", "rank corr", "no-change max")
    print("\n| method | runs | " + " | ".join(keys) + " |")  # noqa: T201
    print("|---|---|" + "---|" * len(keys))  # noqa: T201
    for s in summary:
        cells = [s["method"], str(s["runs"])] + [_fmt(s[k]) for k in keys]
        print("| " + " | ".join(cells) + " |")  # noqa: T201
    print("\nMean F1 per group:\n\n| method | " + " | ".join(datasets.GROUPS) + " |")  # noqa: T201
    print("|---|" + "---|" * len(datasets.GROUPS))  # noqa: T201
    for s in summary:
        cells = [s["method"]] + [_fmt(s["groups"][g]) for g in datasets.GROUPS]
        print("| " + " | ".join(cells) + " |")  # noqa: T201
    no_change = [r for r in rows if r["dataset"].startswith("nochange/")]
    if no_change:
        print("\nMarked on the generated pairs without change:\n")  # noqa: T201
        methods = list(dict.fromkeys(r["method"] for r in no_change))
        print("| pair | " + " | ".join(methods) + " |")  # noqa: T201
        print("|---|" + "---|" * len(methods))  # noqa: T201
        for name in dict.fromkeys(r["dataset"] for r in no_change):
            cells = {r["method"]: f"{100 * r['changed']:.2f} %" for r in no_change
                     if r["dataset"] == name}
            print("| " + " | ".join([name] + [cells.get(m, "-") for m in methods]) + " |")  # noqa: T201
    print_reliability(rows)
    print_sweep(rows)
    for s in summary:
        if s["F1 range"]:
            ranges = ", ".join(f"{d} {lo:.3f}-{hi:.3f}" for d, (lo, hi) in s["F1 range"].items())
            print(f"F1 over seeds, {s['method']}: {ranges}")  # noqa: T201


def print_sweep(rows: List[dict]) -> None:
    """Per method and false-alarm rate: mean F1, worst group mean F1, rank correlation of the
    marked and true fractions, and the most marked on a pair without change."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    print("\nDecision at each false-alarm rate (mean F1 / worst group mean F1 / rank corr / "  # noqa: T201
          "no-change max):\n")
    print("| method | " + " | ".join(f"alpha {a:g}" for a in ALPHAS) + " |")  # noqa: T201
    print("|---|" + "---|" * len(ALPHAS))  # noqa: T201
    for method in methods:
        group = [r for r in rows if r["method"] == method]
        scored = [r for r in group if r["ROC-AUC"] is not None]
        cells = []
        for i in range(len(ALPHAS)):
            f1 = _mean([r["sweep"][i][0] for r in scored])
            groups = [_mean([r["sweep"][i][0] for r in scored if r["group"] == g])
                      for g in datasets.GROUPS]
            worst = min([g for g in groups if g is not None], default=None)
            corr = _spearman([r["sweep"][i][1] for r in scored], [r["true"] for r in scored])
            none = max([r["sweep"][i][1] for r in group if r["ROC-AUC"] is None], default=None)
            cells.append(" / ".join(_fmt(v) for v in (f1, worst, corr, none)))
        print("| " + " | ".join([method] + cells) + " |")  # noqa: T201


def print_reliability(rows: List[dict]) -> None:
    """Reliability curves pooled over the labelled pairs: mean probability vs changed share."""
    labelled = [r for r in rows if not r["dataset"].startswith("nochange/")]
    methods = list(dict.fromkeys(r["method"] for r in labelled))
    if not methods:
        return
    bins = [f"{lo:.1f}-{hi:.1f}" for lo, hi in zip(RELIABILITY_BINS[:-1], RELIABILITY_BINS[1:])]
    print("\nReliability (pooled labelled pixels): per probability bin, observed share of "  # noqa: T201
          "change (mean probability; pixels)\n")
    print("| method | " + " | ".join(bins) + " |")  # noqa: T201
    print("|---|" + "---|" * len(bins))  # noqa: T201
    for method in methods:
        n, p, c = (np.sum([r["reliability"][i] for r in labelled if r["method"] == method], axis=0)
                   for i in range(3))
        cells = [f"{c[i] / n[i]:.2f} ({p[i] / n[i]:.2f}; {int(n[i])})" if n[i] else "-"
                 for i in range(len(bins))]
        print("| " + " | ".join([method] + cells) + " |")  # noqa: T201


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["default"],
                        help="Metric-CD presets (none: --presets, the classics only)")
    parser.add_argument("--modes", nargs="+", default=["scene"])
    parser.add_argument("--datasets", nargs="+", default=list(datasets.NAMES))
    parser.add_argument("--no-change", action="store_true",
                        help="also run the generated pairs without change (datasets.NO_CHANGE)")
    parser.add_argument("--alpha", type=float, help="false-alarm rate of the decision")
    parser.add_argument("--threshold", default="auto", help="auto, otsu or a number")
    parser.add_argument("--overrides", default="{}", help="JSON settings applied to every preset")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=list(BASELINES),
                        help="classical methods to run alongside (none: --baselines)")
    parser.add_argument("--textbook", action="store_true",
                        help="also run each classic with the textbook decision (no evidence gate, "
                        "no sharpness hypotheses)")
    parser.add_argument("--otb", action="store_true",
                        help="also run Orfeo ToolBox's MAD with the chi-square decision (needs "
                        "otb-bin; skipped with a note when absent)")
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
    names = list(args.datasets) + (list(datasets.NO_CHANGE) if args.no_change else [])
    decision = {"threshold": args.threshold if args.threshold in ("auto", "otsu")
                else float(args.threshold)}
    if args.alpha:
        decision["alpha"] = args.alpha
    otb = args.otb and shutil.which("otbcli_MultivariateAlterationDetector")
    if args.otb and not otb:
        print("OTB MAD + chi-square skipped: otbcli_MultivariateAlterationDetector not found "  # noqa: T201
              "(apt-get install otb-bin)")
    for name in names:
        jobs = [{"method": key, "label": BASELINES[key]} for key in args.baselines]
        if args.textbook:
            jobs += [{"method": key, "label": f"{BASELINES[key]} textbook",
                      "method_options": TEXTBOOK} for key in args.baselines]
        if otb:
            jobs.append({"method": "otb", "label": "OTB MAD + chi2"})
        for preset in args.presets:
            for mode in args.modes:
                for seed in args.seeds or [None]:
                    seeded = overrides if seed is None else {**overrides, "seed": seed}
                    jobs.append({"method": preset, "mode": mode, "overrides": seeded,
                                 "fe_bands": args.fe_bands, "seed": seed,
                                 "label": f"Metric-CD {preset} {mode}"})
        for job in jobs:
            job.update(dataset=name, crop=args.crop, **decision)
            row = run_job(job, args.save)
            rows.append(row)
            print_row(row)
    print_summary(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
