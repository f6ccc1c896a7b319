"""detect_change_baseline: CVA, PCA-KMeans and IR-MAD through the raster pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from metric_change_detection.core.accuracy import roc_auc
from metric_change_detection.core.baseline_pipeline import (
    detect_change_baseline,
    method_key,
    read_sample,
)
from metric_change_detection.core.baselines import IRMAD
from metric_change_detection.core.config import PipelineOptions
from metric_change_detection.core.demo_data import write_demo_pair
from metric_change_detection.core.errors import Cancelled, InputError
from metric_change_detection.core.raster_io import open_pair
from osgeo import gdal, osr

METHODS = ("cva", "pcakmeans", "irmad")
DESCRIPTIONS = {"cva": "CVA change magnitude", "pcakmeans": "PCA-KMeans change score",
                "irmad": "IR-MAD chi-square statistic"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_demo_pair(tmp_path_factory.mktemp("pair"), size=128)


def read(path) -> np.ndarray:
    ds = gdal.Open(str(path))
    band = ds.GetRasterBand(1)
    values = band.ReadAsArray().astype(np.float64)
    nodata = band.GetNoDataValue()
    if nodata is not None and band.DataType == gdal.GDT_Float32:
        values[values == nodata] = np.nan
    return values


def truth(pair) -> np.ndarray:
    return read(pair.truth) > 0


@pytest.mark.parametrize("method", METHODS)
def test_grid_scores_mask_style_and_metadata(pair, tmp_path, method):
    out, mask = tmp_path / "score.tif", tmp_path / "mask.tif"
    result = detect_change_baseline(
        method, pair.before, pair.after, str(out), options=PipelineOptions(mask_path=str(mask))
    )
    src, dst = gdal.Open(pair.before), gdal.Open(str(out))
    assert (dst.RasterXSize, dst.RasterYSize) == (src.RasterXSize, src.RasterYSize)
    assert dst.GetGeoTransform() == src.GetGeoTransform()
    assert osr.SpatialReference(dst.GetProjection()).IsSame(osr.SpatialReference(src.GetProjection()))
    band = dst.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Float32 and band.GetNoDataValue() == -9999.0
    assert band.GetDescription() == DESCRIPTIONS[method]
    meta = dst.GetMetadata()
    assert meta["METRICCD_METHOD"] == method
    assert float(meta["METRICCD_THRESHOLD"]) == pytest.approx(result.threshold, rel=1e-5)
    scores, t = read(out), truth(pair)
    assert roc_auc(scores, t) > 0.9
    m = read(mask)
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert np.array_equal(m == 1, scores > result.threshold)
    assert result.changed_fraction == pytest.approx((m == 1).mean())
    assert roc_auc((m == 1).astype(float), t) > 0.8  # the label-free threshold is sensible
    assert (result.mode, result.device, result.width, result.height) == (method, "cpu", 128, 128)
    assert json.loads(result.to_json())["output_path"] == str(out)
    if method == "pcakmeans":  # the classic rule stays available: the k-means boundary
        otsu = detect_change_baseline(method, pair.before, pair.after, str(tmp_path / "o.tif"),
                                      options=PipelineOptions(threshold="otsu"))
        assert otsu.threshold == 0.0
    # data-dependent pseudocolour style: range = the scores' 2-98 % range
    qml = ET.parse(tmp_path / "score.qml").getroot()
    renderer = next(qml.iter("rasterrenderer"))
    low, high = float(renderer.get("classificationMin")), float(renderer.get("classificationMax"))
    lo, hi = np.nanpercentile(scores, [2, 98])
    span = hi - lo
    assert low == pytest.approx(lo, abs=0.05 * span) and high == pytest.approx(hi, abs=0.05 * span)
    values = [float(i.get("value")) for i in qml.iter("item")]
    assert values[0] == pytest.approx(low) and values[-1] == pytest.approx(high)


@pytest.mark.parametrize("method", ["cva", "irmad", "pcakmeans"])
def test_tiled_run_equals_whole_raster_run(pair, tmp_path, method):
    whole, tiled = tmp_path / "whole.tif", tmp_path / "tiled.tif"
    detect_change_baseline(method, pair.before, pair.after, str(whole))
    detect_change_baseline(method, pair.before, pair.after, str(tiled),
                           options=PipelineOptions(tile_size=64))
    np.testing.assert_allclose(read(tiled), read(whole), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def softer_pair(pair, tmp_path_factory):
    """The demo pair with its after image (planted changes included) a pixel softer."""
    from scipy.ndimage import gaussian_filter

    path = str(tmp_path_factory.mktemp("softer") / "after_soft.tif")
    ds = gdal.GetDriverByName("GTiff").CreateCopy(path, gdal.Open(pair.after))
    for i in range(1, ds.RasterCount + 1):
        band = ds.GetRasterBand(i)
        band.WriteArray(gaussian_filter(band.ReadAsArray().astype(np.float64), 1.0))
    ds = None
    return path


@pytest.mark.parametrize("method", METHODS)
def test_a_softer_date_is_allowed_for_in_every_tile(pair, softer_pair, tmp_path, method):
    """The blurred-date view is read with its halo: tiles give the whole raster's scores; the
    planted change is found as well as without it, and fewer unchanged pixels are marked."""
    log, runs = [], {}
    for name, sharpness, tile in (("plain", 0, 512), ("whole", 1, 512), ("tiled", 1, 64)):
        runs[name] = detect_change_baseline(
            method, pair.before, softer_pair, str(tmp_path / f"{name}.tif"),
            options=PipelineOptions(tile_size=tile, mask_path=str(tmp_path / f"{name}_m.tif")),
            method_options={"sharpness": sharpness}, progress=lambda pct, msg: log.append(msg))
    assert "The before image is sharper than the after image" in " ".join(log)
    meta = gdal.Open(str(tmp_path / "tiled.tif")).GetMetadata()
    assert (meta["METRICCD_SHARPNESS"], meta["METRICCD_SHARPER_DATE"]) == ("1", "before")
    assert gdal.Open(str(tmp_path / "plain.tif")).GetMetadata()["METRICCD_SHARPER_DATE"] == "neither"
    np.testing.assert_allclose(read(tmp_path / "tiled.tif"), read(tmp_path / "whole.tif"),
                               rtol=1e-4, atol=1e-4)
    t = truth(pair)
    plain, allowed = (read(tmp_path / f"{name}_m.tif") == 1 for name in ("plain", "whole"))
    assert allowed[t].mean() > max(0.7, plain[t].mean() - 0.02)
    assert allowed[~t].mean() < plain[~t].mean()


@pytest.mark.parametrize("method", ["irmad", "pcakmeans"])
def test_the_gate_also_requires_the_difference_itself(pair, tmp_path, method):
    """With the gate a pixel is never more significant than by the method's own score, and
    only pixels the method alone marks can be marked."""
    runs = {}
    for gate in (False, True):
        runs[gate] = detect_change_baseline(
            method, pair.before, pair.after, str(tmp_path / f"{gate}.tif"),
            options=PipelineOptions(mask_path=str(tmp_path / f"{gate}_m.tif")),
            method_options={"gate": gate})
    own, gated = read(tmp_path / "False.tif"), read(tmp_path / "True.tif")
    assert runs[True].threshold == pytest.approx(runs[False].threshold)
    assert np.all(gated <= own + 1e-4 * np.abs(own).max()) and np.any(gated < own - 1e-3)
    alone, both = (read(tmp_path / f"{gate}_m.tif") == 1 for gate in (False, True))
    assert not (both & ~alone).any()
    assert roc_auc(gated, truth(pair)) > 0.9


def test_irmad_is_invariant_to_a_linear_radiometric_change(pair, tmp_path):
    ds = gdal.Open(pair.after)
    after = ds.ReadAsArray().astype(np.float32)
    gain, offset = np.array([0.6, 1.7, 2.5]), np.array([300.0, -150.0, 1000.0])
    changed = after * gain[:, None, None] + offset[:, None, None]
    path = str(tmp_path / "after_linear.tif")
    out = gdal.GetDriverByName("GTiff").Create(path, ds.RasterXSize, ds.RasterYSize, 3, gdal.GDT_Float32)
    out.SetGeoTransform(ds.GetGeoTransform())
    out.SetProjection(ds.GetProjection())
    out.WriteArray(changed)
    out = None
    options = dict(mask_path=None)
    a = detect_change_baseline("irmad", pair.before, pair.after, str(tmp_path / "a.tif"),
                               options=PipelineOptions(**options))
    b = detect_change_baseline("irmad", pair.before, path, str(tmp_path / "b.tif"),
                               options=PipelineOptions(**options))
    za, zb = read(tmp_path / "a.tif"), read(tmp_path / "b.tif")
    np.testing.assert_allclose(zb, za, rtol=2e-3, atol=1e-2 * np.nanmedian(za))
    assert b.threshold == pytest.approx(a.threshold, rel=1e-2)
    assert b.changed_fraction == pytest.approx(a.changed_fraction, abs=2e-3)


@pytest.mark.parametrize("method", METHODS)
def test_probability_output_follows_the_score(pair, tmp_path, method):
    """Every method writes the same kind of probability: its score's posterior under the null."""
    prob = tmp_path / "prob.tif"
    result = detect_change_baseline(method, pair.before, pair.after, str(tmp_path / "z.tif"),
                                    method_options={"probability_path": str(prob)})
    p, z = read(prob), read(tmp_path / "z.tif")
    assert np.nanmin(p) >= 0.0 and np.nanmax(p) <= 1.0
    ds = gdal.Open(str(prob))
    assert ds.GetRasterBand(1).GetDescription().endswith("change probability")
    ds = None
    order = np.argsort(z.ravel())
    assert np.all(np.diff(p.ravel()[order]) >= -1e-6), "probability must increase with the score"
    assert roc_auc(p, truth(pair)) > 0.9
    assert np.nanmean(p[z > result.threshold]) > 0.5 > np.nanmean(p[z <= result.threshold])
    if method == "irmad":
        assert len(result.history["canonical_correlations"]) == 3
    assert (tmp_path / "prob.qml").is_file()


