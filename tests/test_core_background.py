"""Tests of reading ahead, writing behind, the streaming sieve and the per-thread stage clock."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from metric_change_detection.core import outputs, timing
from metric_change_detection.core.background import WriteBehind, read_ahead
from metric_change_detection.core.errors import InputError
from metric_change_detection.core.raster_io import Grid
from metric_change_detection.core.sieve import StreamingSieve
from metric_change_detection.core.tiling import Window
from scipy import ndimage


def test_read_ahead_keeps_the_order_and_reads_the_next_item_while_the_caller_works():
    started = []

    def read(i):
        started.append(i)
        return i * i

    seen = []
    for item, value in read_ahead(read, range(5)):
        time.sleep(0.02)  # the caller works; the next read is already under way
        seen.append((item, value, max(started)))
    assert [(i, v) for i, v, _ in seen] == [(i, i * i) for i in range(5)]
    assert all(latest > item for item, _, latest in seen[:-1])


def test_read_ahead_passes_an_error_on_and_stops_when_closed_early():
    def read(i):
        if i == 2:
            raise InputError("bad window 2")
        return i

    with pytest.raises(InputError, match="bad window 2"):
        list(read_ahead(read, range(5)))
    calls = []
    reads = read_ahead(lambda i: calls.append(i) or i, range(100))
    assert next(reads) == (0, 0)
    reads.close()  # waits for the read under way; the rest never start
    count = len(calls)
    time.sleep(0.05)
    assert len(calls) == count < 5


def test_write_behind_runs_the_calls_in_order_on_another_thread():
    done, threads = [], set()

    def sink(value, window):
        time.sleep(0.001)
        threads.add(threading.current_thread().name)
        done.append((value, window))

    with WriteBehind(sink, depth=2) as behind:
        for i in range(20):
            behind(i, f"w{i}")
    assert done == [(i, f"w{i}") for i in range(20)]
    assert threads == {"metriccd-write"}


def test_write_behind_raises_the_sinks_error_and_drops_the_rest_when_the_caller_fails():
    def failing(value):
        if value == 3:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with WriteBehind(failing) as behind:
            for i in range(10):
                behind(i)
                time.sleep(0.005)
    done = []
    with pytest.raises(RuntimeError, match="cancelled"):
        with WriteBehind(lambda v: (time.sleep(0.01), done.append(v))) as behind:
            for i in range(5):
                behind(i)
            raise RuntimeError("cancelled")
    assert len(done) < 5  # what still waited was dropped, not written


def test_stage_clock_charges_a_background_threads_stage_beside_the_main_one():
    timing.reset()

    def work():
        with timing.stage("write"):
            time.sleep(0.1)

    with timing.stage("inference"):
        worker = threading.Thread(target=work)
        worker.start()
        time.sleep(0.1)
        worker.join()
    totals = timing.totals()
    assert totals["write"] >= 0.09 and totals["inference"] >= 0.09


def _whole_mask_sieve(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    labels, count = ndimage.label(mask == 1, structure=np.ones((3, 3), bool))
    small = np.bincount(labels.ravel(), minlength=count + 1) < min_pixels
    small[0] = False
    out = mask.copy()
    out[small[labels]] = 0
    return out


@pytest.mark.parametrize("seed", range(40))
def test_streaming_sieve_is_the_whole_mask_rule_whatever_the_strips(seed):
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(1, 70)), int(rng.integers(1, 40))
    mask = (rng.random((height, width)) < rng.uniform(0.05, 0.7)).astype(np.uint8)
    mask[rng.random((height, width)) < 0.1] = 255
    min_pixels = int(rng.integers(2, 25))
    blocks = []
    sieve = StreamingSieve(width, min_pixels, lambda rows, top: blocks.append((top, rows.copy())))
    row = 0
    while row < height:
        step = int(rng.integers(1, 15))
        sieve.add(mask[row:row + step])
        row += step
    sieve.close()
    tops = [top for top, _ in blocks]
    assert tops == list(np.cumsum([0] + [b.shape[0] for _, b in blocks])[:-1])
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]),
                                  _whole_mask_sieve(mask, min_pixels))


def test_a_region_that_spans_every_strip_is_kept_and_the_sieve_holds_few_rows(tmp_path):
    mask = np.zeros((300, 5), np.uint8)
    mask[:, 2] = 1  # one tall region: kept, though no strip alone holds enough of it
    mask[10, 0] = 1  # a single pixel: removed
    held = []
    sieve = StreamingSieve(5, 50, lambda rows, top: held.append(top + rows.shape[0]))
    for row in range(0, 300, 7):
        sieve.add(mask[row:row + 7])
        assert not held or row + 7 - held[-1] <= 7  # it never holds more than a strip
    sieve.close()
    grid = Grid(5, 300, (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), "")
    with outputs.MaskWriter(tmp_path / "m.tif", grid, 0.5, 50) as writer:
        for row in range(0, 300, 7):
            writer.add(mask[row:row + 7].astype(np.float32), Window(0, row, 5, min(7, 300 - row)))
        assert writer.commit() == pytest.approx(300 / 1500)


def test_the_mask_takes_strips_in_order_only(tmp_path):
    grid = Grid(8, 8, (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), "")
    with outputs.MaskWriter(tmp_path / "m.tif", grid, 0.5, 4) as writer:
        with pytest.raises(InputError, match="full-width strips of rows in order"):
            writer.add(np.zeros((4, 4), np.float32), Window(0, 0, 4, 4))
        with pytest.raises(InputError, match="expected row 0"):
            writer.add(np.zeros((4, 8), np.float32), Window(0, 4, 8, 4))
