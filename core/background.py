"""Reading ahead and writing behind: GDAL's decoding and encoding overlapped with compute.

GDAL decodes and compresses blocks with Python's lock released, so while the main thread scores
one tile, the next can be read on one thread and the finished rows written on another.
Each helper keeps the order of its items, holds at most a few of them (memory stays bounded),
passes a worker's error on to the caller, and on leaving early waits for the work in progress,
so that no GDAL dataset is used after its owner closes or discards it.
"""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


def read_ahead(read: Callable[[T], R], items: Iterable[T], depth: int = 1) -> Iterator[Tuple[T, R]]:
    """``(item, read(item))`` for every item in order, the next ``depth`` read on a background
    thread while the caller works on the current one.

    Closing the iterator early cancels the reads not started and waits for the one running.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metriccd-read")
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append((item, pool.submit(read, item)))
            if len(pending) > depth:
                item, future = pending.popleft()
                yield item, future.result()
        while pending:
            item, future = pending.popleft()
            yield item, future.result()
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True)


class WriteBehind:
    """Run ``sink(*args)`` for every call, in order, on one background thread.

    At most ``depth`` calls wait at a time (the caller blocks beyond that). Use it as a context
    manager: leaving the block normally waits for every call and raises the first error the
    sink raised (a later call raises it too, at once); leaving it with an exception drops the
    calls still waiting and waits for the one running, so the caller may then discard what the
    sink was writing.
    """

    def __init__(self, sink: Callable[..., Any], depth: int = 2) -> None:
        self._sink = sink
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metriccd-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            args = self._queue.get()
            if args is _DONE:
                return
            if self._error is None and not self._stop.is_set():
                try:
                    self._sink(*args)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    self._error = exc

    def __call__(self, *args: Any) -> None:
        self._raise()
        self._queue.put(args)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._stop.set()
        self._queue.put(_DONE)
        self._thread.join()
        if exc_type is None:
            self._raise()
