"""Seeded synthetic bi-temporal image pairs with planted changes (for demos and tests).

The scene is a patchwork of fields (a Voronoi partition, one material per field) with a
smooth texture, a few straight roads, and ``n_changes`` planted changes (rectangles and
irregular blobs) whose spectrum changes clearly. Between the dates every band also gets a
global gain/offset (a radiometric shift) and independent Gaussian noise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

EPSG = 32633
PIXEL_SIZE = 10.0
ORIGIN = (600000.0, 5300000.0)  # upper-left corner (UTM 33N, central Europe)
SCALE = 10000  # reflectance -> uint16


@dataclass(frozen=True)
class DemoPair:
    """Paths of a written demo pair."""

    before: str
    after: str
    truth: str


def _smooth_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise (FFT), standardised to zero mean and unit variance."""
    noise = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    field = np.real(np.fft.ifft2(np.fft.fft2(noise) * kernel))
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


def _spectra(rng: np.random.Generator, count: int, bands: int) -> np.ndarray:
    """``count`` smooth, material-like spectra of shape (count, bands) in about [0.05, 0.8]."""
    x = np.linspace(0.0, 1.0, bands)
    base = rng.uniform(0.1, 0.6, (count, 1))
    slope = rng.uniform(-0.4, 0.4, (count, 1))
    bump = rng.uniform(-0.15, 0.15, (count, 1)) * np.sin(
        np.pi * (x[None, :] * rng.uniform(1.0, 3.0, (count, 1)) + rng.uniform(0, 1, (count, 1)))
    )
    return np.clip(base + slope * (x[None, :] - 0.5) + bump, 0.05, 0.8)


