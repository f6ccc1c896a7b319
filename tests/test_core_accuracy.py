"""Accuracy metrics against hand-computed confusion matrices; streaming; raster assessment."""

from __future__ import annotations

import numpy as np
import pytest
from metric_change_detection.core.accuracy import (
    ConfusionAccumulator,
    accuracy_report_html,
    assess_rasters,
    assessment,
    roc_auc,
)
from metric_change_detection.core.errors import InputError
from osgeo import gdal

gdal.UseExceptions()

PRED = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 0], bool)
REF = np.array([1, 0, 0, 1, 1, 0, 0, 0, 0, 0], bool)


def test_hand_computed_metrics():
    m = assessment(PRED, REF)
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["n"]) == (2, 2, 1, 5, 10)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7)
    assert m["overall_accuracy"] == pytest.approx(0.7)
    pe = (4 * 3 + 6 * 7) / 100
    assert m["kappa"] == pytest.approx((0.7 - pe) / (1 - pe))
    assert m["changed_fraction"] == pytest.approx(0.4)
    assert m["reference_changed_fraction"] == pytest.approx(0.3)
    assert m["roc_auc"] is None


def test_undefined_ratios_are_none():
    m = assessment(np.zeros(5, bool), np.zeros(5, bool))
    assert m["precision"] is None and m["recall"] is None and m["f1"] is None and m["kappa"] is None
    assert m["overall_accuracy"] == 1.0


def _brute_auc(s, c):
    pos, neg = s[c], s[~c]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_roc_auc_equals_pairwise_formula_with_ties():
    rng = np.random.default_rng(0)
    c = rng.random(300) < 0.3
    s = np.round(rng.random(300) + 0.5 * c, 1)  # many ties
    assert roc_auc(s, c) == pytest.approx(_brute_auc(s, c))
    assert roc_auc(np.arange(4.0), np.array([0, 0, 1, 1], bool)) == 1.0
    assert roc_auc(np.ones(3), np.zeros(3, bool)) is None


def test_sparse_labels_ignored():
    lab = np.ones(10, bool)
    lab[[1, 3]] = False  # drop one fp and one fn
    m = assessment(PRED, REF, lab, scores=PRED.astype(float))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 0, 5)
    s = np.where(lab, PRED.astype(float), np.nan)
    assert m["roc_auc"] == pytest.approx(roc_auc(s, REF))


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(1)
    change = rng.random((40, 30)) < 0.2
    labelled = rng.random((40, 30)) < 0.8
    bins = 256
    centres = (np.arange(bins) + 0.5) / bins
    scores = centres[np.clip((rng.random((40, 30)) * 0.7 + 0.3 * change) * bins, 0, bins - 1).astype(int)]
    pred = scores > 0.5
    acc = ConfusionAccumulator(bins=bins, score_range=(0, 1))
    for y in range(0, 40, 16):
        for x in range(0, 30, 16):
            w = (slice(y, y + 16), slice(x, x + 16))
            acc.add(pred[w], change[w], labelled[w], scores[w])
    one = assessment(pred, change, labelled, scores)
    got = acc.metrics()
    for k in ("tp", "fp", "fn", "tn", "precision", "recall", "f1", "kappa", "overall_accuracy"):
        assert got[k] == pytest.approx(one[k])
    assert got["roc_auc"] == pytest.approx(one["roc_auc"], abs=1e-12)
    fpr, tpr = acc.roc_curve()
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_accumulator_errors():
    acc = ConfusionAccumulator()
    with pytest.raises(InputError):
        acc.add(np.zeros(3, bool), np.zeros(4, bool))
    with pytest.raises(InputError):
        acc.roc_curve()


def _write(path, array, dtype, gt=None, nodata=None, driver="GTiff"):
    h, w = array.shape
    ds = gdal.GetDriverByName(driver).Create(str(path), w, h, 1, dtype)
    if gt is not None:
        ds.SetGeoTransform(gt)
        ds.SetProjection("EPSG:32631")
    band = ds.GetRasterBand(1)
    if nodata is not None:
        band.SetNoDataValue(nodata)
    band.WriteArray(array)
    ds = None
    return path


GT = (500000.0, 10.0, 0.0, 4500000.0, 0.0, -10.0)