def test_fixed_threshold_polygons_and_min_area(pair, tmp_path):
    options = PipelineOptions(mask_path=str(tmp_path / "m.tif"), polygons_path=str(tmp_path / "c.gpkg"),
                              min_area=20, min_area_unit="pixels")
    result = detect_change_baseline("cva", pair.before, pair.after, str(tmp_path / "s.tif"),
                                    options=options, method_options={"threshold": 3.0})
    assert result.threshold == 3.0
    assert (tmp_path / "c.gpkg").is_file()
    scores, mask = read(tmp_path / "s.tif"), read(tmp_path / "m.tif")
    assert (mask == 1).sum() <= (scores > 3.0).sum()
    assert not ((mask == 1) & ~(scores > 3.0)).any()


def test_nodata_is_nodata_in_every_output(tmp_path):
    pair = write_demo_pair(tmp_path / "in", size=96, seed=1)
    ds = gdal.Open(pair.before, gdal.GA_Update)
    for b in range(1, 4):
        ds.GetRasterBand(b).SetNoDataValue(0)
        ds.GetRasterBand(b).WriteArray(np.zeros((20, 30), np.uint16), 10, 10)
    ds = None
    for method in METHODS:
        out, mask = tmp_path / f"{method}.tif", tmp_path / f"{method}_m.tif"
        detect_change_baseline(method, pair.before, pair.after, str(out),
                               options=PipelineOptions(mask_path=str(mask)))
        s, m = read(out), read(mask)
        assert np.isnan(s[10:30, 10:40]).all() and np.isfinite(s[40:, 40:]).all(), method
        assert (m[10:30, 10:40] == 255).all() and (m[40:, 40:] != 255).all(), method


