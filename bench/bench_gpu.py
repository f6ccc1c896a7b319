"""GPU check and timings in one table; run on the GPU machine through ``bench/gpu.sh``.

1. Correctness: the ``default`` preset on a seeded 512 x 512 pair, float32 on the CPU vs the
   accelerator (float32 and bf16 autocast): relative L2 error of the probability map and the
   fraction of pixels whose Otsu mask differs (the two runs optimise independently, so
   floating-point differences compound over the iterations; the limits are in ``LIMITS``).
2. Timings of every preset at 512 x 512 and 2048 x 2048 (``fit_predict`` on arrays).
3. A 10,000 x 10,000 scene-mode run: through the raster pipeline when GDAL is importable,
   else the same work on arrays (fit on 16 random crops, predict 2048 x 2048 tiles).

    bench/gpu.sh                                              # on the GPU machine
    .venv/bin/python bench/bench_gpu.py --device cpu --quick  # the same code paths, CPU-sized
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metric_change_detection.core.config import MetricCDConfig  # noqa: E402
from metric_change_detection.core.demo_data import synthetic_pair  # noqa: E402
from metric_change_detection.core.engine import Engine, fit_predict  # noqa: E402
from metric_change_detection.core.preprocess import fit_scaling  # noqa: E402
from metric_change_detection.core.threshold import otsu_threshold  # noqa: E402

#: Pass limits of the correctness check: relative L2 error, fraction of mask pixels that differ.
LIMITS = {"float32": (0.05, 0.01), "bf16": (0.10, 0.02)}


def compare(reference: np.ndarray, other: np.ndarray) -> Tuple[float, float]:
    """Relative L2 error of ``other`` and the fraction of pixels where the Otsu masks differ."""
    ok = np.isfinite(reference) & np.isfinite(other)
    r, o = reference[ok].astype(np.float64), other[ok].astype(np.float64)
    error = float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-12))
    masks = [x > otsu_threshold(x) for x in (r, o)]
    return error, float(np.mean(masks[0] != masks[1]))


def timed(fn: Callable[[], object], device: str) -> Tuple[float, float]:
    """Wall seconds of ``fn()`` and the accelerator's peak memory (GB; 0 on the CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else 0.0
    return time.perf_counter() - start, peak


def correctness(device: str, size: int, iterations: int) -> List[list]:
    """CPU float32 reference vs ``device`` in float32 and (on CUDA) bf16 autocast."""
    before, after, _ = synthetic_pair(size=size, bands=3, seed=0)
    config = MetricCDConfig.preset("default", weights="random", iterations=iterations, device="cpu")
    reference = fit_predict(before, after, config=config).probability
    rows = []
    for precision in ("float32", "bf16") if device == "cuda" else ("float32",):
        run = MetricCDConfig.preset("default", weights="random", iterations=iterations,
                                    device=device, amp=precision == "bf16")
        error, differ = compare(reference, fit_predict(before, after, config=run).probability)
        max_error, max_differ = LIMITS[precision]
        verdict = "PASS" if error <= max_error and differ <= max_differ else "FAIL"
        rows.append([f"correctness {precision} vs CPU float32", f"{size}²", "default",
                     f"rel. L2 {error:.2e}, mask differs {differ:.2%}", "", verdict])
    return rows


def preset_timings(device: str, sizes: List[int], presets: List[str], amp: bool) -> List[list]:
    """Seconds of one whole ``fit_predict`` per preset and size (random D-FE weights)."""
    rows = []
    for size in sizes:
        before, after, _ = synthetic_pair(size=size, bands=3, seed=1)
        for preset in presets:
            config = MetricCDConfig.preset(preset, weights="random", device=device, amp=amp)
            try:
                seconds, peak = timed(lambda c=config, b=before, a=after: fit_predict(b, a, config=c), device)
                rows.append([f"fit + predict ({config.iterations} it)", f"{size}²", preset,
                             f"{seconds:.2f} s", f"{peak:.1f}", ""])
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                rows.append(["fit + predict", f"{size}²", preset, "out of memory", "", ""])
    return rows


def scene_pipeline(size: int, preset: str, device: str, amp: bool) -> list:
    """The raster pipeline on a generated ``size`` x ``size`` GeoTIFF pair (needs GDAL)."""
    from metric_change_detection.core.config import PipelineOptions
    from metric_change_detection.core.pipeline import detect_change

    from bench.synthetic_raster import write_pair

    config = MetricCDConfig.preset(preset, weights="random", device=device, amp=amp)
    with tempfile.TemporaryDirectory() as tmp:
        b, a = write_pair(Path(tmp), size)
        seconds, peak = timed(lambda: detect_change(
            b, a, str(Path(tmp) / "p.tif"), config=config, options=PipelineOptions(tile_size=2048)
        ), device)
    return ["scene mode, raster pipeline", f"{size}²", preset, f"{seconds:.1f} s", f"{peak:.1f}", ""]


def scene_arrays(size: int, preset: str, device: str, amp: bool, tile: int = 2048) -> list:
    """Scene mode's work on arrays (no GDAL): fit on 16 random crops, predict every tile
    (batched as the pipeline batches them)."""
    config = MetricCDConfig.preset(preset, weights="random", device=device, amp=amp)
    before, after, _ = synthetic_pair(size=tile, bands=3, seed=2)
    scaling = fit_scaling(before, after)
    b, a = scaling.apply(before, after)
    valid = np.ones(b.shape[1:], bool)
    m = scaling.evidence(before, after, valid, config.gate_sharpness)
    crop = min(256, tile // 2)
    corners = np.random.default_rng(0).integers(0, tile - crop, (16, 2))

    def run() -> None:
        engine = Engine(config, 3)
        windows = [np.s_[..., r:r + crop, c:c + crop] for r, c in corners]
        engine.fit([engine.prepare(b[w], a[w], b[w], a[w], valid[w], config.train_scale,
                                   magnitude=m[w]) for w in windows])
        prepared = engine.prepare(b, a, b, a, valid, training=False, magnitude=m)
        left, batch = -(-size // tile) ** 2, engine.tile_batch(tile)
        while left > 0:  # as the pipeline does: up to ``batch`` tiles per forward on CUDA
            engine.predict_many([prepared] * min(batch, left))
            left -= batch
        engine.close()

    seconds, peak = timed(run, device)
    return ["scene mode, arrays (no GDAL)", f"{size}²", preset, f"{seconds:.1f} s", f"{peak:.1f}", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="CPU-sized: 64² check, 128² timings")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device is visible to torch; run on the GPU machine or pass --device cpu.")
    amp = args.device == "cuda"
    if args.quick:
        rows = correctness(args.device, 64, 3)
        rows += preset_timings(args.device, [128], ["fast"], amp)
        rows.append(scene_arrays(256, "fast", args.device, amp, tile=128))
    else:
        rows = correctness(args.device, 512, 30)
        rows += preset_timings(args.device, [512, 2048], ["fast", "default", "paper"], amp)
        has_gdal = importlib.util.find_spec("osgeo") is not None
        rows.append((scene_pipeline if has_gdal else scene_arrays)(10000, "fast", args.device, amp))
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"device: {name}; torch {torch.__version__}; bf16 autocast: {amp}")  # noqa: T201
    print("| stage | size | preset | result | peak accelerator GB | check |")  # noqa: T201
    print("|---|---|---|---|---|---|")  # noqa: T201
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")  # noqa: T201
    if any(row[-1] == "FAIL" for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
