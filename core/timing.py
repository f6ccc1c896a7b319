"""Seconds spent per stage of a run (read, fit, inference, decision, write, polygons).

Stages nest: time spent in an inner stage is charged to it alone, so within one thread the
totals add up to the time spent inside any stage. :func:`reset` starts a run; :func:`totals`
reads it. One clock per process (Dask workers keep their own); each thread keeps its own
stack, so a stage run on a background thread (reading ahead, writing behind, see
:mod:`.background`) is charged while the main thread's stage goes on, and the totals of a run
can add up to more than its wall time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Dict, Iterator, List

_totals: Dict[str, float] = {}
_lock = threading.Lock()
_local = threading.local()


def _stack() -> List[List]:
    """This thread's open stages, innermost last: ``[name, since]``."""
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _charge(name: str, seconds: float) -> None:
    with _lock:
        _totals[name] = _totals.get(name, 0.0) + seconds


def reset() -> None:
    """Forget the totals (at the start of a run)."""
    with _lock:
        _totals.clear()
    _stack().clear()


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Charge the time spent inside the block (less its inner stages) to ``name``."""
    stack, now = _stack(), time.perf_counter()
    if stack:
        _charge(stack[-1][0], now - stack[-1][1])
    entry = [name, now]
    stack.append(entry)
    try:
        yield
    finally:
        now = time.perf_counter()
        _charge(name, now - entry[1])
        stack.pop()
        if stack:
            stack[-1][1] = now


def totals() -> Dict[str, float]:
    """Seconds per stage so far, rounded to milliseconds."""
    with _lock:
        return {k: round(v, 3) for k, v in _totals.items()}
