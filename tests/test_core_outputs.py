"""Tests of thresholds, the change mask (min-area sieve) and change polygons."""

from __future__ import annotations

import numpy as np
import pytest
from metric_change_detection.core import outputs
from metric_change_detection.core.errors import InputError
from metric_change_detection.core.raster_io import AtomicRasterWriter, Grid
from metric_change_detection.core.threshold import (
    StreamingHistogram,
    binary_mask,
    otsu_from_histogram,
    otsu_threshold,
)
from metric_change_detection.core.tiling import Window
from osgeo import gdal, ogr, osr

gdal.UseExceptions()


def _wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


GRID = Grid(100, 80, (600000.0, 10.0, 0.0, 5300000.0, 0.0, -10.0), _wkt(32633))


def probability_map() -> np.ndarray:
    p = np.full((80, 100), 0.1, np.float32)
    p[10:30, 10:30] = 0.9  # 400 px block ...
    p[15, 15] = 0.2  # ... with a 1 px no-change hole
    p[50:52, 50:52] = 0.8  # 4 px blob
    p[60, 60], p[61, 61] = 0.7, 0.75  # 2 px, connected only diagonally
    p[0, 99] = 0.95  # 1 px in a corner
    p[70:75, 80:90] = np.nan  # nodata
    return p


def write_probability(path, values=None, grid=GRID):
    values = probability_map() if values is None else values
    with AtomicRasterWriter(path, grid, description="Change probability") as writer:
        writer.write(values, Window(0, 0, grid.width, grid.height))
        writer.commit()
    return str(path)


# --------------------------------------------------------------------------- thresholds


def test_otsu_separates_two_modes_and_ignores_nan():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.05, 9000), rng.normal(0.8, 0.05, 1000)])
    t = otsu_threshold(np.append(values, [np.nan, np.inf]))
    assert 0.4 < t < 0.6
    streamed = StreamingHistogram()
    for chunk in np.array_split(values, 7):
        streamed.add(chunk)
    assert streamed.otsu() == t
    assert otsu_from_histogram(streamed.hist, streamed.edges) == t
    assert streamed.count == values.size


def test_otsu_errors_and_degenerate_input():
    with pytest.raises(InputError, match="No finite values"):
        otsu_threshold(np.array([np.nan, np.nan]))
    with pytest.raises(InputError, match="No finite values"):
        StreamingHistogram().otsu()
    t = otsu_threshold(np.full(50, 0.3))
    assert not (np.full(50, 0.3) > t).any()


def test_binary_mask():
    out = binary_mask(np.array([0.1, 0.5, 0.9, np.nan]), 0.5)
    assert out.dtype == np.uint8 and out.tolist() == [0, 0, 1, 255]


# --------------------------------------------------------------------------- mask


def test_mask_without_min_area(tmp_path):
    prob = write_probability(tmp_path / "prob.tif")
    fraction = outputs.write_mask(prob, tmp_path / "mask.tif", 0.5)
    ds = gdal.Open(str(tmp_path / "mask.tif"))
    band = ds.GetRasterBand(1)
    mask = band.ReadAsArray()
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    assert ds.GetGeoTransform() == GRID.geotransform and ds.RasterXSize == 100
    assert (mask == 255).sum() == 50 and (mask == 1).sum() == 399 + 4 + 2 + 1
    assert mask[15, 15] == 0
    assert fraction == pytest.approx(406 / (8000 - 50))
    assert (tmp_path / "mask.qml").is_file()
    assert ds.GetMetadataItem("METRICCD_THRESHOLD") == "0.5"


@pytest.mark.parametrize("min_area", [0, 3])
def test_mask_fraction_counts_every_pixel_once_on_a_grid_wider_than_a_block(tmp_path, min_area):
    # 1100 columns: the blocks of the streaming passes do not divide the grid evenly
    grid = Grid(outputs.BLOCK + 76, 20, GRID.geotransform, GRID.projection)
    rng = np.random.default_rng(1)
    values = rng.random((20, grid.width)).astype(np.float32)
    values[:, -100:] = 0.99  # change where a shifted-back last block would overlap
    values[0, :7] = np.nan
    prob = write_probability(tmp_path / "prob.tif", values, grid)
    fraction = outputs.write_mask(prob, tmp_path / "mask.tif", 0.5, min_area_pixels=min_area)
    mask = gdal.Open(str(tmp_path / "mask.tif")).ReadAsArray()
    assert fraction == pytest.approx((mask == 1).sum() / (mask != 255).sum(), abs=1e-6)


