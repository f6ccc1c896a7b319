"""detect_change end to end on GeoTIFFs: georeferencing, modes, outputs, cancel, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from metric_change_detection.core.accuracy import roc_auc
from metric_change_detection.core.config import MetricCDConfig, PipelineOptions
from metric_change_detection.core.demo import offline_weights
from metric_change_detection.core.demo_data import synthetic_pair, write_demo_pair
from metric_change_detection.core.errors import Cancelled, InputError
from metric_change_detection.core.pipeline import detect_change
from osgeo import gdal, gdal_array, osr

TINY = dict(weights="random", width=8, depth=2, iterations=4)


def config(**kw) -> MetricCDConfig:
    return MetricCDConfig.preset("fast", **{**TINY, **kw})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_demo_pair(tmp_path_factory.mktemp("pair"), size=160, seed=3)


def read(path: str) -> np.ndarray:
    return gdal.Open(path).ReadAsArray()


def truth(pair) -> np.ndarray:
    return read(pair.truth) > 0


def test_output_keeps_grid_crs_nodata_style_and_metadata(pair, tmp_path):
    out = tmp_path / "p.tif"
    result = detect_change(pair.before, pair.after, str(out), config=config())
    src, dst = gdal.Open(pair.before), gdal.Open(str(out))
    assert dst.GetGeoTransform() == src.GetGeoTransform()
    assert osr.SpatialReference(dst.GetProjection()).IsSame(osr.SpatialReference(src.GetProjection()))
    assert (dst.RasterXSize, dst.RasterYSize) == (src.RasterXSize, src.RasterYSize)
    band = dst.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Float32 and band.GetNoDataValue() == -9999.0
    assert band.GetDescription() == "Change probability"
    meta = dst.GetMetadata()
    assert json.loads(meta["METRICCD_CONFIG"])["iterations"] == 4
    assert meta["METRICCD_SEED"] == "0" and meta["METRICCD_DEVICE"] == "cpu"
    assert meta["METRICCD_FE_BANDS"] == result.fe_bands == "1,2,3 (first bands)"  # no wavelengths
    assert float(meta["METRICCD_THRESHOLD"]) == pytest.approx(result.threshold)
    assert (tmp_path / "p.qml").is_file()
    assert json.loads(result.to_json())["output_path"] == str(out)
    assert len(result.history["total"]) == 4


@pytest.mark.parametrize("mode, coarse", [("scene", False), ("per-tile", False), ("scene", True),
                                          ("per-tile", True)])
def test_planted_changes_found_in_both_tiled_modes(pair, tmp_path, mode, coarse):
    """Also with the map predicted at the training scale (``coarse``), whose tiles overlap by
    the receptive field in full-size pixels."""
    out = str(tmp_path / "p.tif")
    options = PipelineOptions(mode=mode, tile_size=96, train_crop=64)
    detect_change(pair.before, pair.after, out, options=options, config=config(
        iterations=20, width=16, depth=4, predict_at_train_scale=coarse))
    p = read(out)
    assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1
    assert roc_auc(p, truth(pair)) > 0.9


def test_mask_polygons_min_area_and_threshold(pair, tmp_path):
    mask, polygons = tmp_path / "m.tif", tmp_path / "c.gpkg"
    options = PipelineOptions(mask_path=str(mask), polygons_path=str(polygons), threshold=0.5)
    result = detect_change(pair.before, pair.after, str(tmp_path / "p.tif"), config=config(),
                           options=options)
    m = read(str(mask))
    assert set(np.unique(m)) <= {0, 1} and result.threshold == 0.5
    assert result.changed_fraction == pytest.approx((m == 1).mean(), abs=1e-6)
    vector = gdal.OpenEx(str(polygons))  # keep a reference: the layer dies with its dataset
    layer = vector.GetLayer(0)
    assert layer.GetFeatureCount() > 0 and layer.GetLayerDefn().GetFieldIndex("mean_prob") >= 0
    smallest = min(f.GetGeometryRef().GetArea() for f in layer)
    big = PipelineOptions(mask_path=str(tmp_path / "m2.tif"), threshold=0.5,
                          min_area=smallest * 1.01, min_area_unit="map")
    detect_change(pair.before, pair.after, str(tmp_path / "p2.tif"), config=config(), options=big)
    assert (read(str(tmp_path / "m2.tif")) == 1).sum() < (m == 1).sum()


def test_polygons_without_mask_leave_no_temporary_mask(pair, tmp_path):
    options = PipelineOptions(polygons_path=str(tmp_path / "c.gpkg"))
    detect_change(pair.before, pair.after, str(tmp_path / "p.tif"), config=config(), options=options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.gpkg", "c.qml", "p.qml", "p.tif"]


def test_cancel_leaves_nothing_behind(pair, tmp_path):
    seen: list[float] = []
    with pytest.raises(Cancelled):
        detect_change(pair.before, pair.after, str(tmp_path / "p.tif"), config=config(iterations=50),
                      options=PipelineOptions(mask_path=str(tmp_path / "m.tif")),
                      progress=lambda p, m: seen.append(p), is_cancelled=lambda: len(seen) > 5)
    assert list(tmp_path.iterdir()) == []
    assert seen == sorted(seen)


def test_nodata_is_nodata_in_every_output(tmp_path):
    pair = write_demo_pair(tmp_path, size=96, seed=1)
    ds = gdal.Open(pair.before, gdal.GA_Update)
    block = np.zeros((20, 30), np.uint16)
    for b in range(1, 4):
        ds.GetRasterBand(b).SetNoDataValue(0)
        ds.GetRasterBand(b).WriteArray(block, 10, 10)
    ds = None
    options = PipelineOptions(mask_path=str(tmp_path / "m.tif"))
    detect_change(pair.before, pair.after, str(tmp_path / "p.tif"), config=config(), options=options)
    p, m = read(str(tmp_path / "p.tif")), read(str(tmp_path / "m.tif"))
    assert (p[10:30, 10:40] == -9999).all() and (m[10:30, 10:40] == 255).all()
    assert (p[50:, 50:] != -9999).all()


def test_feature_fusion_leaves_a_flat_unchanged_area_unmarked(tmp_path):
    # D-FE's features are standardised per tile: a featureless tile's noise must not become
    # change. The evidence gate (on in every preset) is what keeps it out of the mask.
    before, after, planted = synthetic_pair(size=128, bands=3, seed=3)
    rng = np.random.default_rng(0)
    water = np.array([0.08, 0.12, 0.15], np.float32)[:, None, None]
    paths = [str(tmp_path / "b.tif"), str(tmp_path / "a.tif")]
    for path, gain, image in zip(paths, (1.0, 1.05), (before, after)):
        flat = water * gain + rng.normal(0, 0.01, (3, 128, 128)).astype(np.float32)
        gdal_array.SaveArray(np.concatenate([flat, image], axis=2), path, "GTiff")
    out = str(tmp_path / "p.tif")
    cfg = config(weights=offline_weights() or "random", gate=1.0, feature_fusion=1.0, iterations=10)
    result = detect_change(*paths, out, config=cfg, options=PipelineOptions(tile_size=64))
    p = read(out)
    assert (p[:, :128] > result.threshold).mean() < 0.01
    assert roc_auc(p[:, 128:], planted) > 0.9


def test_feature_extractor_bands_follow_the_presets_rule(landsat_like_pair, tmp_path):
    paths, maps = landsat_like_pair, {}
    for rule in ("wavelength", "first"):
        out = str(tmp_path / f"{rule}.tif")
        result = detect_change(*paths, out, config=config(fe_band_rule=rule))
        assert gdal.Open(out).GetMetadataItem("METRICCD_FE_BANDS") == result.fe_bands
        maps[rule] = read(out)
        assert result.fe_bands == {"wavelength": "5,4,3 (swir1-nir-red by wavelength)",
                                   "first": "1,2,3 (first bands)"}[rule]
    assert not np.allclose(maps["wavelength"], maps["first"])  # D-FE saw other bands
    assert MetricCDConfig.preset("paper").fe_band_rule == "first"  # the published demo's
    with pytest.raises(InputError, match="fe_band_rule"):
        MetricCDConfig(fe_band_rule="colour")


def test_same_seed_same_output(pair, tmp_path):
    for name in ("a.tif", "b.tif"):
        detect_change(pair.before, pair.after, str(tmp_path / name), config=config(seed=7))
    np.testing.assert_array_equal(read(str(tmp_path / "a.tif")), read(str(tmp_path / "b.tif")))


def test_inputs_are_never_modified_or_overwritten(pair, tmp_path):
    before = Path(pair.before).read_bytes()
    with pytest.raises(InputError, match="input"):
        detect_change(pair.before, pair.after, pair.before, config=config())
    with pytest.raises(InputError, match="own file"):
        detect_change(pair.before, pair.after, str(tmp_path / "p.tif"), config=config(),
                      options=PipelineOptions(mask_path=str(tmp_path / "p.tif")))
    assert Path(pair.before).read_bytes() == before


def test_batched_scene_prediction_gives_the_same_map(tmp_path, monkeypatch):
    from metric_change_detection.core.engine import Engine

    pair = write_demo_pair(tmp_path, size=200, seed=4)
    ds = gdal.Open(pair.before, gdal.GA_Update)
    for b in range(1, 4):  # the first tiles hold no valid pixel at all
        ds.GetRasterBand(b).SetNoDataValue(0)
        ds.GetRasterBand(b).WriteArray(np.zeros((120, 120), np.uint16), 0, 0)
    ds = None
    options = PipelineOptions(tile_size=64, train_crop=64)
    single = str(tmp_path / "single.tif")
    detect_change(pair.before, pair.after, single, config=config(), options=options)
    assert Engine(config(), 3).tile_batch(64) == 1  # no batching on a CPU

    calls = []
    predict_many = Engine.predict_many
    monkeypatch.setattr(Engine, "tile_batch", lambda self, size: 3)
    monkeypatch.setattr(Engine, "predict_many", lambda self, tiles: calls.append(len(tiles))
                        or predict_many(self, tiles))
    batched = str(tmp_path / "batched.tif")
    detect_change(pair.before, pair.after, batched, config=config(), options=options)
    assert max(calls) == 3 and min(calls) >= 1
    # The posterior is steep where the test decides, so float rounding of the logits (one
    # tile or three in a batch) moves a probability by up to ~1e-5; the mask is the same.
    np.testing.assert_allclose(read(batched), read(single), atol=1e-4)
    assert (read(batched)[:60, :60] == -9999).all()


def test_tile_batch_fills_an_eighth_of_free_accelerator_memory(monkeypatch):
    import torch
    from metric_change_detection.core.engine import Engine

    engine = Engine(config(width=16), 3)
    engine.device = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8 * 2**30, 16 * 2**30))
    assert engine.tile_batch(512) == 16  # 1 GiB / (4 activations x 16 ch x 512² x 4 bytes)
    assert engine.tile_batch(8192) == 1
    ensemble = Engine(config(width=16, ensemble=2), 3)
    ensemble.device = torch.device("cuda")
    assert ensemble.tile_batch(512) == 8  # two members: twice the channels
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**40, 2**40))
    assert engine.tile_batch(512) == 64
