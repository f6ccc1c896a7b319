"""Tiling of a raster into overlapping windows and seamless blending of tile predictions.

Numpy only. :func:`tile_windows` covers a raster with overlapping tiles (ceil formula, the
last row/column shifted back inside); :class:`BlendedStripWriter` blends the predictions of
those tiles with a smooth window (:func:`blend_weights`) and hands every finished block of
rows to a sink, so memory stays proportional to raster width x tile size.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """A rectangle of pixels: column/row offset of its upper-left pixel and its size."""

    col_off: int
    row_off: int
    width: int
    height: int

    @property
    def slices(self) -> Tuple[slice, slice]:
        """``(row slice, column slice)`` to index a 2-D array of the whole raster."""
        return (
            slice(self.row_off, self.row_off + self.height),
            slice(self.col_off, self.col_off + self.width),
        )


def _offsets(length: int, tile: int, stride: int) -> List[int]:
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def tile_windows(width: int, height: int, tile_size: int, overlap: int) -> List[Window]:
    """Cover a ``width`` x ``height`` raster with tiles overlapping by ``overlap`` pixels.

    Tiles are listed row by row (row-major). The number of tiles per axis follows the ceil
    formula so the last partial row/column is covered; the last tile is shifted back inside
    the raster, so every tile has the full size unless the raster is smaller than a tile
    (then that axis has one tile of the raster's size).

    Args:
        width: Raster width in pixels (>= 1).
        height: Raster height in pixels (>= 1).
        tile_size: Tile width and height in pixels (>= 1).
        overlap: Overlap between neighbouring tiles in pixels (0 <= overlap < tile_size).

    Returns:
        The windows in row-major order.
    """
    for name, value in (("width", width), ("height", height), ("tile_size", tile_size)):
        if int(value) != value or value < 1:
            raise InputError(f"{name} must be a positive whole number of pixels, got {value}.")
    if int(overlap) != overlap or not 0 <= overlap < tile_size:
        raise InputError(
            f"overlap must be a whole number of pixels between 0 and tile_size - 1 "
            f"({tile_size - 1}), got {overlap}; lower the overlap or raise the tile size."
        )
    stride = tile_size - overlap
    tile_w, tile_h = min(tile_size, width), min(tile_size, height)
    cols = _offsets(width, tile_size, stride)
    rows = _offsets(height, tile_size, stride)
    return [Window(c, r, tile_w, tile_h) for r in rows for c in cols]


def _ramp(length: int, overlap: int) -> np.ndarray:
    if overlap <= 0:
        return np.ones(length, np.float32)
    edge = np.minimum(np.arange(length), np.arange(length)[::-1]).astype(np.float64)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.minimum(edge + 0.5, overlap) / overlap)
    return ramp.astype(np.float32)


def blend_weights(height: int, width: int, overlap: int) -> np.ndarray:
    """Smooth blending window of shape (height, width).

    A raised-cosine ramp over the ``overlap`` pixels next to each edge, 1 in the interior and
    strictly positive everywhere (so a pixel covered by a single tile keeps its value).
    """
    if height < 1 or width < 1 or overlap < 0:
        raise InputError(
            f"blend_weights needs a positive size and overlap >= 0, got {height}x{width}, "
            f"overlap {overlap}."
        )
    return np.outer(_ramp(height, overlap), _ramp(width, overlap)).astype(np.float32)


Sink = Callable[[np.ndarray, Window], None]


class BlendedStripWriter:
    """Blend overlapping tile predictions and stream finished rows to a sink.

    Tiles must arrive in non-decreasing ``row_off`` order (e.g. the row-major order of
    :func:`tile_windows`). Weighted sums and weights are kept only for the rows that may still
    receive tiles; once a tile starting at a lower row can no longer arrive, the block of
    rows above it is divided out and passed to ``sink(values, window)`` as float32 with NaN
    where no valid value was blended. Every pixel is flushed exactly once.

    NaN in a tile marks invalid pixels: they contribute nothing, and a pixel that no tile
    covers with a valid value comes out NaN.

    Args:
        sink: Called with ``(array2d float32, Window)`` for each finished block of rows.
        width: Raster width in pixels.
        height: Raster height in pixels.
        overlap: Blending margin in pixels (usually the tiles' overlap).
    """

    def __init__(self, sink: Sink, width: int, height: int, overlap: int) -> None:
        if width < 1 or height < 1 or overlap < 0:
            raise InputError(
                f"BlendedStripWriter needs a positive raster size and overlap >= 0, got "
                f"{width}x{height}, overlap {overlap}."
            )
        self.sink, self.width, self.height, self.overlap = sink, width, height, overlap
        self._top = 0  # first row not yet flushed
        self._sum = np.zeros((0, width), np.float32)
        self._weight = np.zeros((0, width), np.float32)
        self._closed = False
        self.peak_rows = 0  # largest number of buffered rows (memory = peak_rows x width)
        self._weights_cache: Dict[Tuple[int, int], np.ndarray] = {}

    @property
    def peak_buffer_pixels(self) -> int:
        """Largest number of pixels held in the accumulation buffer so far."""
        return self.peak_rows * self.width

    def _weights(self, height: int, width: int) -> np.ndarray:
        key = (height, width)
        if key not in self._weights_cache:
            self._weights_cache[key] = blend_weights(height, width, self.overlap)
        return self._weights_cache[key]

    def _flush(self, until: int) -> None:
        """Send rows ``[top, until)`` to the sink and drop them from the buffer."""
        until = min(until, self.height)
        count = min(until - self._top, self._sum.shape[0])
        if count > 0:
            total, weight = self._sum[:count], self._weight[:count]
            with np.errstate(invalid="ignore", divide="ignore"):
                values = np.where(weight > 0, total / np.where(weight > 0, weight, 1), np.nan)
            self.sink(values.astype(np.float32), Window(0, self._top, self.width, count))
            self._sum = self._sum[count:].copy()
            self._weight = self._weight[count:].copy()
            self._top += count
        block = max(1, self.peak_rows or 256)
        while self._top < until:  # rows that no tile reached
            count = min(block, until - self._top)
            empty = np.full((count, self.width), np.nan, np.float32)
            self.sink(empty, Window(0, self._top, self.width, count))
            self._top += count

    def add(self, window: Window, values: np.ndarray) -> None:
        """Blend one tile prediction (float 2-D, NaN = invalid) into the raster."""
        if self._closed:
            raise InputError("BlendedStripWriter is closed; create a new one to add tiles.")
        values = np.asarray(values)
        if values.shape != (window.height, window.width):
            raise InputError(
                f"Tile values have shape {values.shape} but the window is "
                f"{window.height}x{window.width}; pass one value per window pixel."
            )
        if (
            window.col_off < 0 or window.row_off < 0
            or window.col_off + window.width > self.width
            or window.row_off + window.height > self.height
        ):
            raise InputError(
                f"{window} leaves the {self.width}x{self.height} raster; use windows inside "
                "the raster (as tile_windows lists them)."
            )
        if window.row_off < self._top:
            raise InputError(
                f"Tile at row {window.row_off} arrived after rows up to {self._top} were "
                "written; add tiles in row-major order (as tile_windows lists them)."
            )
        self._flush(window.row_off)
        bottom = window.row_off + window.height - self._top
        if bottom > self._sum.shape[0]:
            grow = bottom - self._sum.shape[0]
            self._sum = np.concatenate([self._sum, np.zeros((grow, self.width), np.float32)])
            self._weight = np.concatenate([self._weight, np.zeros((grow, self.width), np.float32)])
            self.peak_rows = max(self.peak_rows, self._sum.shape[0])
        weights = self._weights(window.height, window.width)
        ok = np.isfinite(values)
        rows = slice(window.row_off - self._top, bottom)
        cols = slice(window.col_off, window.col_off + window.width)
        self._sum[rows, cols] += np.where(ok, values * weights, 0.0)
        self._weight[rows, cols] += np.where(ok, weights, 0.0)

    def close(self) -> None:
        """Flush all remaining rows (rows no tile touched come out NaN)."""
        if self._closed:
            return
        self._flush(self.height)
        self._closed = True

