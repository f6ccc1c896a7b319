"""Property-based fuzzing of opening and aligning raster pairs (issue 19).

Random sizes, band counts, data types, nodata values, masks, geotransforms and CRSs, written
with GDAL to a temporary folder: every pair either opens (and reads with finite values where
valid) or raises the project's own error with a one-line message, never another exception.
Bounded: few, derandomised examples with a deadline each, so CI stays fast and repeatable.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from metric_change_detection.core.errors import MetricCDError  # noqa: E402
from metric_change_detection.core.raster_io import open_pair  # noqa: E402
from metric_change_detection.core.tiling import Window  # noqa: E402
from osgeo import gdal, osr  # noqa: E402

gdal.UseExceptions()

TYPES = {
    "Byte": gdal.GDT_Byte, "UInt16": gdal.GDT_UInt16, "Int16": gdal.GDT_Int16,
    "UInt32": gdal.GDT_UInt32, "Int32": gdal.GDT_Int32, "Float32": gdal.GDT_Float32,
    "Float64": gdal.GDT_Float64, "CInt16": gdal.GDT_CInt16,
}
FLOATS = ("Float32", "Float64")


@st.composite
def raster_specs(draw) -> Dict[str, Any]:
    """What one raster of a pair looks like."""
    dtype = draw(st.sampled_from(sorted(TYPES)))
    spec: Dict[str, Any] = {
        "width": draw(st.integers(24, 72)),  # below 32: too small, refused
        "height": draw(st.integers(24, 72)),
        "bands": draw(st.integers(1, 4)),
        "dtype": dtype,
        "scale": draw(st.sampled_from([1.0, 255.0, 1e4] + ([1e30, 1e302] if dtype in FLOATS else []))),
        "special": dtype in FLOATS and draw(st.booleans()),  # NaN and inf sprinkled in
        "nodata": draw(st.sampled_from([None, 0.0, 1.0] + (
            [float("nan"), float(np.finfo(np.float64).min)] if dtype in FLOATS else []))),
        "mask": draw(st.sampled_from(["none", "dataset", "alpha"])),
        "epsg": draw(st.sampled_from([None, 4326, 32633, 3857])),
        "georef": draw(st.sampled_from(["north-up"] * 4 + ["none", "rotated", "south-up"])),
        "origin": (draw(st.floats(-10.0, 10.0)), draw(st.floats(-10.0, 10.0))),
        "pixel": draw(st.sampled_from([0.001, 0.5, 1.0, 10.0, 30.0])),
        "seed": draw(st.integers(0, 2**16)),
    }
    return spec


def _geotransform(spec: Dict[str, Any]) -> Optional[tuple]:
    x, y = spec["origin"]
    size = spec["pixel"]
    if spec["epsg"] in (32633, 3857):
        x, y = 500000.0 + 1000.0 * x, 4000000.0 + 1000.0 * y
    if spec["georef"] == "none":
        return None
    if spec["georef"] == "rotated":
        return (x, size, 0.1 * size, y, 0.1 * size, -size)
    if spec["georef"] == "south-up":
        return (x, size, 0.0, y, 0.0, size)
    return (x, size, 0.0, y, 0.0, -size)


def write(path: Path, spec: Dict[str, Any]) -> str:
    """Write the raster ``spec`` describes as a GeoTIFF (with its mask); its path."""
    rng = np.random.default_rng(spec["seed"])
    count = spec["bands"] + (spec["mask"] == "alpha")
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), spec["width"], spec["height"], count, TYPES[spec["dtype"]]
    )
    gt = _geotransform(spec)
    if gt is not None:
        ds.SetGeoTransform(gt)
    if spec["epsg"] is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(spec["epsg"])
        ds.SetProjection(srs.ExportToWkt())
    shape = (spec["height"], spec["width"])
    for b in range(1, spec["bands"] + 1):
        values = rng.random(shape) * spec["scale"]
        if spec["special"]:
            values[rng.random(shape) < 0.1] = np.nan
            values[rng.random(shape) < 0.05] = np.inf
        band = ds.GetRasterBand(b)
        if spec["nodata"] is not None and not (spec["mask"] == "alpha"):
            band.SetNoDataValue(spec["nodata"])
            values[rng.random(shape) < 0.2] = spec["nodata"]
        band.WriteArray(values)
    if spec["mask"] == "alpha":
        alpha = ds.GetRasterBand(count)
        alpha.SetColorInterpretation(gdal.GCI_AlphaBand)
        alpha.WriteArray(np.where(rng.random(shape) < 0.3, 0, 255))
    elif spec["mask"] == "dataset":
        ds.CreateMaskBand(gdal.GMF_PER_DATASET)
        ds.GetRasterBand(1).GetMaskBand().WriteArray(np.where(rng.random(shape) < 0.3, 0, 255))
    ds = None
    return str(path)


@settings(max_examples=150, deadline=10_000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(before=raster_specs(), after=raster_specs(), same_grid=st.booleans(),
       same_bands=st.sampled_from([True, True, True, False]),
       resampling=st.sampled_from(["nearest", "bilinear", "cubic", "average"]))
def test_any_pair_opens_or_raises_one_line(before, after, same_grid, same_bands, resampling):
    if same_grid:  # many real pairs share the grid: exercise the direct reads as much
        after = {**after, **{k: before[k] for k in ("width", "height", "epsg", "georef",
                                                   "origin", "pixel")}}
    if same_bands:
        after = {**after, "bands": before["bands"], "mask": before["mask"]}
    with tempfile.TemporaryDirectory() as folder:
        paths = [write(Path(folder) / f"{n}.tif", s) for n, s in (("b", before), ("a", after))]
        try:
            with open_pair(*paths, resampling=resampling) as pair:
                grid = pair.grid
                read = pair.read(Window(0, 0, grid.width, grid.height))
        except MetricCDError as exc:
            message = str(exc)
            assert message and "\n" not in message and "Window(" not in message, message
            event(f"refused: {' '.join(message.split()[3:7])}")
            return
    event("opened")
    assert read.before.shape == (pair.band_count, grid.height, grid.width)
    assert read.before.dtype == np.float32 and read.valid.dtype == bool
    assert read.valid.any()  # open_pair refuses pairs without a valid pixel
    for array in (read.before, read.after, read.fe_before, read.fe_after):
        assert np.isfinite(array).all()  # invalid pixels are zeroed, valid ones finite
