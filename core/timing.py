"""Seconds spent per stage of a run (read, fit, inference, decision, write, polygons).

Stages nest: time spent in an inner stage is charged to it alone, so the totals add up to
the time spent inside any stage. :func:`reset` starts a run; :func:`totals` reads it. One
clock per process (a run is one thread at a time; Dask workers keep their own).
"""

from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterator, List

_totals: Dict[str, float] = {}
_stack: List[str] = []
_since = [0.0]


def reset() -> None:
    """Forget the totals (at the start of a run)."""
    _totals.clear()
    _stack.clear()


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Charge the time spent inside the block (less its inner stages) to ``name``."""
    now = time.perf_counter()
    if _stack:
        _totals[_stack[-1]] = _totals.get(_stack[-1], 0.0) + now - _since[0]
    _stack.append(name)
    _since[0] = now
    try:
        yield
    finally:
        now = time.perf_counter()
        _totals[name] = _totals.get(name, 0.0) + now - _since[0]
        _stack.pop()
        _since[0] = now


def totals() -> Dict[str, float]:
    """Seconds per stage so far, rounded to milliseconds."""
    return {k: round(v, 3) for k, v in _totals.items()}