@pytest.mark.parametrize("method", METHODS)
def test_cancel_leaves_nothing_behind(pair, tmp_path, method):
    seen: list = []
    options = PipelineOptions(tile_size=64, mask_path=str(tmp_path / "m.tif"))
    with pytest.raises(Cancelled):
        detect_change_baseline(method, pair.before, pair.after, str(tmp_path / "s.tif"), options=options,
                               progress=lambda p, m: seen.append(p), is_cancelled=lambda: len(seen) > 4)
    assert list(tmp_path.iterdir()) == []
    assert seen == sorted(seen)


def test_cancel_at_the_last_check_removes_written_outputs(pair, tmp_path):
    calls: list = []
    options = PipelineOptions(mask_path=str(tmp_path / "m.tif"))
    detect_change_baseline("cva", pair.before, pair.after, str(tmp_path / "s.tif"), options=options,
                           is_cancelled=lambda: calls.append(1) or False)
    total = len(calls)
    for path in list(tmp_path.iterdir()):
        path.unlink()
    calls.clear()
    with pytest.raises(Cancelled):
        detect_change_baseline("cva", pair.before, pair.after, str(tmp_path / "s.tif"), options=options,
                               is_cancelled=lambda: calls.append(1) or len(calls) >= total)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="nope"), "choose one of cva, pcakmeans, irmad"),
    (dict(method_options={"blocks": 3}), "Unknown option"),
    (dict(method_options={"block": 1}), "block must be"),
    (dict(method_options={"threshold": "high"}), "threshold must be a number"),
    (dict(method_options={"sample_pixels": 10}), "sample_pixels"),
    (dict(options=PipelineOptions(tile_size=64), method_options={"block": 32}), "smaller block"),
    (dict(options=PipelineOptions(tile_size=64), method_options={"block": 30, "sharpness": 1}),
     "smaller block or sharpness"),
    (dict(method_options={"sharpness": -1}), "sharpness must be between 0"),
    (dict(method_options={"sharpness": "soft"}), "sharpness must be between 0"),
    (dict(method_options={"gate": "yes"}), "gate must be true or false"),
])
def test_errors_name_the_fix(pair, tmp_path, kwargs, message):
    kwargs = {"method": "pcakmeans", **kwargs}
    opts = kwargs.get("method_options", {})
    if "probability_path" in opts:
        opts["probability_path"] = str(tmp_path / opts["probability_path"])
    with pytest.raises(InputError, match=message):
        detect_change_baseline(kwargs.pop("method"), pair.before, pair.after, str(tmp_path / "s.tif"),
                               **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_output_must_not_overwrite_an_input(pair):
    with pytest.raises(InputError, match="also an input"):
        detect_change_baseline("cva", pair.before, pair.after, pair.after)


def test_method_names_and_aliases():
    assert method_key("PCA-KMeans") == "pcakmeans" and method_key("IR-MAD") == "irmad"
    assert method_key(" cva ") == "cva"


def test_sample_is_the_whole_raster_or_a_bounded_mosaic(pair, monkeypatch):
    from metric_change_detection.core import baseline_pipeline

    with open_pair(pair.before, pair.after) as p:
        b, a, valid = read_sample(p, 128 * 128)  # fits: the whole raster
        assert b.shape == (3, 128, 128) and valid.all()
        assert np.array_equal(b, p.read(baseline_pipeline._whole(p.grid)).before)
        monkeypatch.setattr(baseline_pipeline, "SAMPLE_WINDOW", 32)
        b, a, valid = read_sample(p, 8192, seed=1)  # 8 windows of 32 x 32 in a 3 x 3 mosaic
        assert b.shape == a.shape == (3, 96, 96)
        assert valid.sum() == 8 * 32 * 32 and not valid[64:, 64:].any()
        whole = IRMAD().fit(*read_sample(p, 10**6))
        part = IRMAD().fit(b, a, valid)
    assert np.allclose(whole.rho_, part.rho_, atol=0.05)


def test_running_a_baseline_never_imports_torch(pair, tmp_path):
    code = (
        "import sys\n"
        "from metric_change_detection.core.baseline_pipeline import detect_change_baseline\n"
        f"detect_change_baseline('pcakmeans', {pair.before!r}, {pair.after!r}, {str(tmp_path / 's.tif')!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Path(tmp_path / "s.tif").is_file()


def test_irmad_is_tested_under_its_chi_square_law_too():
    """IR-MAD's own score is tested under its fitted null and Nielsen's chi2(bands) law; the
    written score never passes where Z is below the law's limit."""
    from metric_change_detection.core.baseline_pipeline import fit_composite_test
    from metric_change_detection.core.baselines import IRMAD
    from metric_change_detection.core.decision import chi_square_null

    rng = np.random.default_rng(5)
    before = rng.normal(100, 10, size=(3, 96, 96)).astype(np.float32)
    after = (before + rng.normal(0, 3, size=before.shape)).astype(np.float32)
    after[:, 30:50, 30:50] += 40.0
    valid = np.ones((96, 96), bool)
    model = IRMAD().fit(before, after, valid)
    test, written = fit_composite_test("irmad", model, (before, after, valid), 96, 0.0, False, 1e-4)
    assert [m.null for m in test.members][1] == chi_square_null(3)
    z = model.score(before, after, valid)
    marked = written > test.null.score_threshold(1e-4)
    assert not (marked & (z <= chi_square_null(3).score_threshold(1e-4))).any()
    assert marked[30:50, 30:50].mean() > 0.95 and marked.mean() < 0.05
    np.testing.assert_allclose(test.score(before, after, valid), written, rtol=1e-5)
