"""Quicklooks for the HTML report: small PNGs drawn as QGIS draws the layers (GDAL + numpy).

The two dates are stretched with QGIS's defaults for a layer without a style (estimated
statistics of the whole raster): several 8-bit bands as they are, several bands of any other
type with a cumulative-count cut of 2-98 % per band, one band from its minimum to its maximum,
or through its colour table when it has one. The probability, the mask and the polygons use
the colours and opacities of the plugin's styles (``resources/styles/*.qml``), over a white
page or, for the polygons, over the after image. Every quicklook lies on one grid: the
probability raster's extent, at most :data:`QUICKLOOK` pixels on its longest side.
"""

from __future__ import annotations

import base64
import uuid
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from osgeo import gdal, ogr

from ..core.outputs import MASK_NODATA, PIXEL_GRID_POLYGON_GT
from ..core.raster_io import Grid

QUICKLOOK = 300  # longest side of the quicklooks, pixels
SAMPLE = 250_000  # pixels QGIS reads for its estimated statistics (QgsRasterLayer's sample size)
CUT = (2.0, 98.0)  # QGIS's default cumulative-count cut for several bands, percent
STYLES = Path(__file__).resolve().parents[1] / "resources" / "styles"
Stretch = Optional[Tuple[float, float]]  # (low, high) mapped onto 0-255; None: as it is


def _rgb(text: str) -> Tuple[int, int, int]:
    """'#rrggbb' or 'r,g,b[,a]' as (r, g, b)."""
    if text.startswith("#"):
        return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    return tuple(int(v) for v in text.split(",")[:3])  # type: ignore[return-value]


@cache
def probability_ramp() -> Tuple[Tuple[float, Tuple[int, int, int], int], ...]:
    """(value, RGB, alpha) stops of the probability style's colour ramp."""
    root = ET.parse(STYLES / "probability.qml").getroot()
    return tuple((float(i.get("value")), _rgb(i.get("color")), int(i.get("alpha", 255)))
                 for i in root.iter("item"))


@cache
def mask_colour() -> Tuple[Tuple[int, int, int], float]:
    """RGB of the change class (value 1) of the mask style and the layer's opacity."""
    root = ET.parse(STYLES / "mask.qml").getroot()
    renderer = root.find(".//rasterrenderer")
    entry = next(e for e in root.iter("paletteEntry") if e.get("value") == "1")
    alpha = int(entry.get("alpha", 255)) / 255.0
    return _rgb(entry.get("color")), float(renderer.get("opacity", 1.0)) * alpha


@cache
def polygon_colours() -> Tuple[Tuple[int, int, int], float, Tuple[int, int, int]]:
    """Fill RGB, fill opacity and outline RGB of the polygons style."""
    root = ET.parse(STYLES / "polygons.qml").getroot()
    props = {p.get("k"): p.get("v") for p in root.find(".//layer").iter("prop")}
    fill = props["color"].split(",")
    return _rgb(props["color"]), int(fill[3]) / 255.0 if len(fill) > 3 else 1.0, \
        _rgb(props["outline_color"])


# --------------------------------------------------------------------------- the grid


def quicklook_grid(probability: str, size: int = QUICKLOOK) -> Grid:
    """The probability raster's extent at most ``size`` pixels on its longest side."""
    ds = gdal.Open(str(probability))
    gt = ds.GetGeoTransform(can_return_null=True)
    projection = ds.GetProjection() or ""
    if not gt or (not projection and tuple(gt) == (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)):
        gt = PIXEL_GRID_POLYGON_GT  # a pixel grid: as the polygons are traced on it
    scale = max(1.0, max(ds.RasterXSize, ds.RasterYSize) / float(size))
    width = max(1, round(ds.RasterXSize / scale))
    height = max(1, round(ds.RasterYSize / scale))
    sx, sy = ds.RasterXSize / width, ds.RasterYSize / height
    return Grid(width, height, (gt[0], gt[1] * sx, gt[2] * sy, gt[3], gt[4] * sx, gt[5] * sy),
                projection)


def _read_on_grid(path: str, grid: Grid, bands: Sequence[int], like: str):
    """``bands`` of ``path`` averaged onto ``grid`` (float64) and where they are valid.

    ``like`` is the probability raster: a source on its pixel grid (same size) is read by
    pixels; a georeferenced source is warped onto the grid's extent.
    """
    src = gdal.Open(str(path))
    ref = gdal.Open(str(like))
    if src.GetProjection() and grid.projection:
        gt = grid.geotransform
        bounds = (gt[0], gt[3] + gt[5] * grid.height, gt[0] + gt[1] * grid.width, gt[3])
        ds = gdal.Warp("", src, format="MEM", outputBounds=bounds, width=grid.width,
                       height=grid.height, dstSRS=grid.projection, resampleAlg="average",
                       multithread=False)
    elif (src.RasterXSize, src.RasterYSize) == (ref.RasterXSize, ref.RasterYSize):
        ds = gdal.Translate("", src, format="MEM", width=grid.width, height=grid.height,
                            resampleAlg="average")
    else:  # a pixel grid larger than the overlap: its top-left part, as the pipeline reads it
        ds = gdal.Translate("", src, format="MEM", srcWin=[0, 0, ref.RasterXSize, ref.RasterYSize],
                            width=grid.width, height=grid.height, resampleAlg="average")
    data = np.stack([ds.GetRasterBand(b).ReadAsArray().astype(np.float64) for b in bands])
    valid = np.ones(data.shape[1:], bool)
    for i, b in enumerate(bands):
        valid &= ds.GetRasterBand(b).GetMaskBand().ReadAsArray() > 0
        valid &= np.isfinite(data[i])
    return data, valid