def test_streamed_mask_equals_the_mask_of_the_written_score(tmp_path):
    prob = write_probability(tmp_path / "prob.tif")
    expected = outputs.write_mask(prob, tmp_path / "mask.tif", 0.5, min_area_pixels=2)
    with outputs.MaskWriter(tmp_path / "streamed.tif", GRID, 0.5, 2) as mask:
        values = probability_map()
        for rows in (slice(0, 33), slice(33, 80)):  # strips, as the pipeline's blender emits
            mask.add(values[rows], Window(0, rows.start, 100, rows.stop - rows.start))
        fraction = mask.commit()
    assert fraction == pytest.approx(expected)
    read = gdal.Open(str(tmp_path / "streamed.tif")).ReadAsArray()
    assert (read == gdal.Open(str(tmp_path / "mask.tif")).ReadAsArray()).all()


def test_an_aborted_streamed_mask_leaves_nothing(tmp_path):
    with outputs.MaskWriter(tmp_path / "m.tif", GRID, 0.5) as mask:
        mask.add(probability_map(), Window(0, 0, 100, 80))
        mask.abort()
    assert list(tmp_path.iterdir()) == []


def test_min_area_removes_only_small_change_regions(tmp_path):
    prob = write_probability(tmp_path / "prob.tif")
    fraction = outputs.write_mask(prob, tmp_path / "mask.tif", 0.5, min_area_pixels=5)
    mask = gdal.Open(str(tmp_path / "mask.tif")).ReadAsArray()
    assert mask[15, 15] == 0  # hole not filled
    assert (mask[10:30, 10:30] == 1).sum() == 399  # big region kept
    assert mask[50, 50] == 0 and mask[60, 60] == 0 and mask[0, 99] == 0  # small ones removed
    assert (mask == 255).sum() == 50
    assert fraction == pytest.approx(399 / 7950)
    # 8-connectivity: the diagonal pair is one region of 2 pixels, kept with min area 2
    outputs.write_mask(prob, tmp_path / "mask2.tif", 0.5, min_area_pixels=2)
    mask2 = gdal.Open(str(tmp_path / "mask2.tif")).ReadAsArray()
    assert mask2[60, 60] == 1 and mask2[61, 61] == 1 and mask2[0, 99] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mask.qml", "mask.tif", "mask2.qml", "mask2.tif", "prob.qml", "prob.tif"
    ]


def test_min_area_to_pixels():
    gt = GRID.geotransform  # 100 m² pixels
    assert outputs.min_area_to_pixels(0, "pixels", gt) == 0
    assert outputs.min_area_to_pixels(5, "pixels", gt) == 5
    assert outputs.min_area_to_pixels(1000, "map", gt) == 10
    assert outputs.min_area_to_pixels(1001, "map", gt) == 11
    with pytest.raises(InputError, match="pixels' or 'map'"):
        outputs.min_area_to_pixels(5, "hectares", gt)
    with pytest.raises(InputError, match="min_area"):
        outputs.min_area_to_pixels(-1, "pixels", gt)


def test_mask_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        outputs.write_mask(tmp_path / "nope.tif", tmp_path / "m.tif", 0.5)
    prob = write_probability(tmp_path / "prob.tif")
    with pytest.raises(InputError, match="does not exist; create it"):
        outputs.write_mask(prob, tmp_path / "no" / "m.tif", 0.5)


# --------------------------------------------------------------------------- polygons


def _features(path):
    ds = ogr.Open(str(path))
    layer = ds.GetLayerByName("change")
    rows = [
        (f.GetGeometryRef().Clone(), f["area"], f["mean_prob"], f["max_prob"]) for f in layer
    ]
    names = [layer.GetLayerDefn().GetFieldDefn(i).GetName()
             for i in range(layer.GetLayerDefn().GetFieldCount())]
    srs = layer.GetSpatialRef()
    return rows, names, srs


def _ids(path):
    ds = ogr.Open(str(path))
    return [f["id"] for f in ds.GetLayerByName("change")]


def _areas_by_id(path):
    ds = ogr.Open(str(path))
    return {f["id"]: f["area"] for f in ds.GetLayerByName("change")}