def test_assess_binary_map_with_1_2_reference(tmp_path):
    rng = np.random.default_rng(2)
    ref_change = rng.random((12, 10)) < 0.3
    pred = ref_change.copy()
    pred[0, :4] = ~pred[0, :4]
    mask = pred.astype(np.uint8)
    mask[11, :] = 255  # nodata row of the map
    ref = np.where(ref_change, 2, 1).astype(np.uint8)
    ref[10, :5] = 0  # reference nodata
    m = assess_rasters(
        _write(tmp_path / "mask.tif", mask, gdal.GDT_Byte, GT, 255),
        _write(tmp_path / "ref.tif", ref, gdal.GDT_Byte, GT, 0),
        change_values=[2], nochange_values=[1],
    )
    keep = np.ones((12, 10), bool)
    keep[11] = False
    keep[10, :5] = False
    want = assessment(pred, ref_change, keep)
    assert m["map_type"] == "binary" and m["threshold"] is None and m["roc"] is None
    for k in ("tp", "fp", "fn", "tn", "f1", "kappa"):
        assert m[k] == pytest.approx(want[k])


def test_assess_probability_map_otsu_and_0_255_png_reference(tmp_path):
    rng = np.random.default_rng(3)
    ref_change = np.zeros((20, 16), bool)
    ref_change[5:12, 4:10] = True
    prob = np.clip(0.2 + 0.6 * ref_change + rng.normal(scale=0.1, size=ref_change.shape), 0, 1)
    prob = prob.astype(np.float32)
    prob[0, 0] = np.nan
    ref = np.where(ref_change, 255, 0).astype(np.uint8)
    png = tmp_path / "ref.png"
    gdal.GetDriverByName("PNG").CreateCopy(str(png), _numpy_ds(ref))
    m = assess_rasters(_write(tmp_path / "p.tif", prob, gdal.GDT_Float32, GT), png, change_values=[255])
    assert m["map_type"] == "probability"
    assert 0.3 < m["threshold"] < 0.7
    assert m["n"] == 20 * 16 - 1
    assert m["f1"] > 0.95
    keep = np.isfinite(prob)
    assert m["roc_auc"] == pytest.approx(roc_auc(prob, ref_change, keep), abs=2e-3)
    fixed = assess_rasters(tmp_path / "p.tif", png, change_values=[255], threshold=0.99)
    assert fixed["threshold"] == 0.99 and fixed["tp"] == int((prob > 0.99).sum())


def _numpy_ds(array):
    ds = gdal.GetDriverByName("MEM").Create("", array.shape[1], array.shape[0], 1, gdal.GDT_Byte)
    ds.GetRasterBand(1).WriteArray(array)
    return ds


def test_assess_aligns_coarser_reference_nearest(tmp_path):
    ref_coarse = np.array([[2, 1], [1, 2]], np.uint8)  # 20 m pixels
    ref_fine = np.kron(ref_coarse, np.ones((2, 2), np.uint8)) == 2  # on the 10 m grid
    pred = np.zeros((4, 4), np.uint8)
    pred[:2, :2] = 1
    coarse_gt = (GT[0], 20.0, 0.0, GT[3], 0.0, -20.0)
    m = assess_rasters(
        _write(tmp_path / "m.tif", pred, gdal.GDT_Byte, GT),
        _write(tmp_path / "r.tif", ref_coarse, gdal.GDT_Byte, coarse_gt),
        change_values=[2],
    )
    want = assessment(pred.astype(bool), ref_fine)
    got = (m["tp"], m["fp"], m["fn"], m["tn"])
    assert got == (want["tp"], want["fp"], want["fn"], want["tn"]) == (4, 0, 4, 8)


def test_assess_size_mismatch_without_georef(tmp_path):
    with pytest.raises(InputError, match="sizes differ"):
        assess_rasters(
            _write(tmp_path / "m.tif", np.zeros((4, 4), np.uint8), gdal.GDT_Byte),
            _write(tmp_path / "r.tif", np.zeros((5, 4), np.uint8), gdal.GDT_Byte),
            change_values=[1],
        )


def test_html_report(tmp_path):
    acc = ConfusionAccumulator(bins=64)
    s = np.linspace(0, 1, 50)
    acc.add(s > 0.5, s > 0.4, None, s)
    out = accuracy_report_html(acc.metrics(), acc.roc_curve(), tmp_path / "r.html")
    text = out.read_text()
    assert "<svg" in text and "polyline" in text and "reference change" in text and "kappa" in text
    accuracy_report_html(assessment(PRED, REF), None, tmp_path / "r2.html")
    assert "<svg" not in (tmp_path / "r2.html").read_text()
