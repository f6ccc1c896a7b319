"""Benchmark of the classical baselines on every labelled shared dataset.

Usage::

    .venv/bin/python bench/bench_baselines.py [--datasets NAME ...] [--methods KEY ...]
    .venv/bin/python bench/bench_baselines.py --size 10000   # bounded-memory run on an N x N pair

Prints one table: dataset, method, precision, recall, F1, kappa, ROC-AUC, predicted changed
fraction, seconds and peak traced memory (numpy allocations, MB). Each method is fitted on the
whole scene (all pixels are valid in these data), thresholded without labels, and scored only on
labelled pixels. IR-MAD is thresholded with Otsu on sqrt(Z) and, for comparison, on its
chi-square change probability (poorly calibrated after the reweighting: it flags nearly all).
Undefined values (e.g. recall on the change-free LEVIR-CD tile) print as "-".

The same baselines through the raster pipeline, next to Metric-CD in one table:
``bench/bench_quality.py``.

``--size N`` writes a seeded N x N 3-band pair with planted squares and its truth
(``bench/synthetic_raster.py``), then times IR-MAD and PCA-KMeans (``--methods`` to choose)
through the raster pipeline, each in a fresh process, and prints seconds, peak resident memory
(RSS) and the mask's accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metric_change_detection.core.accuracy import assessment  # noqa: E402
from metric_change_detection.core.baselines import (  # noqa: E402
    CVA,
    IRMAD,
    PCAKMeans,
    otsu_score_threshold,
)
from metric_change_detection.core.threshold import otsu_threshold  # noqa: E402

from bench.datasets import NAMES, available, load  # noqa: E402
from bench.synthetic_raster import write_pair  # noqa: E402

Result = Tuple[np.ndarray, np.ndarray]  # (prediction, scores)


def _cva(b: np.ndarray, a: np.ndarray, valid: np.ndarray) -> Result:
    s = CVA(normalise=True).fit_score(b, a, valid)
    return s > otsu_score_threshold(s), s


def _pca_kmeans(b: np.ndarray, a: np.ndarray, valid: np.ndarray) -> Result:
    m = PCAKMeans(block=4, n_components=3).fit(b, a, valid)
    s = m.score(b, a, valid)
    return s > m.decision_threshold, s


def _irmad_score(b: np.ndarray, a: np.ndarray, valid: np.ndarray) -> Result:
    # Otsu on sqrt(Z), the length of the standardised MAD vector (the analogue of the CVA
    # magnitude): Z itself is so heavy-tailed that Otsu over its range flags almost nothing.
    s = IRMAD().fit_score(b, a, valid)
    r = np.sqrt(s)
    return r > otsu_score_threshold(r), s


def _irmad_prob(b: np.ndarray, a: np.ndarray, valid: np.ndarray) -> Result:
    m = IRMAD().fit(b, a, valid)
    s = m.score(b, a, valid)
    p = m.probability(s)
    return p > otsu_threshold(p, bins=1024, value_range=(0.0, 1.0)), s


METHODS: Dict[str, Tuple[str, Callable[[np.ndarray, np.ndarray, np.ndarray], Result]]] = {
    "cva": ("CVA+Otsu", _cva),
    "pca-kmeans": ("PCA-KMeans", _pca_kmeans),
    "irmad": ("IR-MAD+Otsu(sqrt Z)", _irmad_score),
    "irmad-prob": ("IR-MAD+Otsu(P)", _irmad_prob),
}


def _fmt(v: Optional[float], digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def run(datasets: Sequence[str], methods: Sequence[str]) -> List[List[str]]:
    """Run every method on every dataset; return the table rows."""
    rows = []
    for name in datasets:
        if not available(name):
            print(f"skipping {name}: data not found", file=sys.stderr)  # noqa: T201
            continue
        ds = load(name)
        valid = np.ones(ds.change.shape, bool)
        for key in methods:
            label, fn = METHODS[key]
            tracemalloc.start()
            t0 = time.perf_counter()
            pred, scores = fn(ds.before, ds.after, valid)
            seconds = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            m = assessment(pred, ds.change, ds.labelled, scores)
            rows.append([
                name, label, _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"]), _fmt(m["kappa"]),
                _fmt(m["roc_auc"]), _fmt(m["changed_fraction"]), f"{seconds:.2f}", f"{peak:.0f}",
            ])
    return rows


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss would include the parent's peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(method: str, before: str, after: str, truth: str, folder: str) -> None:
    """Run one method in this (fresh) process; print a JSON line with time and peak RSS."""
    from metric_change_detection.core.accuracy import assess_rasters
    from metric_change_detection.core.baseline_pipeline import detect_change_baseline
    from metric_change_detection.core.config import PipelineOptions

    base = _peak_rss_mb()
    t0 = time.perf_counter()
    result = detect_change_baseline(method, before, after, f"{folder}/{method}.tif",
                                    options=PipelineOptions(mask_path=f"{folder}/{method}_mask.tif"))
    seconds = time.perf_counter() - t0
    peak = _peak_rss_mb()
    m = assess_rasters(f"{folder}/{method}_mask.tif", truth, [1])
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "base_mb": base, "f1": m["f1"],  # noqa: T201
                      "changed": result.changed_fraction, "threshold": result.threshold}))


def run_size(
    size: int, methods: Sequence[str], folder: Optional[str] = None, caches: Sequence[Optional[int]] = (None,)
) -> List[List[str]]:
    """Time the methods through the raster pipeline on a generated ``size`` x ``size`` pair.

    Each method runs once per GDAL block-cache size in ``caches`` (MB; None = GDAL's default,
    5 % of the RAM), which is part of the resident memory.
    """
    tmp = tempfile.TemporaryDirectory(prefix="bench-size-", dir=folder)
    with tmp as work:
        t0 = time.perf_counter()
        before, after, truth = write_pair(Path(work), size, truth=True)
        print(f"wrote the {size} x {size} pair in {time.perf_counter() - t0:.0f} s", file=sys.stderr)  # noqa: T201
        rows = []
        for cache, key in [(c, k) for c in caches for k in methods]:
            method = {"pca-kmeans": "pcakmeans"}.get(key, key)
            env = dict(os.environ)
            if cache is not None:
                env["GDAL_CACHEMAX"] = str(cache)
            done = subprocess.run(
                [sys.executable, __file__, "--_child", method, before, after, truth, work],
                capture_output=True, text=True, check=False, env=env,
            )
            if done.returncode != 0:
                raise SystemExit(done.stderr[-2000:])
            r = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append([f"{size} x {size} x 3", method, "default" if cache is None else f"{cache} MB",
                         f"{r['seconds']:.0f}", f"{size * size / r['seconds'] / 1e6:.2f}",
                         f"{r['peak_mb']:.0f}", f"{r['base_mb']:.0f}", _fmt(r["f1"]), _fmt(r["changed"]),
                         f"{r['threshold']:.4g}"])
    return rows


def _table(header: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")  # noqa: T201
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")  # noqa: T201
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")  # noqa: T201


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_child"]:
        _child(*argv[1:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(NAMES), choices=NAMES)
    parser.add_argument("--methods", nargs="*", choices=[*METHODS, "pcakmeans"])
    parser.add_argument("--size", type=int, help="time IR-MAD and PCA-KMeans on a generated N x N pair")
    parser.add_argument("--tmp", help="folder for the generated pair (default: the system's)")
    parser.add_argument("--gdal-cache", type=int, nargs="*", metavar="MB",
                        help="with --size: GDAL_CACHEMAX values to run each method with (default: GDAL's)")
    args = parser.parse_args(argv)
    if args.size:
        rows = run_size(args.size, args.methods or ["irmad", "pcakmeans"], args.tmp,
                        args.gdal_cache or [None])
        _table(["pair", "method", "GDAL cache", "s", "Mpx/s", "peak RSS MB", "RSS after imports MB", "F1",
                "changed", "threshold"], rows)
        return
    header = ["dataset", "method", "precision", "recall", "F1", "kappa", "ROC-AUC", "changed", "s", "peak MB"]
    _table(header, run(args.datasets, args.methods or list(METHODS)))


if __name__ == "__main__":
    main()