# --------------------------------------------------------------------------- QGIS's stretch


def _sample(band: gdal.Band, width: int, height: int) -> np.ndarray:
    """Valid values of a decimated (nearest) read of ``band``: at most :data:`SAMPLE` pixels."""
    step = max(1.0, (width * height / float(SAMPLE)) ** 0.5)
    bw, bh = max(1, int(width / step)), max(1, int(height / step))
    values = band.ReadAsArray(buf_xsize=bw, buf_ysize=bh).astype(np.float64)
    valid = band.GetMaskBand().ReadAsArray(buf_xsize=bw, buf_ysize=bh) > 0
    return values[valid & np.isfinite(values)]


def qgis_stretch(path: str, bands: Sequence[int]) -> List[Stretch]:
    """Per band, the range QGIS stretches onto 0-255 when it loads ``path`` without a style.

    Several bands: 8-bit as they are (None), else the 2-98 % cumulative cut; one band: its
    minimum to maximum. Estimated as QGIS does, on a sample of the whole raster.
    """
    ds = gdal.Open(str(path))
    several = ds.RasterCount > 1
    stretches: List[Stretch] = []
    for b in bands:
        band = ds.GetRasterBand(b)
        if several and band.DataType == gdal.GDT_Byte:
            stretches.append(None)
            continue
        values = _sample(band, ds.RasterXSize, ds.RasterYSize)
        if not values.size:
            stretches.append((0.0, 1.0))
        elif several:
            lo, hi = np.percentile(values, CUT)
            stretches.append((float(lo), float(hi)))
        else:
            stretches.append((float(values.min()), float(values.max())))
    return stretches


def _apply(channel: np.ndarray, stretch: Stretch) -> np.ndarray:
    if stretch is None:
        return np.clip(np.round(channel), 0, 255).astype(np.uint8)
    lo, hi = stretch
    span = hi - lo if hi > lo else 1.0
    return np.clip(np.round((channel - lo) / span * 255.0), 0, 255).astype(np.uint8)


def image_rgba(path: str, bands: Sequence[int], grid: Grid, like: str) -> np.ndarray:
    """One date on ``grid`` as (4, H, W) uint8, drawn as QGIS draws it (see module doc).

    Three bands make red, green and blue; one band is grey, or coloured by its colour table.
    """
    bands = list(bands)
    data, valid = _read_on_grid(path, grid, bands, like)
    alpha = np.where(valid, 255, 0).astype(np.uint8)[None]
    table = gdal.Open(str(path)).GetRasterBand(bands[0]).GetColorTable() if len(bands) == 1 else None
    if table is not None:
        index = np.clip(np.round(np.nan_to_num(data[0])), 0, table.GetCount() - 1).astype(int)
        lut = np.array([table.GetColorEntry(i)[:3] for i in range(table.GetCount())], np.uint8)
        return np.concatenate([np.moveaxis(lut[index], -1, 0), alpha])
    stretches = qgis_stretch(path, bands)
    rgb = [_apply(data[i], stretches[i]) for i in range(len(bands))]
    if len(rgb) != 3:
        rgb = [rgb[0]] * 3
    return np.concatenate([np.stack(rgb), alpha])


# --------------------------------------------------------------------------- the outputs


def colour_probability(prob: np.ndarray) -> np.ndarray:
    """Probabilities (H, W) to RGBA uint8 with the probability style's ramp over a white page."""
    ramp = probability_ramp()
    values = np.clip(np.nan_to_num(prob, nan=0.0), 0.0, 1.0)
    stops = np.array([s[0] for s in ramp])
    rgb = np.stack([np.interp(values, stops, [s[1][i] for s in ramp]) for i in range(3)])
    alpha = np.interp(values, stops, [s[2] for s in ramp]) / 255.0
    page = 255.0 * (1.0 - alpha) + rgb * alpha
    out = np.concatenate([page, np.where(np.isfinite(prob), 255.0, 0.0)[None]])
    return np.round(out).astype(np.uint8)


