"""The quality benchmark's summary: means over scored pairs, no-change tiles, seed spreads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_quality import _cell, summarise  # noqa: E402


def _row(dataset, method, f1, auc, changed, seed=None):
    return {"dataset": dataset, "method": method, "seed": seed, "F1": f1, "ROC-AUC": auc,
            "changed": changed}


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
    assert cva["no-change marked"] == pytest.approx(0.17)
    assert cva["F1 range"] == {}
    assert mcd["runs"] == 6
    assert mcd["mean F1"] == pytest.approx(0.45) and mcd["mean ROC-AUC"] == pytest.approx(0.875)
    assert mcd["no-change marked"] == pytest.approx(0.09)
    assert mcd["F1 range"] == {"a": (0.5, 0.7), "b": (0.3, 0.3)}


def test_summary_without_no_change_pairs():
    (only,) = summarise([_row("a", "CVA", 0.6, 0.9, 0.1)])
    assert only["no-change marked"] is None


def test_table_cell_names_the_seed():
    assert _cell(_row("a", "MCD", 0.7, 0.95, 0.1, seed=3), "method") == "MCD (seed 3)"
    assert _cell(_row("a", "MCD", 0.7, 0.95, 0.1), "method") == "MCD"
    assert _cell(_row("a", "MCD", 0.7, None, 0.1), "ROC-AUC") == "-"
