"""Tests of the synthetic demo pair."""

from __future__ import annotations

import numpy as np
import pytest
from metric_change_detection.core.demo_data import synthetic_pair, write_demo_pair
from metric_change_detection.core.errors import InputError


@pytest.mark.parametrize("bands", [1, 3, 13])
def test_shapes_dtypes_and_range(bands):
    before, after, truth = synthetic_pair(64, bands, seed=1)
    assert before.shape == after.shape == (bands, 64, 64)
    assert before.dtype == after.dtype == np.float32
    assert truth.shape == (64, 64) and truth.dtype == bool
    for image in (before, after):
        assert np.isfinite(image).all()
        assert image.min() >= 0.0 and image.max() <= 1.0


def test_deterministic_and_seed_dependent():
    a = synthetic_pair(48, 3, seed=7)
    b = synthetic_pair(48, 3, seed=7)
    c = synthetic_pair(48, 3, seed=8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("size", [64, 128])
def test_changed_fraction_and_contrast(size, seed):
    before, after, truth = synthetic_pair(size, 3, seed=seed)
    assert 0.05 <= truth.mean() <= 0.12
    diff = np.abs(after - before).mean(axis=0)
    assert diff[truth].mean() > 2.5 * diff[~truth].mean()


def test_radiometric_shift_between_dates():
    before, after, truth = synthetic_pair(96, 4, seed=3, n_changes=0)
    assert not truth.any()
    gaps = [abs(float(after[b].mean() - before[b].mean())) for b in range(4)]
    assert max(gaps) > 0.01  # per-band gain/offset moved at least one band


def test_bad_arguments():
    with pytest.raises(InputError, match="size"):
        synthetic_pair(8)
    with pytest.raises(InputError, match="bands"):
        synthetic_pair(32, bands=0)


def test_write_demo_pair(tmp_path):
    from osgeo import gdal, osr

    pair = write_demo_pair(tmp_path / "demo", size=64, seed=2)
    before, after, truth = synthetic_pair(64, 3, seed=2)
    for path in (pair.before, pair.after):
        ds = gdal.Open(path)
        assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (64, 64, 3)
        assert ds.GetRasterBand(1).DataType == gdal.GDT_UInt16
        srs = osr.SpatialReference(wkt=ds.GetProjection())
        assert srs.GetAuthorityCode(None) == "32633"
        gt = ds.GetGeoTransform()
        assert gt[1] == 10.0 and gt[5] == -10.0
    data = gdal.Open(pair.before).ReadAsArray() / 10000.0
    np.testing.assert_allclose(data, before, atol=1e-4)
    ds = gdal.Open(pair.truth)
    assert ds.GetRasterBand(1).DataType == gdal.GDT_Byte
    np.testing.assert_array_equal(ds.ReadAsArray(), truth.astype(np.uint8))
