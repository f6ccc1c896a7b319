"""Tests of tiling windows and seamless blending."""

from __future__ import annotations

import numpy as np
import pytest
from metric_change_detection.core.errors import InputError
from metric_change_detection.core.tiling import (
    BlendedStripWriter,
    Window,
    blend_weights,
    tile_windows,
)


def _coverage(windows, width, height):
    count = np.zeros((height, width), int)
    for w in windows:
        count[w.slices] += 1
    return count


@pytest.mark.parametrize(
    "width,height,tile,overlap",
    [(100, 100, 32, 8), (257, 130, 64, 16), (64, 64, 64, 8), (65, 33, 32, 0), (300, 17, 50, 10)],
)
def test_tile_windows_cover_and_stay_inside(width, height, tile, overlap):
    windows = tile_windows(width, height, tile, overlap)
    assert (_coverage(windows, width, height) >= 1).all()
    for w in windows:
        assert w.col_off >= 0 and w.row_off >= 0
        assert w.col_off + w.width <= width and w.row_off + w.height <= height
        assert w.width == min(tile, width) and w.height == min(tile, height)
    rows = [w.row_off for w in windows]
    assert rows == sorted(rows)  # row-major
    assert len(set(windows)) == len(windows)


def test_tile_windows_ceil_formula_and_last_tile_shifted_back():
    windows = tile_windows(100, 50, 40, 10)  # stride 30: ceil((100-40)/30)+1 = 3 columns
    cols = sorted({w.col_off for w in windows})
    rows = sorted({w.row_off for w in windows})
    assert cols == [0, 30, 60]
    assert rows == [0, 10]  # second row shifted back from 30 to 10
    assert len(windows) == 6


def test_small_raster_gives_one_window():
    assert tile_windows(20, 10, 64, 16) == [Window(0, 0, 20, 10)]


def test_window_slices():
    w = Window(3, 5, 10, 7)
    a = np.arange(400).reshape(20, 20)
    assert a[w.slices].shape == (7, 10)
    assert a[w.slices][0, 0] == a[5, 3]


@pytest.mark.parametrize(
    "args", [(0, 10, 8, 0), (10, 10, 0, 0), (10, 10, 8, 8), (10, 10, 8, -1), (10, 10, 8.5, 1)]
)
def test_tile_windows_rejects_bad_arguments(args):
    with pytest.raises(InputError):
        tile_windows(*args)


def test_blend_weights_shape_positive_and_interior_one():
    w = blend_weights(40, 30, 8)
    assert w.shape == (40, 30) and w.dtype == np.float32
    assert (w > 0).all() and w.max() <= 1.0
    assert np.allclose(w[8:-8, 8:-8], 1.0)
    assert w[0, 0] < w[4, 4] < w[8, 8]
    assert np.allclose(w, w[::-1, ::-1])
    assert np.allclose(blend_weights(10, 10, 0), 1.0)


def _blend(image, tile, overlap, tile_values=None):
    height, width = image.shape
    out = np.full_like(image, -1.0)
    flushed = np.zeros(image.shape, int)
    blocks = []

    def sink(values, window):
        assert values.dtype == np.float32 and values.shape == (window.height, window.width)
        out[window.slices] = values
        flushed[window.slices] += 1
        blocks.append(window)

    writer = BlendedStripWriter(sink, width, height, overlap)
    for w in tile_windows(width, height, tile, overlap):
        writer.add(w, image[w.slices] if tile_values is None else tile_values(w))
    writer.close()
    assert (flushed == 1).all()  # every pixel flushed exactly once
    return out, writer, blocks


def test_constant_tiles_give_the_constant():
    image = np.full((90, 70), 0.3, np.float32)
    out, _, _ = _blend(image, 32, 8)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_smooth_image_reproduced_without_seams():
    y, x = np.mgrid[0:120, 0:100].astype(np.float32)
    image = (0.5 + 0.4 * np.sin(x / 13.0) * np.cos(y / 17.0)).astype(np.float32)
    out, _, blocks = _blend(image, 40, 12)
    np.testing.assert_allclose(out, image, atol=1e-5)
    assert len(blocks) > 1  # streamed in several row blocks


def test_disagreeing_tiles_blend_smoothly():
    # each tile predicts its own constant: the blend must vary gradually, bounded by them
    image = np.zeros((64, 128), np.float32)
    values = {}

    def tile_value(w):
        values[w] = float(len(values) % 2)
        return np.full((w.height, w.width), values[w], np.float32)

    out, _, _ = _blend(image, 64, 16, tile_value)
    assert out.min() >= 0 and out.max() <= 1
    assert np.abs(np.diff(out, axis=1)).max() < 0.2  # no hard seam


def test_invalid_pixels_come_out_nan():
    image = np.full((50, 50), 0.7, np.float32)
    image[10:20, 10:20] = np.nan
    out, _, _ = _blend(image, 24, 8)
    assert np.isnan(out[10:20, 10:20]).all()
    assert np.allclose(out[~np.isnan(image)], 0.7)


def test_uncovered_rows_are_nan():
    out = np.zeros((30, 20), np.float32)
    seen = np.zeros((30, 20), int)

    def sink(values, window):
        out[window.slices] = values
        seen[window.slices] += 1

    writer = BlendedStripWriter(sink, 20, 30, 4)
    writer.add(Window(0, 0, 20, 10), np.ones((10, 20), np.float32))
    writer.close()
    assert (seen == 1).all()
    assert np.allclose(out[:10], 1.0) and np.isnan(out[10:]).all()


def test_peak_buffer_independent_of_height():
    peaks = []
    for height in (100, 400):
        image = np.zeros((height, 60), np.float32)
        _, writer, _ = _blend(image, 32, 8)
        peaks.append(writer.peak_buffer_pixels)
    assert peaks[0] == peaks[1] <= 60 * 32


def test_writer_rejects_out_of_order_and_bad_shapes():
    writer = BlendedStripWriter(lambda v, w: None, 40, 80, 4)
    writer.add(Window(0, 40, 16, 16), np.zeros((16, 16), np.float32))
    with pytest.raises(InputError, match="row-major"):
        writer.add(Window(0, 0, 16, 16), np.zeros((16, 16), np.float32))
    with pytest.raises(InputError, match="shape"):
        writer.add(Window(0, 40, 16, 16), np.zeros((8, 16), np.float32))
    with pytest.raises(InputError, match="raster"):
        writer.add(Window(30, 40, 16, 16), np.zeros((16, 16), np.float32))