def _parcels(rng: np.random.Generator, size: int) -> np.ndarray:
    """Label image of a Voronoi partition into field-like parcels."""
    count = int(np.clip(size * size // 2500, 6, 40))
    seeds = rng.uniform(0, size, (count, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = np.zeros((size, size), np.int32)
    best = np.full((size, size), np.inf, np.float32)
    for i, (sy, sx) in enumerate(seeds):
        d = (yy - sy) ** 2 + (xx - sx) ** 2
        closer = d < best
        labels[closer] = i
        best[closer] = d[closer]
    return labels


def _roads(rng: np.random.Generator, size: int) -> np.ndarray:
    """Boolean image of a few straight roads, 1-3 pixels wide."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    roads = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(2, 5))):
        angle = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, size, 2)
        dist = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle))
        roads |= dist < rng.uniform(0.6, 1.6)
    return roads


def _shape(rng: np.random.Generator, size: int, area: float, rect: bool) -> np.ndarray:
    """Boolean image of one rectangle or irregular blob of about ``area`` pixels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    aspect = rng.uniform(0.5, 2.0)
    h = max(3.0, min(size * 0.6, np.sqrt(area / aspect)))
    w = max(3.0, min(size * 0.6, area / h))
    cy = rng.uniform(h / 2, size - h / 2)
    cx = rng.uniform(w / 2, size - w / 2)
    if rect:
        return (np.abs(yy - cy) <= h / 2) & (np.abs(xx - cx) <= w / 2)
    # ellipse of the same area with a wobbly outline
    ry, rx = h / np.sqrt(np.pi), w / np.sqrt(np.pi)
    theta = np.arctan2((yy - cy) / ry, (xx - cx) / rx)
    radius = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    k = int(rng.integers(2, 6))
    wobble = 1.0 + 0.2 * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    return radius <= wobble


def synthetic_pair(
    size: int = 128, bands: int = 3, seed: int = 0, n_changes: int = 5
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make a seeded synthetic before/after pair with planted changes.

    Args:
        size: Width and height in pixels (at least 16).
        bands: Number of spectral bands (at least 1).
        seed: Random seed; the same arguments always give the same arrays.
        n_changes: Number of planted change regions (0 gives a pair without change).

    Returns:
        ``(before, after, truth)``: two float32 arrays of shape (bands, size, size) with values
        in [0, 1], and the boolean change map of shape (size, size). About 5-12 % of the
        pixels change when ``n_changes > 0``.
    """
    if size < 16:
        raise InputError(f"size must be at least 16 pixels, got {size}; use a larger size.")
    if bands < 1:
        raise InputError(f"bands must be at least 1, got {bands}; use 1 or more bands.")
    if n_changes < 0:
        raise InputError(f"n_changes must be 0 or more, got {n_changes}.")
    rng = np.random.default_rng(seed)

    # Background: fields with one material each, textured, plus roads.
    labels = _parcels(rng, size)
    materials = _spectra(rng, int(labels.max()) + 1, bands)
    scene = materials[labels].transpose(2, 0, 1)  # (bands, size, size)
    coarse = _smooth_field(rng, size, size / 12.0)
    for b in range(bands):
        fine = _smooth_field(rng, size, 1.5 + 0.5 * (b % 3))
        scene[b] *= 1.0 + 0.12 * coarse + 0.06 * fine
    road = _roads(rng, size)
    road_spectrum = _spectra(rng, 1, bands)[0] * 0.3 + 0.55
    scene[:, road] = road_spectrum[:, None]

    before = scene.copy()
    after = scene.copy()

    # Planted changes: rectangles and blobs, sizes drawn to cover ~6-10 % in total.
    truth = np.zeros((size, size), bool)
    if n_changes > 0:
        total = rng.uniform(0.06, 0.10) * size * size
        shares = rng.dirichlet(np.full(n_changes, 2.0)) * total
        candidates = _spectra(rng, 8 * n_changes, bands)
        for i, area in enumerate(shares):
            region = None
            for _ in range(20):  # avoid overlapping an earlier change
                region = _shape(rng, size, max(float(area), 9.0), rect=bool(i % 2 == 0))
                if not (region & truth).any():
                    break
            old = before[:, region].mean(axis=1)
            options = candidates[8 * i : 8 * (i + 1)]
            distance = np.abs(options - old[None, :]).mean(axis=1)
            new = options[int(np.argmax(distance))]
            if np.abs(new - old).mean() < 0.2:  # make the spectral change unmistakable
                new = np.clip(np.where(old > 0.4, old - 0.3, old + 0.3), 0.02, 0.95)
            texture = 1.0 + 0.05 * _smooth_field(rng, size, 2.0)[region]
            after[:, region] = new[:, None] * texture[None, :]
            truth |= region

    # Radiometric shift between the dates (per-band gain/offset) and sensor noise.
    gain = rng.uniform(0.8, 1.2, bands)[:, None, None]
    offset = rng.uniform(-0.06, 0.06, bands)[:, None, None]
    after = after * gain + offset
    before = before + rng.normal(0.0, 0.015, before.shape)
    after = after + rng.normal(0.0, 0.015, after.shape)
    before = np.clip(before, 0.0, 1.0).astype(np.float32)
    after = np.clip(after, 0.0, 1.0).astype(np.float32)
    log.debug("synthetic pair: size=%d bands=%d changed=%.3f", size, bands, truth.mean())
    return before, after, truth


def _write_tif(path: Path, array: np.ndarray, dtype: int, descriptions: List[str]) -> None:
    from osgeo import gdal, osr

    gdal.UseExceptions()
    bands, height, width = array.shape
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), width, height, bands, dtype, options=["COMPRESS=DEFLATE", "TILED=YES"]
    )
    try:
        ds.SetGeoTransform((ORIGIN[0], PIXEL_SIZE, 0.0, ORIGIN[1], 0.0, -PIXEL_SIZE))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(EPSG)
        ds.SetProjection(srs.ExportToWkt())
        for i in range(bands):
            band = ds.GetRasterBand(i + 1)
            band.WriteArray(array[i])
            band.SetDescription(descriptions[i])
    finally:
        ds = None


def write_demo_pair(
    out_dir: Union[str, Path], size: int = 256, seed: int = 0, bands: int = 3, n_changes: int = 5
) -> DemoPair:
    """Write a synthetic pair as georeferenced GeoTIFFs (EPSG:32633, 10 m pixels).

    The images are uint16 reflectance scaled by 10000 (``before.tif``, ``after.tif``); the
    truth is uint8 with 1 = change and 0 = no change (``truth.tif``).

    Args:
        out_dir: Existing or new folder to write into.
        size: Width and height in pixels.
        seed: Random seed.
        bands: Number of bands of each image.
        n_changes: Number of planted changes.

    Returns:
        The paths of the three files.
    """
    from osgeo import gdal

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    before, after, truth = synthetic_pair(size, bands, seed, n_changes)
    names = [f"Band {i + 1}" for i in range(bands)]
    pair = DemoPair(str(out / "before.tif"), str(out / "after.tif"), str(out / "truth.tif"))
    for path, image in ((pair.before, before), (pair.after, after)):
        scaled = np.round(image * SCALE).astype(np.uint16)
        _write_tif(Path(path), scaled, gdal.GDT_UInt16, names)
    _write_tif(Path(pair.truth), truth.astype(np.uint8)[None], gdal.GDT_Byte, ["Change (1)"])
    log.info("Wrote demo pair to %s", out)
    return pair
