"""The benchmarks' generated pair: georeferenced, and its truth marks the planted change."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

gdal = pytest.importorskip("osgeo.gdal")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.synthetic_raster import write_pair  # noqa: E402


def _read(path: str) -> np.ndarray:
    ds = gdal.Open(path)
    try:
        return ds.ReadAsArray().astype(np.float64)
    finally:
        ds = None


def test_truth_marks_the_planted_squares(tmp_path):
    before, after, truth = write_pair(tmp_path, 1200, bands=2, seed=3, truth=True)
    b, a, t = _read(before), _read(after), _read(truth).astype(bool)
    assert b.shape == a.shape == (2, 1200, 1200)
    assert 0.02 < t.mean() < 0.2
    # Remove the global gain/offset per band, then compare the change magnitude.
    residual = np.abs(a - np.array([np.polyval(np.polyfit(b[i][~t], a[i][~t], 1), b[i])
                                    for i in range(2)])).mean(axis=0)
    assert np.median(residual[t]) > 10 * np.median(residual[~t])
    assert gdal.Open(before).GetProjection() == gdal.Open(truth).GetProjection() != ""


def test_without_truth_writes_only_the_pair(tmp_path):
    paths = write_pair(tmp_path, 200)
    assert [Path(p).name for p in paths] == ["before.tif", "after.tif"]
    assert not (tmp_path / "truth.tif").exists()
