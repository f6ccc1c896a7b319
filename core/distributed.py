"""Tiles computed on a Dask cluster, streamed back to the pipeline in window order.

When ``PipelineOptions.dask_scheduler`` (the address of a running cluster) or
``PipelineOptions.dask_workers`` (start a local cluster of that many worker processes for the
run) is set, the pipeline opens :func:`cluster_client` before any work (an unreachable
scheduler fails at once, not after the optimisation) and iterates :func:`compute_tiles`. The
scene's :class:`~.tile_task.TileTask` (paths, radiometric scaling, settings and, in scene mode,
the trained D-CPG weights) is scattered to every worker once; each tile is one task running
:func:`~.tile_task.compute_tile`, which reads its window straight from the inputs through GDAL.
The inputs must therefore be readable under the same path by every worker: a shared file
system, or a GDAL virtual path such as ``/vsis3/bucket/key.tif`` or ``/vsicurl/https://...``.

Results are fetched in window order with a bounded number of tasks in flight, so the client
holds at most a few tiles at a time. A worker that dies is replaced (local cluster) and its
tasks are recomputed elsewhere (``retries`` plus the scheduler's own recovery), so the output
is complete and identical. Cancel stops submitting, cancels every pending task and raises
:class:`Cancelled`; a per-tile optimisation already running on a worker stops at its next
iteration.

Device: each worker builds its engine with ``config.device``; ``"auto"`` picks the worker's
own GPU when torch sees one, else its CPU. Run one single-threaded worker per GPU (e.g.
``CUDA_VISIBLE_DEVICES=i dask worker ... --nthreads 1``, or dask-cuda's ``LocalCUDACluster``).

Dask is optional: it is imported only here, and only when a cluster is asked for.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .errors import Cancelled, InputError, MetricCDError, MissingDependency

log = logging.getLogger(__name__)

DASK_VERSION = "2026.8.0"
INSTALL_COMMAND = f'python -m pip install "dask[distributed]=={DASK_VERSION}"'
CONNECT_TIMEOUT = 10.0  # seconds to reach an existing scheduler
RETRIES = 2  # extra attempts of a tile whose task failed (a lost worker is recovered anyway)
POLL = 0.25  # seconds between cancel checks while waiting for a tile
RESIZE = 5.0  # seconds between looks at the cluster's size (workers may join or leave)
WORKER_GDAL_CACHE_MB = "128"  # GDAL block cache of a local worker unless GDAL_CACHEMAX is set

TileResult = Tuple[Any, np.ndarray, Dict[str, List[float]]]
SCHEMES = ("tcp", "tls", "ucx", "ws", "wss")  # protocols of a scheduler reachable by address
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    return bool(_HOSTNAME.fullmatch(host))


def check_address(address: str) -> str:
    """The scheduler ``address`` stripped; InputError unless it reads ``[PROTOCOL://]HOST:PORT``.

    Checked before connecting: a malformed address makes Dask's client hang on exit.
    """
    text = str(address).strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    host, _, port = rest.rpartition(":")
    if not (scheme.lower() in SCHEMES and _valid_host(host) and port.isdigit()
            and 1 <= int(port) <= 65535):
        raise InputError(
            f"The Dask scheduler address {text!r} is not valid; write it as PROTOCOL://HOST:PORT "
            f"with protocol {', '.join(SCHEMES)} (e.g. tcp://10.0.0.5:8786, as "
            "'dask scheduler' prints it)."
        )
    return text


def _import_distributed():
    """The ``distributed`` module, or :class:`MissingDependency` with the install command."""
    try:
        import distributed
    except ImportError:
        raise MissingDependency(
            "Running on a Dask cluster needs the packages 'dask' and 'distributed'. Install "
            f"them into the Python that runs this program: {INSTALL_COMMAND} (or run without "
            "a Dask scheduler address / Dask workers).",
            name="distributed",
        ) from None
    return distributed


@contextmanager
def cluster_client(options) -> Iterator[Any]:
    """A client of the cluster ``options`` name, closed (with any local cluster) on exit.

    Raises:
        MissingDependency: Dask is not installed.
        InputError: The address is malformed, or the scheduler cannot be reached (bounded
            wait).
    """
    address = check_address(options.dask_scheduler) if options.dask_scheduler else None
    distributed = _import_distributed()
    if address:
        client = _connect(distributed, address)
        try:
            yield client
        finally:
            client.close()
        return
    with _local_cluster(distributed, options.dask_workers) as cluster:
        client = distributed.Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()


def _connect(distributed, address: str):
    """A client of the scheduler at ``address``, or :class:`InputError` within the timeout."""
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except Exception as exc:  # OSError, TimeoutError, ValueError for a malformed address
        raise InputError(
            f"Cannot reach the Dask scheduler at {address!r} within {CONNECT_TIMEOUT:g} s "
            f"({type(exc).__name__}: {exc}). Start one with 'dask scheduler' (it prints its "
            "address, e.g. tcp://HOST:8786) and workers with 'dask worker tcp://HOST:8786', "
            "check the address and the firewall, or use local workers instead."
        ) from None


@contextmanager
def _local_cluster(distributed, workers: int) -> Iterator[Any]:
    """``workers`` single-threaded worker processes on this machine, for one run."""
    import dask

    # The nanny writes its worker variables (OMP_NUM_THREADS=1, ...) into this process's
    # environment before spawning a worker; put back what was there at once (the client fits
    # the scene with every core meanwhile) and again when the cluster is closed.
    environ = "distributed.nanny.pre-spawn-environ"
    keys = [*dask.config.get(environ), "PYTHONHASHSEED", "GDAL_CACHEMAX"]
    saved = {key: os.environ.get(key) for key in keys}
    # Dask's default MALLOC_TRIM_THRESHOLD_ sends every large tensor through mmap in the
    # workers (measured: 1.5-2x the CPU time per tile); leave malloc alone. GDAL's default
    # block cache (5 % of RAM per process) grew each worker to 3 GB on a 20,000² pair; a
    # worker reads one window at a time, so a small cache is enough.
    settings = {f"{environ}.MALLOC_TRIM_THRESHOLD_": None,
                f"{environ}.GDAL_CACHEMAX": os.environ.get("GDAL_CACHEMAX", WORKER_GDAL_CACHE_MB)}
    try:
        with dask.config.set(settings):
            try:
                cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address=":0", scheduler_kwargs={"dashboard": False},
                    silence_logs=logging.ERROR,
                )
            except Exception as exc:
                raise MetricCDError(
                    f"Could not start {workers} local Dask worker processes ({type(exc).__name__}: "
                    f"{exc}). They are started like multiprocessing's 'spawn': run from the "
                    "metric-cd command or a script file whose entry point is guarded by "
                    "\"if __name__ == '__main__':\", or start a cluster ('dask scheduler', "
                    "'dask worker ADDRESS') and pass its address instead."
                ) from exc
            finally:
                _restore(saved)
        try:
            yield cluster
        finally:
            cluster.close()
    finally:
        _restore(saved)


def _restore(environment: Dict[str, Optional[str]]) -> None:
    """Set (or unset, for None) these environment variables."""
    for key, value in environment.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def compute_tiles(
    task, windows: List, client, is_cancelled: Optional[Callable[[], bool]] = None
) -> Iterator[TileResult]:
    """Compute ``task`` on every window on a Dask cluster; yield results in window order.

    Args:
        task: The scene's :class:`~.tile_task.TileTask` (scattered to every worker once).
        windows: Windows to compute, in the order the results must come back.
        client: A client from :func:`cluster_client`.
        is_cancelled: Checked while waiting for every tile.

    Yields:
        ``(window, change probability, loss history)`` per window, in the order of ``windows``.

    Raises:
        Cancelled: ``is_cancelled()`` became true; pending tasks are cancelled.
    """
    distributed = _import_distributed()
    is_cancelled = is_cancelled or (lambda: False)
    run = uuid.uuid4().hex[:12]
    if not client.nthreads():
        log.info("The Dask cluster has no worker yet; the tiles wait until workers join.")
    shared = client.scatter(task, broadcast=True, hash=False)
    pending: Deque[Tuple[Any, Any]] = deque()
    submitted, ahead, sized = 0, 0, -RESIZE
    try:
        while pending or submitted < len(windows):
            if time.monotonic() - sized >= RESIZE:
                # Tasks in flight: every worker thread busy, finished tiles waiting on the
                # workers (not here) bounded.
                ahead = 2 * max(1, sum(client.nthreads().values())) + 4
                sized = time.monotonic()
            while submitted < len(windows) and len(pending) < ahead:
                window = windows[submitted]
                future = client.submit(
                    _run_tile, shared, window, run, key=f"metric-cd-{run}-{submitted}",
                    retries=RETRIES, pure=False, priority=-submitted,
                )
                pending.append((window, future))
                submitted += 1
            window, future = pending[0]
            values, history = _result(future, window, is_cancelled, distributed)
            pending.popleft()
            yield window, values, history
    finally:
        # Also on cancel, errors and an abandoned generator: nothing keeps computing.
        try:
            client.cancel([f for _, f in pending] + [shared])
        except Exception as exc:  # a lost cluster must not hide the run's own outcome
            log.debug("Could not cancel the pending tiles: %s", exc)
        _forget_on_workers(client, run)


def _result(
    future, window, is_cancelled: Callable[[], bool], distributed
) -> Tuple[np.ndarray, Dict[str, List[float]]]:
    """The tile of ``future``, checking ``is_cancelled`` at least every :data:`POLL` seconds."""
    finished = threading.Event()
    future.add_done_callback(lambda _: finished.set())
    while not future.done():
        if is_cancelled():
            raise Cancelled("Cancelled by the user; no output was written.")
        finished.wait(POLL)
    if is_cancelled():
        raise Cancelled("Cancelled by the user; no output was written.")
    try:
        return future.result()
    except distributed.KilledWorker as exc:
        raise MetricCDError(
            f"A tile was lost with the {RETRIES + 1} or more workers that died computing it "
            f"({exc}); a worker most likely ran out of memory. Use a smaller tile size or give "
            "the workers more memory."
        ) from None
    except Cancelled:
        raise
    except Exception as exc:
        where = (
            f"on a Dask worker, tile at column {window.col_off}, row {window.row_off}; every "
            "worker needs the client's Python environment (torch, GDAL, this package) and must "
            "read the inputs under the same path"
        )
        if not isinstance(exc, MetricCDError):
            raise MetricCDError(f"{type(exc).__name__}: {exc} [{where}]") from exc
        try:
            error = type(exc)(f"{exc} [{where}]")
        except Exception:  # an error type with another signature: keep it as it is
            raise exc from None
        raise error from None


# ---------------------------------------------------------------------------------- workers
_lock = threading.Lock()
_current: Dict[str, Optional[str]] = {"run": None}


def _run_tile(task, window, run: str) -> Tuple[np.ndarray, Dict[str, List[float]]]:
    """What a worker runs for one tile: :func:`compute_tile`, one tile at a time per process.

    The cached pair and engine are dropped when a new run starts in this process, so a
    long-lived worker never reuses another run's resources; tiles of one process are
    serialised because they share that cached engine.
    """
    from . import tile_task

    with _lock:
        if _current["run"] != run:
            tile_task.release()
            _current["run"] = run
        return tile_task.compute_tile(task, window, _cancel_check())


def _cancel_check() -> Callable[[], bool]:
    """True once the scheduler released the task this worker thread is running."""
    try:
        from distributed import get_worker
        from distributed.worker import thread_state

        worker, key = get_worker(), thread_state.key
    except Exception:  # not on a worker (direct call): never cancelled
        return lambda: False

    def cancelled() -> bool:
        task_state = worker.state.tasks.get(key)
        return task_state is None or task_state.state in ("cancelled", "released", "forgotten")

    return cancelled


def _forget(run: str) -> None:
    """Free the cached pair and engine (and accelerator memory) of ``run`` in this process."""
    from . import tile_task

    if not _lock.acquire(blocking=False):  # a tile is running; the next run releases instead
        return
    try:
        if _current["run"] == run:
            tile_task.release()
            _current["run"] = None
    finally:
        _lock.release()


def _forget_on_workers(client, run: str) -> None:
    """Let the workers of a shared cluster free what this run cached (best effort)."""
    try:
        client.run(_forget, run, on_error="ignore")
    except Exception as exc:  # a dying cluster must not hide the run's own outcome
        log.debug("Could not release the workers' caches: %s", exc)
