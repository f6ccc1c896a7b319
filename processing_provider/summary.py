"""What a run's outputs add up to: polygon count, changed area in map units and hectares.

GDAL/OGR only (no qgis import): shared by the algorithms' log and outputs and the HTML report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from osgeo import gdal, ogr

_ROWS = 1024  # rows per read when counting pixels


@dataclass(frozen=True)
class ChangeSummary:
    """Changed area (square map units; pixels on a grid without georeferencing), its hectares
    (None unless the CRS is projected), the polygon count (None without polygons) and units."""

    area: float
    hectares: Optional[float]
    polygons: Optional[int]
    units: str

    def in_words(self) -> str:
        """E.g. "Changed area: 3.42 ha (34,200 m²); 17 change polygons"."""
        area = f"{_number(self.area)} {self.units}"
        text = f"Changed area: {_number(self.hectares, 4)} ha ({area})" if self.hectares is not None \
            else f"Changed area: {area}"
        if self.polygons is not None:
            text += f"; {self.polygons} change polygon{'s' if self.polygons != 1 else ''}"
        return text


def _number(value: float, digits: int = 6) -> str:
    """From 1,000 on or whole, with thousands separators ("4,953,300"), else ``digits``
    significant digits ("495.3"): never an exponent."""
    if abs(value) >= 1000 or value == round(value):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def pixel_area(ds: gdal.Dataset) -> float:
    """Area of one pixel in square map units (1 for a raster without a geotransform)."""
    gt = ds.GetGeoTransform(can_return_null=True)
    if gt is None:
        return 1.0
    return abs(gt[1] * gt[5] - gt[2] * gt[4])


def area_units(ds: gdal.Dataset) -> Tuple[str, Optional[float]]:
    """The unit of areas on ``ds``'s grid and square metres per unit (None: not projected)."""
    srs = ds.GetSpatialRef()
    if ds.GetGeoTransform(can_return_null=True) is None or srs is None:
        return "pixels", None
    if srs.IsProjected():
        metres = srs.GetLinearUnits()
        name = "m²" if abs(metres - 1.0) < 1e-9 else f"square {srs.GetLinearUnitsName()}"
        return name, metres * metres
    return f"square {srs.GetAngularUnitsName() or 'map units'}", None


def count_pixels(path: str, value: Optional[int] = None) -> int:
    """Pixels of band 1 equal to ``value`` (None: every valid pixel), read in strips."""
    ds = gdal.Open(str(path))
    band = ds.GetRasterBand(1)
    check = band.GetMaskBand() if value is None else band
    total = 0
    for row in range(0, ds.RasterYSize, _ROWS):
        rows = min(_ROWS, ds.RasterYSize - row)
        block = check.ReadAsArray(0, row, ds.RasterXSize, rows)
        total += int(np.count_nonzero(block > 0 if value is None else block == value))
    return total


def polygon_count(path: str) -> int:
    """Number of features in the change polygons GeoPackage."""
    source = ogr.Open(str(path))
    return int(source.GetLayer(0).GetFeatureCount())


def summarise(
    probability: str, changed_fraction: float, mask: Optional[str] = None,
    polygons: Optional[str] = None,
) -> ChangeSummary:
    """The changed area of a run: the mask's change pixels (or ``changed_fraction`` of the
    probability's valid pixels without a mask) times the pixel area, and the polygon count."""
    ds = gdal.Open(str(probability))
    if mask:
        pixels = count_pixels(mask, 1)
    else:
        pixels = round(float(changed_fraction) * count_pixels(probability))
    units, square_metres = area_units(ds)
    area = pixels * (pixel_area(ds) if units != "pixels" else 1.0)
    hectares = area * square_metres / 1e4 if square_metres else None
    count = polygon_count(polygons) if polygons else None
    return ChangeSummary(area=float(area), hectares=hectares, polygons=count, units=units)
