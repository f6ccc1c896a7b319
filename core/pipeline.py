"""detect_change: two rasters in, a georeferenced change-probability GeoTIFF out.

Bounded memory: the pair is read and the result written window by window. ``scene`` mode
fits one D-CPG on random crops of the whole scene and applies it to every tile; ``per-tile``
mode fits a fresh D-CPG on every tile (the paper's setting). Tiles overlap by at least
D-CPG's receptive field and are blended with a smooth window, so no seams appear.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from . import timing
from .config import MetricCDConfig, PipelineOptions
from .decision import verdict
from .errors import Cancelled, InputError

log = logging.getLogger(__name__)

VERSION = "0.1.0"
Progress = Callable[[float, str], None]
IsCancelled = Callable[[], bool]

INSTALL_HINT = (
    "Install PyTorch into the Python that runs this program, e.g. "
    "'python3 -m pip install torch torchvision' (in QGIS: Plugins > Metric Change Detection > "
    "Check dependencies shows the exact command for your platform)."
)


@dataclass
class ChangeResult:
    """What a run produced."""

    output_path: str
    mask_path: Optional[str]
    polygons_path: Optional[str]
    threshold: float
    changed_fraction: float
    seconds: float
    device: str
    mode: str
    width: int
    height: int
    history: Dict[str, List[float]] = field(default_factory=dict)
    fe_bands: str = ""  # the feature extractor's bands and how they were chosen ("" for baselines)
    verdict: str = ""  # the result in words, e.g. "No significant change: ..."
    stages: Dict[str, float] = field(default_factory=dict)  # seconds per stage (core.timing)

    def to_json(self) -> str:
        """One-line JSON summary (without the loss history)."""
        summary = {k: v for k, v in asdict(self).items() if k != "history"}
        return json.dumps(summary)


class _Stages:
    """Maps the progress of successive stages onto 0-100 %."""

    def __init__(self, progress: Progress, is_cancelled: IsCancelled) -> None:
        self.progress, self.is_cancelled = progress, is_cancelled
        self.low, self.high = 0.0, 0.0

    def stage(self, high: float, message: str) -> Progress:
        self.low, self.high = self.high, high
        self.check()
        self.progress(self.low, message)

        def report(pct: float, msg: str) -> None:
            self.progress(self.low + (self.high - self.low) * pct / 100.0, msg)

        return report

    def check(self) -> None:
        if self.is_cancelled():
            raise Cancelled("Cancelled by the user; no output was written.")


def _import_torch(progress: Progress) -> None:
    """Import torch through the one guarded place (triton blocked), saying so first."""
    from .torch_import import import_seconds, import_torch, loading_message, torch_imported

    first = not torch_imported()
    progress(0.0, loading_message())
    import_torch(INSTALL_HINT)
    if first and import_seconds() is not None:
        progress(0.0, f"Loaded PyTorch in {import_seconds():.1f} s (once per session)")


def _outputs(output: str, options: PipelineOptions) -> List[str]:
    return [p for p in (output, options.mask_path, options.polygons_path) if p]


def detect_change(
    before_path: str,
    after_path: str,
    output_path: str,
    *,
    config: Optional[MetricCDConfig] = None,
    options: Optional[PipelineOptions] = None,
    progress: Optional[Progress] = None,
    is_cancelled: Optional[IsCancelled] = None,
) -> ChangeResult:
    """Run Metric-CD on two rasters and write the change-probability GeoTIFF (+ optional outputs).

    See ``docs/ARCHITECTURE.md`` for the arguments. Raises :class:`InputError`,
    :class:`MissingDependency`, :class:`WeightsError` or :class:`Cancelled`; on any error no
    output file is left behind.
    """
    from . import outputs, raster_io, tile_task

    start = time.perf_counter()
    timing.reset()
    config = config or MetricCDConfig.preset("default")
    options = options or PipelineOptions()
    stages = _Stages(progress or (lambda pct, msg: None), is_cancelled or (lambda: False))
    paths = _outputs(output_path, options)
    if len(set(map(_resolved, paths))) != len(paths):
        raise InputError("Two outputs share one path; give each output its own file name.")
    for path in paths:
        raster_io.check_output_path(path, [before_path, after_path])
    _import_torch(stages.progress)

    report = stages.stage(2, "Opening and aligning the rasters")
    with _cluster(options) as client, raster_io.open_pair(
        before_path, after_path, options.bands_before, options.bands_after, options.fe_bands,
        options.resampling, fe_band_rule=config.fe_band_rule,
    ) as pair:
        grid = pair.grid
        fe_bands = f"{pair.describe_fe_bands()} ({pair.fe_choice})"
        report(
            100,
            f"Aligned grid: {grid.width} x {grid.height} pixels, {pair.band_count} bands; feature "
            f"extractor bands {fe_bands}",
        )
        with timing.stage("fit"):
            detector = _MetricCD(pair, config, options, stages, client)
        metadata = {
            "METRICCD_VERSION": VERSION,
            "METRICCD_CONFIG": json.dumps(config.as_dict()),
            "METRICCD_MODE": options.mode,
            "METRICCD_SEED": str(config.seed),
            "METRICCD_ITERATIONS": str(config.iterations),
            "METRICCD_BEFORE": str(before_path),
            "METRICCD_AFTER": str(after_path),
            "METRICCD_FE_BANDS": fe_bands,
            **{str(k): str(v) for k, v in options.extra_metadata.items()},
        }
        try:
            histogram, device, mask = _write_probability(
                pair, detector, output_path, metadata, stages
            )
        finally:
            tile_task.release()
    threshold = mask.threshold if mask is not None else _threshold(options, histogram, detector)
    report = stages.stage(100, "Writing the change mask and polygons")
    changed = outputs.finish_outputs(
        output_path, threshold, options, grid.geotransform, [output_path], stages.check, mask,
        {"METRICCD_DEVICE": device},
    )
    said = verdict(changed, options.threshold, options.alpha)
    report(100, said)
    return ChangeResult(
        output_path=str(output_path),
        mask_path=options.mask_path,
        polygons_path=options.polygons_path,
        threshold=float(threshold),
        changed_fraction=float(changed),
        seconds=time.perf_counter() - start,
        device=device,
        mode=options.mode,
        width=grid.width,
        height=grid.height,
        history=detector.history,
        fe_bands=fe_bands,
        verdict=said,
        stages=timing.totals(),
    )


@contextlib.contextmanager
def _cluster(options: PipelineOptions) -> Iterator[Optional[object]]:
    """A Dask client when the options name a cluster, else None.

    Opened before any work, so a missing Dask or an unreachable scheduler fails at once.
    """
    if not (options.dask_scheduler or options.dask_workers):
        yield None
        return
    from .distributed import cluster_client

    with cluster_client(options) as client:
        yield client


def _resolved(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _threshold(options: PipelineOptions, histogram, detector: _MetricCD) -> float:
    """The probability above which the mask marks change."""
    rule = options.threshold
    if not isinstance(rule, str):
        return float(rule)
    if rule == "otsu":
        return histogram.otsu()
    calibrator = detector.task.calibrator
    if calibrator is None:
        if not detector.calibrated:
            raise InputError(
                "The automatic decision needs the calibrated map; use calibration 'null', or "
                "give a threshold ('otsu' or a number in (0, 1))."
            )
        return 0.5  # per-tile mode: each tile has its own calibration; its posterior 0.5
    return calibrator.threshold(options.alpha)


def _write_probability(pair, detector: _MetricCD, output_path: str, metadata, stages: _Stages):
    """Fit (scene mode) and predict every tile into an atomically written GeoTIFF.

    Returns the map's histogram (Otsu's rule only, else None), the device, and the change mask
    filled beside the map (uncommitted) when its threshold is known before the tiles (every
    rule but Otsu's), else None.
    """
    from .background import WriteBehind
    from .outputs import streaming_mask
    from .raster_io import AtomicRasterWriter
    from .threshold import StreamingHistogram
    from .tiling import BlendedStripWriter, tile_windows

    grid, options = pair.grid, detector.options
    otsu = options.threshold == "otsu"
    histogram = StreamingHistogram() if otsu else None
    with timing.stage("fit"):
        detector.fit_scene()
    mask = None if otsu else streaming_mask(
        options, output_path, grid, _threshold(options, histogram, detector)
    )
    windows = tile_windows(grid.width, grid.height, detector.tile_size, detector.overlap)
    report = detector.stages.stage(90, "Computing the change probability")
    try:
        with AtomicRasterWriter(
            output_path, grid, dtype="float32", description="Change probability",
            metadata=metadata, style="probability",
        ) as writer:

            def sink(values: np.ndarray, window) -> None:
                if histogram is not None:  # only Otsu's rule needs the whole map's histogram
                    with timing.stage("decision"):
                        histogram.add(values)
                writer.write(values, window)
                if mask is not None:
                    mask.add(values, window)

            with WriteBehind(sink) as behind:  # the rows are written while the next tiles run
                blender = BlendedStripWriter(behind, grid.width, grid.height, detector.overlap)
                with contextlib.closing(detector.tiles(windows)) as tiles, timing.stage("inference"):
                    for i, (window, values) in enumerate(tiles):
                        stages.check()
                        with timing.stage("write"):
                            blender.add(window, values)
                        report(100.0 * (i + 1) / len(windows), f"Tile {i + 1}/{len(windows)}")
                with timing.stage("write"):
                    blender.close()
            stages.check()
            writer.set_metadata({"METRICCD_DEVICE": detector.device})
            writer.commit()
    except BaseException:
        if mask is not None:
            mask.abort()
        raise
    return histogram, detector.device, mask


class _MetricCD:
    """Scene-wide pre-processing and fitting; tiles are then computed from a :class:`TileTask`."""

    def __init__(self, pair, config: MetricCDConfig, options: PipelineOptions, stages: _Stages,
                 client: Optional[object] = None):
        from .models import DCPG, select_device

        self.pair, self.config, self.options, self.stages = pair, config, options, stages
        self.client = client
        self.rng = np.random.default_rng(config.seed)
        self.history: Dict[str, List[float]] = {}
        grid = pair.grid
        self.single = grid.width <= options.tile_size and grid.height <= options.tile_size
        self.tile_size = max(grid.width, grid.height) if self.single else options.tile_size
        rf = DCPG(1, 2, config.depth).receptive_field
        if config.predict_at_train_scale:  # a coarse map's field spans more full-size pixels
            rf = int(math.ceil(rf / config.train_scale))
        self.overlap = 0 if self.single else min(-(-rf // 8) * 8, options.tile_size // 2)
        self.calibrated = config.calibration != "none"
        self.device = str(select_device(config.device))
        stages.stage(5, "Reading samples of both dates and fitting the radiometric scaling")
        self.task = self._fit_radiometry()

    def _fit_radiometry(self):
        from .preprocess import fit_scaling
        from .tile_task import TileTask

        grid, cfg, opts = self.pair.grid, self.config, self.options
        if self.single:
            windows = [_whole(grid)]
        else:
            windows = self.pair.sample_windows(min(256, grid.width, grid.height), 16, self.rng)
        reads = [self.pair.read(w) for w in windows]
        valid = np.concatenate([r.valid.ravel() for r in reads])
        if not valid.any():
            raise InputError(
                "No pixel is valid in both dates where the rasters overlap; check the nodata "
                "values, masks and that the two images cover the same place."
            )

        def stack(attr: str) -> np.ndarray:
            """Pixels of all sample windows as a (C, 1, N) array."""
            arrays = [getattr(r, attr) for r in reads]
            return np.concatenate([x.reshape(x.shape[0], -1) for x in arrays], axis=1)[:, None]

        def fit(before_attr: str, after_attr: str):
            return fit_scaling(
                stack(before_attr), stack(after_attr), valid[None],
                clip_percentiles=cfg.clip_percentiles, shared=cfg.shared_scaling,
                radiometric=cfg.radiometric_normalisation, seed=cfg.seed,
            )

        return TileTask(
            str(self.pair.before_path), str(self.pair.after_path), opts.bands_before,
            opts.bands_after, opts.fe_bands, opts.resampling, cfg, fit("before", "after"),
            fit("fe_before", "fe_after"), self.pair.band_count, batch_stats=self.single,
        )

    def fit_scene(self) -> None:
        """Scene mode (or a single tile): optimise one D-CPG before predicting the tiles."""
        from .engine import Engine
        from .tile_task import prepare_window, prime

        if self.options.mode == "per-tile" and not self.single:
            return
        grid, cfg = self.pair.grid, self.config
        weights = cfg.weights if cfg.weights in ("imagenet", "random") else "file"
        self.stages.stage(8, f"Building the networks: D-CPG and the {cfg.backbone} feature "
                             f"extractor ({weights} weights)")
        engine = Engine(self.config, self.pair.band_count)
        report = self.stages.stage(15, "Sampling training crops: reading them and running the "
                                       "feature extractor once on each")
        wanted = 1 if self.single else min(cfg.iterations, 16)
        crop = min(self.options.train_crop, grid.width, grid.height)
        windows = [_whole(grid)] if self.single else self.pair.sample_windows(
            crop, 4 * min(cfg.iterations, 16), self.rng
        )
        tiles, reads = [], []
        for window in windows:
            read = self.pair.read(window)
            if self.single or read.valid.mean() >= 0.5:
                tiles.append(prepare_window(engine, self.task, read, cfg.train_scale))
                reads.append(read)
                report(100.0 * len(tiles) / wanted,
                       f"Sampling training crops: feature extractor pass {len(tiles)}/{wanted}")
            if len(tiles) == min(cfg.iterations, 16):
                break
        if not tiles:
            raise InputError(
                "Too few valid pixels to optimise on: no training crop is at least half "
                "valid. Check nodata values, or use a smaller train crop."
            )
        report = self.stages.stage(60, f"Optimising the change-probability generator: "
                                       f"{cfg.iterations} iterations (the first also sets up "
                                       "PyTorch's kernels)")
        self.history = engine.fit(tiles, report, self.stages.is_cancelled)
        if cfg.train_scale != 1.0:  # the decision's laws at the resolution of the map
            engine.calibrate([prepare_window(engine, self.task, read, training=False, reuse=tile)
                              for read, tile in zip(reads, tiles)], batch_stats=self.single)
        if engine.calibrator is not None:
            note = engine.calibrator.describe_sharpness(cfg.gate_sharpness)
            if note:
                report(100, note)
        state = {k: v.detach().cpu() for k, v in engine.dcpg.state_dict().items()}
        self.task = replace(self.task, state=state, calibrator=engine.calibrator,
                            batch=engine.tile_batch(self.tile_size), token=uuid.uuid4().hex)
        prime(self.task, self.pair, engine)

    def tiles(self, windows: List) -> Iterator[Tuple[object, np.ndarray]]:
        """(window, change probability) for every window, in the order given.

        Computed here, or on the Dask cluster of ``client``.
        """
        from .background import read_ahead
        from .tile_task import compute_tile, predict_tiles

        if self.client is not None:
            from .distributed import compute_tiles

            results = compute_tiles(self.task, windows, self.client, self.stages.is_cancelled)
        elif self.task.state is not None and self.task.batch > 1 and not self.task.batch_stats:
            results = ((w, p, {}) for w, p in predict_tiles(self.task, windows))
        else:  # the next window is read while this one is computed
            results = (
                (w, *compute_tile(self.task, w, self.stages.is_cancelled, read))
                for w, read in read_ahead(self.pair.read, windows)
            )
        with contextlib.closing(results):
            for window, values, history in results:
                for k, v in history.items():
                    self.history.setdefault(k, []).extend(v)
                yield window, values


def _whole(grid):
    from .tiling import Window

    return Window(0, 0, grid.width, grid.height)