def probability_rgba(probability: str, grid: Grid) -> np.ndarray:
    """The probability raster on ``grid`` (averaged), coloured as its style colours it."""
    ds = gdal.Open(str(probability))
    band = ds.GetRasterBand(1)
    values = band.ReadAsArray(buf_xsize=grid.width, buf_ysize=grid.height,
                              resample_alg=gdal.GRIORA_Average).astype(np.float64)
    nodata = band.GetNoDataValue()
    if nodata is not None:
        values[values == nodata] = np.nan
    return colour_probability(values)


def changed_share(mask: str, grid: Grid) -> np.ndarray:
    """Share of changed pixels (mask value 1) in each quicklook pixel; NaN where all nodata."""
    ds = gdal.Open(str(mask))
    band = ds.GetRasterBand(1)
    share = np.zeros((grid.height, grid.width))
    valid = np.zeros((grid.height, grid.width))
    columns = np.linspace(0, ds.RasterXSize, grid.width + 1).round().astype(int)[:-1]
    rows = np.linspace(0, ds.RasterYSize, grid.height + 1).round().astype(int)
    for y in range(grid.height):  # one quicklook row at a time: memory stays small
        raw = band.ReadAsArray(0, int(rows[y]), ds.RasterXSize, max(1, int(rows[y + 1] - rows[y])))
        share[y] = np.add.reduceat((raw == 1).sum(axis=0), columns)
        valid[y] = np.add.reduceat((raw != MASK_NODATA).sum(axis=0), columns)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid > 0, share / np.maximum(valid, 1), np.nan)


def mask_rgba(mask: str, grid: Grid) -> np.ndarray:
    """The mask on ``grid``: its style's change colour and opacity over a white page, weighted
    by the share of changed pixels (small changes stay visible, faintly); nodata grey."""
    share = changed_share(mask, grid)
    colour, opacity = mask_colour()
    weight = np.nan_to_num(share) * opacity
    rgb = np.stack([255.0 * (1.0 - weight) + c * weight for c in colour])
    rgb[:, np.isnan(share)] = 200.0
    return np.concatenate([np.round(rgb), np.full((1,) + share.shape, 255.0)]).astype(np.uint8)


def _burn(polygons: str, grid: Grid, outline: bool) -> np.ndarray:
    """Polygons of the GeoPackage burnt onto ``grid``: their area, or their outline (boolean)."""
    source = ogr.Open(str(polygons))
    layer = source.GetLayer(0)
    mem = gdal.GetDriverByName("MEM").Create("", grid.width, grid.height, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(grid.geotransform)
    srs = layer.GetSpatialRef()
    if srs is not None:
        mem.SetProjection(srs.ExportToWkt())
    if outline:
        lines = ogr.GetDriverByName("Memory").CreateDataSource("")
        edges = lines.CreateLayer("edges", srs=srs, geom_type=ogr.wkbMultiLineString)
        for feature in layer:
            geometry = feature.GetGeometryRef()
            if geometry is not None:
                edge = ogr.Feature(edges.GetLayerDefn())
                edge.SetGeometry(geometry.Boundary())
                edges.CreateFeature(edge)
        gdal.RasterizeLayer(mem, [1], edges, burn_values=[1], options=["ALL_TOUCHED=TRUE"])
    else:
        gdal.RasterizeLayer(mem, [1], layer, burn_values=[1])
    return mem.GetRasterBand(1).ReadAsArray() > 0


def polygons_rgba(polygons: str, after: np.ndarray, grid: Grid) -> np.ndarray:
    """The polygons over the after image's quicklook ``after`` (4, H, W), in their style."""
    fill, fill_opacity, outline = polygon_colours()
    out = after.astype(np.float64)
    area = _burn(polygons, grid, outline=False)
    for i in range(3):
        out[i][area] = out[i][area] * (1.0 - fill_opacity) + fill[i] * fill_opacity
    edge = _burn(polygons, grid, outline=True)
    for i in range(3):
        out[i][edge] = outline[i]
    out[3][area | edge] = 255
    return np.round(out).astype(np.uint8)


def png_data_uri(rgba: np.ndarray) -> str:
    """Encode a (bands, H, W) uint8 array as a base64 PNG data URI (GDAL's PNG driver)."""
    bands, height, width = rgba.shape
    mem = gdal.GetDriverByName("MEM").Create("", width, height, bands, gdal.GDT_Byte)
    for i in range(bands):
        mem.GetRasterBand(i + 1).WriteArray(rgba[i])
    name = f"/vsimem/metriccd_{uuid.uuid4().hex}.png"
    try:
        gdal.GetDriverByName("PNG").CreateCopy(name, mem)
        handle = gdal.VSIFOpenL(name, "rb")
        try:
            gdal.VSIFSeekL(handle, 0, 2)
            size = gdal.VSIFTellL(handle)
            gdal.VSIFSeekL(handle, 0, 0)
            data = gdal.VSIFReadL(1, size, handle)
        finally:
            gdal.VSIFCloseL(handle)
    finally:
        gdal.Unlink(name)
        if gdal.VSIStatL(name + ".aux.xml") is not None:
            gdal.Unlink(name + ".aux.xml")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