def test_polygons_attributes(tmp_path):
    prob = write_probability(tmp_path / "prob.tif")
    outputs.write_mask(prob, tmp_path / "mask.tif", 0.5)
    count = outputs.write_polygons(tmp_path / "mask.tif", prob, tmp_path / "change.gpkg")
    rows, names, srs = _features(tmp_path / "change.gpkg")
    assert count == len(rows) == 4  # block, blob, diagonal pair (8-connected), corner pixel
    assert names == ["id", "area", "mean_prob", "max_prob"]
    assert srs.GetAuthorityCode(None) == "32633"
    ids = _ids(tmp_path / "change.gpkg")
    assert ids == [1, 2, 3, 4]  # numbered in the order the mask is traced
    outputs.write_polygons(tmp_path / "mask.tif", prob, tmp_path / "again.gpkg")
    assert _areas_by_id(tmp_path / "again.gpkg") == _areas_by_id(tmp_path / "change.gpkg")
    by_area = sorted(rows, key=lambda r: r[1])
    assert [r[1] for r in by_area] == [100.0, 200.0, 400.0, 39900.0]
    assert by_area[1][2] == pytest.approx(0.725, abs=1e-6)  # diagonal pair
    assert by_area[1][3] == pytest.approx(0.75, abs=1e-6)
    assert by_area[3][2] == pytest.approx(0.9, abs=1e-6)  # block, hole excluded
    block = by_area[3][0]
    xmin, xmax, ymin, ymax = block.GetEnvelope()
    assert (xmin, ymax) == (600000.0 + 100, 5300000.0 - 100)
    assert (tmp_path / "change.qml").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_polygons_of_a_pixel_grid_use_pixel_units(tmp_path):
    grid = Grid(100, 80, (0.0, 1.0, 0.0, 0.0, 0.0, 1.0), "")
    prob = write_probability(tmp_path / "prob.tif", grid=grid)
    outputs.write_mask(prob, tmp_path / "mask.tif", 0.5)
    outputs.write_polygons(tmp_path / "mask.tif", prob, tmp_path / "change.gpkg")
    rows, _, srs = _features(tmp_path / "change.gpkg")
    assert srs is None or srs.GetAuthorityCode(None) is None  # GeoPackage "undefined" SRS
    assert sorted(r[1] for r in rows) == [1.0, 2.0, 4.0, 399.0]


def test_polygons_without_change_and_errors(tmp_path):
    prob = write_probability(tmp_path / "prob.tif", np.full((80, 100), 0.1, np.float32))
    outputs.write_mask(prob, tmp_path / "mask.tif", 0.5)
    assert outputs.write_polygons(tmp_path / "mask.tif", prob, tmp_path / "c.gpkg") == 0
    other = write_probability(
        tmp_path / "small.tif", np.zeros((40, 40), np.float32), Grid(40, 40, GRID.geotransform, "")
    )
    with pytest.raises(InputError, match="give the mask made from that raster"):
        outputs.write_polygons(tmp_path / "mask.tif", other, tmp_path / "d.gpkg")
    assert not (tmp_path / "d.gpkg").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_metadata_update_and_remove(tmp_path):
    prob = write_probability(tmp_path / "prob.tif")
    outputs.update_metadata(prob, {"METRICCD_THRESHOLD": "0.4"})
    assert gdal.Open(prob).GetMetadataItem("METRICCD_THRESHOLD") == "0.4"
    outputs.remove_raster(prob)
    assert list(tmp_path.iterdir()) == []


def test_finish_outputs_records_the_decision_and_undoes_everything_on_cancel(tmp_path):
    from metric_change_detection.core.config import PipelineOptions
    from metric_change_detection.core.errors import Cancelled

    prob = write_probability(tmp_path / "prob.tif")
    options = PipelineOptions(mask_path=str(tmp_path / "mask.tif"),
                              polygons_path=str(tmp_path / "change.gpkg"))
    changed = outputs.finish_outputs(
        prob, 0.5, options, GRID.geotransform, [prob], lambda: None, None, {"METRICCD_DEVICE": "cpu"}
    )
    assert changed == pytest.approx(outputs.write_mask(prob, tmp_path / "again.tif", 0.5))
    ds = gdal.Open(prob)
    assert ds.GetMetadataItem("METRICCD_THRESHOLD") == "0.5"
    assert float(ds.GetMetadataItem("METRICCD_CHANGED_FRACTION")) == pytest.approx(changed)
    assert ds.GetMetadataItem("METRICCD_DEVICE") == "cpu"
    ds = None
    assert _features(tmp_path / "change.gpkg")[0]

    for path in tmp_path.iterdir():
        path.unlink()
    prob = write_probability(tmp_path / "prob.tif")
    calls = []

    def cancel_at_the_end() -> None:  # lets the mask through, stops after the polygons
        calls.append(1)
        if len(calls) > 1:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        outputs.finish_outputs(prob, 0.5, options, GRID.geotransform, [prob], cancel_at_the_end)
    assert list(tmp_path.iterdir()) == []
