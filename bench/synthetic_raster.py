"""One generated GeoTIFF pair for the large-scene benchmarks (bounded memory).

Smooth per-band texture, seeded pixel noise, squares of 8-96 px (about 8 % of the pixels) with a
new spectrum in the after-date, and a per-band gain/offset between the dates; written block by
block, so any size fits in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

BLOCK = 1024


def write_pair(
    folder: Path, size: int, bands: int = 3, seed: int = 0, truth: bool = False
) -> Tuple[str, ...]:
    """Write ``before.tif`` and ``after.tif`` (uint16) in ``folder``, and ``truth.tif`` if asked.

    Returns their paths in that order.
    """
    from osgeo import gdal, osr

    gdal.UseExceptions()
    rng = np.random.default_rng(seed)
    count = max(4, size * size // 30_000)
    sides = rng.integers(8, 96, count)
    corners = rng.integers(0, size - 96, (count, 2))
    shift = rng.uniform(0.25, 0.4, (count, bands)) * rng.choice([-1.0, 1.0], (count, bands))
    gain, offset = rng.uniform(0.85, 1.15, bands), rng.uniform(-0.05, 0.05, bands)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    names = ("before", "after") + (("truth",) if truth else ())
    options = ["TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "COMPRESS=DEFLATE", "PREDICTOR=2",
               "BIGTIFF=IF_SAFER"]
    datasets = []
    for name in names:
        count_bands, kind = (1, gdal.GDT_Byte) if name == "truth" else (bands, gdal.GDT_UInt16)
        ds = gdal.GetDriverByName("GTiff").Create(
            str(folder / f"{name}.tif"), size, size, count_bands, kind, options
        )
        ds.SetGeoTransform((500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0))
        ds.SetProjection(srs.ExportToWkt())
        datasets.append(ds)
    for row in range(0, size, BLOCK):
        for col in range(0, size, BLOCK):
            h, w = min(BLOCK, size - row), min(BLOCK, size - col)
            y, x = np.mgrid[row:row + h, col:col + w].astype(np.float32)
            local = np.random.default_rng([seed, row, col])
            before = np.empty((bands, h, w), np.float32)
            for b in range(bands):
                texture = np.sin(x / (37.0 + 11 * b)) * np.cos(y / (53.0 + 7 * b))
                before[b] = 0.35 + 0.1 * b + 0.12 * texture
            after = before.copy()
            changed = np.zeros((h, w), np.uint8)
            for (r0, c0), side, delta in zip(corners, sides, shift):
                rs, re = max(r0, row), min(r0 + side, row + h)
                cs, ce = max(c0, col), min(c0 + side, col + w)
                if rs < re and cs < ce:
                    after[:, rs - row:re - row, cs - col:ce - col] += delta[:, None, None]
                    changed[rs - row:re - row, cs - col:ce - col] = 1
            after = after * gain[:, None, None] + offset[:, None, None]
            for ds, image in zip(datasets, (before, after)):
                noisy = image + local.normal(0.0, 0.015, image.shape).astype(np.float32)
                values = np.clip(noisy, 0.0, 1.0) * 10000
                ds.WriteRaster(col, row, w, h, values.astype(np.uint16).tobytes(),
                               band_list=list(range(1, bands + 1)))
            if truth:
                datasets[2].GetRasterBand(1).WriteArray(changed, col, row)
    for ds in datasets:
        ds.FlushCache()
    datasets.clear()
    return tuple(str(folder / f"{name}.tif") for name in names)
