"""Benchmark of the classical baselines on every labelled shared dataset.

Usage::

    .venv/bin/python bench/bench_baselines.py [--datasets NAME ...] [--methods KEY ...]

Prints one table: dataset, method, precision, recall, F1, kappa, ROC-AUC, predicted changed
fraction, seconds and peak traced memory (numpy allocations, MB). Each method is fitted on the
whole scene (all pixels are valid in these data), thresholded without labels, and scored only on
labelled pixels. IR-MAD is thresholded with Otsu on sqrt(Z) and, for comparison, on its
chi-square change probability (poorly calibrated after the reweighting: it flags nearly all).
Undefined values (e.g. recall on the change-free LEVIR-CD tile) print as "-".
"""

from __future__ import annotations

import argparse
import sys
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


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(NAMES), choices=NAMES)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args(argv)
    header = ["dataset", "method", "precision", "recall", "F1", "kappa", "ROC-AUC", "changed", "s", "peak MB"]
    rows = run(args.datasets, args.methods)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")  # noqa: T201
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")  # noqa: T201
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")  # noqa: T201


if __name__ == "__main__":
    main()
