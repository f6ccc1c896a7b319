"""Remove small change regions from a mask that arrives in strips of rows, in one pass.

A change region (8-connected pixels of value 1) of fewer than ``min_pixels`` pixels spans fewer
than ``min_pixels`` rows, so a region still open at the bottom of what has arrived, and still
small, lies within the last ``min_pixels - 1`` rows. Everything above it is decided (a region
is kept once it has ``min_pixels`` pixels, removed once it is closed and smaller), so it is
passed on at once; only those few rows (and the last row, through which the next strip's
regions join) wait for the next strip. The result is the whole-mask
rule exactly, without writing the mask twice or reading it back.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), bool)


class StreamingSieve:
    """Sets 8-connected regions of value 1 with fewer than ``min_pixels`` pixels to 0.

    Feed full-width strips of a mask (uint8; 1 change, anything else is not change) top to
    bottom with :meth:`add`, then :meth:`close`; ``emit(rows, first_row)`` receives the sieved
    rows in order, every row exactly once, in blocks that need not match the strips given.
    """

    def __init__(self, width: int, min_pixels: int, emit: Callable[[np.ndarray, int], None]) -> None:
        self.width, self.min_pixels, self.emit = width, int(min_pixels), emit
        self._held = np.zeros((0, width), np.uint8)  # rows not passed on yet
        self._kept = np.zeros((0, width), bool)  # their pixels of regions known to be kept
        self._top = 0  # the first held row

    def add(self, strip: np.ndarray) -> None:
        """Take the next strip of rows (shape ``(rows, width)``)."""
        self._sieve(np.asarray(strip, np.uint8), last=False)

    def close(self) -> None:
        """Pass on the rows still held: every region is closed now."""
        self._sieve(np.zeros((0, self.width), np.uint8), last=True)

    def _sieve(self, strip: np.ndarray, last: bool) -> None:
        rows = np.concatenate([self._held, strip])
        if not rows.size:
            return
        labels, count = ndimage.label(rows == 1, structure=_EIGHT)
        keep = np.bincount(labels.ravel(), minlength=count + 1) >= self.min_pixels
        keep[labels[:self._kept.shape[0]][self._kept]] = True  # part of a region already kept
        keep[0] = False
        open_ = np.zeros(count + 1, bool)
        if not last:
            open_[labels[-1]] = True
        open_ &= ~keep
        open_[0] = False
        # The last row always waits: the next strip's regions join through it.
        cut = rows.shape[0] if last else rows.shape[0] - 1
        if open_.any():  # the first row that holds a pixel of an open region still small
            tail = max(0, rows.shape[0] - (self.min_pixels - 1))
            cut = tail + int(np.argmax(open_[labels[tail:]].any(axis=1)))
        remove = ~keep & ~open_
        remove[0] = False
        rows[remove[labels]] = 0
        if cut:
            self.emit(rows[:cut], self._top)
        self._held, self._kept = rows[cut:], keep[labels[cut:]]
        self._top += cut
