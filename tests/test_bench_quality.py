"""The quality benchmark's summary: means over scored pairs, no-change tiles, seed spreads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402

from bench.bench_quality import _cell, best_f1, reliability, summarise  # noqa: E402


def _row(dataset, method, f1, auc, changed, seed=None, true=0.1):
    return {"dataset": dataset, "group": "OSCD RGB", "method": method, "seed": seed, "F1": f1,
            "ROC-AUC": auc, "kappa": f1, "best F1": f1, "changed": changed, "true": true}


def test_summary_pools_seeds_and_separates_no_change_pairs():
    rows = [
        _row("a", "CVA", 0.6, 0.9, 0.1),
        _row("b", "CVA", 0.2, 0.7, 0.05),
        _row("empty", "CVA", 0.0, None, 0.17),
        _row("a", "MCD", 0.7, 0.95, 0.1, seed=0),
        _row("a", "MCD", 0.5, 0.85, 0.1, seed=1),
        _row("b", "MCD", 0.3, 0.8, 0.02, seed=0),
        _row("b", "MCD", 0.3, 0.9, 0.02, seed=1),
        _row("empty", "MCD", 0.0, None, 0.08, seed=0),
        _row("empty", "MCD", 0.0, None, 0.10, seed=1),
    ]
    cva, mcd = summarise(rows)
    assert cva["method"] == "CVA" and cva["runs"] == 3
    assert cva["mean F1"] == pytest.approx(0.4) and cva["mean ROC-AUC"] == pytest.approx(0.8)
    assert cva["no-change max"] == pytest.approx(0.17)
    assert cva["F1 range"] == {}
    assert mcd["runs"] == 6
    assert mcd["mean F1"] == pytest.approx(0.45) and mcd["mean ROC-AUC"] == pytest.approx(0.875)
    assert mcd["no-change max"] == pytest.approx(0.10)
    assert mcd["F1 range"] == {"a": (0.5, 0.7), "b": (0.3, 0.3)}


def test_summary_without_no_change_pairs():
    (only,) = summarise([_row("a", "CVA", 0.6, 0.9, 0.1)])
    assert only["no-change max"] is None


def test_rank_correlation_of_marked_and_true_fractions():
    rows = [_row(d, "M", 0.5, 0.9, changed=c, true=t)
            for d, c, t in (("a", 0.01, 0.02), ("b", 0.05, 0.1), ("c", 0.2, 0.4))]
    assert summarise(rows)[0]["rank corr"] == pytest.approx(1.0)
    rows[0]["changed"] = 0.5
    assert summarise(rows)[0]["rank corr"] == pytest.approx(-0.5)


def test_best_f1_and_reliability():
    truth = np.array([0, 0, 0, 1, 1], bool)
    assert best_f1(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), truth) == pytest.approx(1.0)
    assert best_f1(np.array([0.9, 0.2, 0.3, 0.1, 0.8]), truth) == pytest.approx(4 / 7)
    assert best_f1(np.zeros(5), np.zeros(5, bool)) is None
    n, p, c = reliability(np.array([0.05, 0.05, 0.95, 0.97]), np.array([0, 1, 1, 1], bool))
    assert (n[0], n[-1], c[0], c[-1]) == (2, 2, 1, 2) and p[-1] == pytest.approx(1.92)


def test_table_cell_names_the_seed():
    assert _cell(_row("a", "MCD", 0.7, 0.95, 0.1, seed=3), "method") == "MCD (seed 3)"
    assert _cell(_row("a", "MCD", 0.7, 0.95, 0.1), "method") == "MCD"
    assert _cell(_row("a", "MCD", 0.7, None, 0.1), "ROC-AUC") == "-"
