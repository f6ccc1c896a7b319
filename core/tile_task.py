"""One tile's change probability from a self-contained, picklable description of the run.

:class:`TileTask` holds everything a process needs to compute any window of a scene: the
input paths and band choices, the scene-wide radiometric scaling, the settings, and — in
scene mode — the trained D-CPG weights and calibration. :func:`compute_tile` is what both
the local loop and remote workers (Dask) run, so both give the same result.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from .background import read_ahead
from .calibration import Calibrator
from .config import MetricCDConfig
from .preprocess import Scaling


@dataclass(frozen=True)
class TileTask:
    """Everything needed to compute the change probability of any window of one scene."""

    before_path: str
    after_path: str
    bands_before: Optional[Tuple[int, ...]]
    bands_after: Optional[Tuple[int, ...]]
    fe_bands: Optional[Tuple[int, ...]]
    resampling: str
    config: MetricCDConfig
    scaling: Scaling
    fe_scaling: Scaling
    band_count: int
    state: Optional[Dict[str, Any]] = None  # trained D-CPG weights (scene mode); None: fit per tile
    calibrator: Optional[Calibrator] = None
    batch_stats: bool = False  # normalise with the tile's own statistics (single-tile runs)
    batch: int = 1  # tiles per forward in scene-mode prediction (see Engine.tile_batch)
    token: str = ""  # names the trained state; set with it (copies of the task keep it)

    @property
    def key(self) -> Tuple[str, str, str]:
        """Identity of the scene-level resources a process may cache.

        Stable across copies: a worker that receives the task again (Dask may deserialise it
        anew) keeps its opened pair and engine instead of re-opening the rasters.
        """
        return (self.before_path, self.after_path, self.token)


_cache: Dict[str, Any] = {}
_lock = threading.Lock()


def _resources(task: TileTask):
    """The opened pair and an engine for ``task``, kept per process between tiles."""
    from .engine import Engine
    from .raster_io import open_pair

    with _lock:
        if _cache.get("key") != task.key or _cache.get("config") != task.config:
            _release()
            _cache["owned"] = True
            _cache["pair"] = open_pair(  # the client checked this pair already
                task.before_path, task.after_path, task.bands_before, task.bands_after,
                task.fe_bands, task.resampling, check_valid=False,
                fe_band_rule=task.config.fe_band_rule,
            )
            engine = Engine(task.config, task.band_count)
            if task.state is not None:
                engine.dcpg.load_state_dict(task.state)
                engine.calibrator = task.calibrator
            _cache.update(key=task.key, config=task.config, engine=engine)
        return _cache["pair"], _cache["engine"]


def prime(task: TileTask, pair, engine) -> None:
    """Let this process reuse an already opened pair and trained engine for ``task``."""
    with _lock:
        _release()
        _cache.update(key=task.key, config=task.config, pair=pair, engine=engine, owned=False)


def _release() -> None:
    if _cache.get("owned"):
        _cache["pair"].close()
    _cache.clear()


def release() -> None:
    """Forget the cached pair and engine (closing the pair if this module opened it)."""
    with _lock:
        _release()


def prepare_window(engine, task: TileTask, read, scale: float = 1.0, training: bool = True,
                   reuse=None):
    """Scale one :class:`PairWindow` with the scene's radiometry and move it to the device
    (``reuse``: see :meth:`Engine.prepare`)."""
    b, a = task.scaling.apply(read.before, read.after)
    fb, fa = task.fe_scaling.apply(read.fe_before, read.fe_after)
    cfg, calibrator = task.config, task.calibrator
    # Once the scene's calibrator has chosen its sharpness hypotheses, only those are computed.
    rows = calibrator.views if calibrator is not None and calibrator.evidence else None
    magnitude = (task.scaling.evidence(read.before, read.after, read.valid, cfg.gate_sharpness, rows)
                 if cfg.gate > 0 else None)
    return engine.prepare(b, a, fb, fa, read.valid, scale, training, magnitude, reuse)


def compute_tile(task: TileTask, window, is_cancelled=None,
                 read=None) -> Tuple[np.ndarray, Dict[str, List[float]]]:
    """Change probability of ``window`` (NaN where invalid) and the loss history of its fit
    (``read``: the window's :class:`PairWindow`, when the caller has read it already)."""
    pair, engine = _resources(task)
    if read is None:
        read = pair.read(window)
    if not read.valid.any():
        return np.full((window.height, window.width), np.nan, np.float32), {}
    if task.state is not None:
        tile = prepare_window(engine, task, read, training=False)
        return engine.predict(tile, batch_stats=task.batch_stats), {}
    engine.reset()
    tile = prepare_window(engine, task, read, task.config.train_scale)
    history = engine.fit([tile], None, is_cancelled)
    if task.config.train_scale != 1.0:
        tile = prepare_window(engine, task, read, training=False, reuse=tile)
        engine.calibrate([tile], batch_stats=True)
    return engine.predict(tile, batch_stats=True), history


def predict_tiles(task: TileTask, windows: Iterable) -> Iterator[Tuple[Any, np.ndarray]]:
    """(window, change probability) of every window in order, in scene mode, predicting up to
    ``task.batch`` consecutive same-sized tiles in one forward; the same maps as
    :func:`compute_tile`."""
    pair, engine = _resources(task)
    group: List[Tuple[Any, Any]] = []

    def flush() -> Iterator[Tuple[Any, np.ndarray]]:
        tiles = [prepare_window(engine, task, read, training=False) for _, read in group]
        done = list(zip([w for w, _ in group], engine.predict_many(tiles))) if tiles else []
        group.clear()
        return iter(done)

    for window, read in read_ahead(pair.read, windows):
        if group and (len(group) == task.batch or (window.height, window.width) != (
            group[0][0].height, group[0][0].width
        )):
            yield from flush()
        if read.valid.any():
            group.append((window, read))
        else:
            yield from flush()
            yield window, np.full((window.height, window.width), np.nan, np.float32)
    yield from flush()
