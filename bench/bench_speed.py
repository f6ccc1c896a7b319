"""Speed and memory benchmarks (tables on stdout; never timed tests).

    .venv/bin/python bench/bench_speed.py iteration   # s/iteration at 512²: straightforward loop vs engine
    .venv/bin/python bench/bench_speed.py lasvegas    # whole Las Vegas pair through the CLI, per preset
    .venv/bin/python bench/bench_speed.py scaling     # scene-mode time for 512² ... 4096², fitted exponent
    .venv/bin/python bench/bench_speed.py large       # 10,000 x 10,000 scene mode: time and peak RSS
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metric_change_detection.core.config import MetricCDConfig  # noqa: E402
from metric_change_detection.core.demo import offline_weights  # noqa: E402
from metric_change_detection.core.demo_data import synthetic_pair  # noqa: E402
from metric_change_detection.core.engine import Engine  # noqa: E402
from metric_change_detection.core.preprocess import fit_scaling  # noqa: E402

from bench.naive_loop import naive_fit_predict  # noqa: E402
from bench.synthetic_raster import write_pair  # noqa: E402

CLI = str(Path(sys.executable).parent / "metric-cd")
DATA = ROOT.parent / "shared" / "data"


def table(header: list[str], rows: list[list]) -> None:
    """Print a markdown table."""
    print("| " + " | ".join(header) + " |")  # noqa: T201
    print("|" + "---|" * len(header))  # noqa: T201
    for row in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row) + " |")  # noqa: T201
    sys.stdout.flush()


def run_cli(args: list[str]) -> tuple[float, float, dict]:
    """Run ``metric-cd`` in a child process: wall seconds, peak RSS (MB), JSON summary."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([CLI, "--quiet", *args], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    return seconds, peak, json.loads(done.stdout.strip().splitlines()[-1])


def weights_args() -> list[str]:
    weights = offline_weights()
    return ["--weights", weights] if weights else ["--weights", "random"]


class IterationClock:
    """Progress callback recording when each iteration ends."""

    def __init__(self) -> None:
        self.ticks: list[float] = []

    def __call__(self, percent: float, message: str) -> None:
        self.ticks.append(time.perf_counter())

    def steady(self) -> float:
        """Median seconds per iteration after the first (warm-up) one."""
        return float(np.median(np.diff(self.ticks)))


def bench_iteration(size: int = 512, iterations: int = 6) -> None:
    """Seconds per iteration of the paper preset: straightforward loop vs the engine.

    "whole run" covers set-up, ``iterations`` steps and the prediction, divided by
    ``iterations``; "per step" is the median step after the first (the engine's one-off D-FE
    pass is then excluded, as it is amortised over the paper's 50 iterations).
    """
    before, after, _ = synthetic_pair(size=size, bands=3, seed=0)
    b, a = fit_scaling(before, after).apply(before, after)
    rows = []
    for augmentation in ("published", "off"):
        config = MetricCDConfig.preset("paper", weights="random", iterations=iterations,
                                       augmentation=augmentation)
        naive_clock, engine_clock = IterationClock(), IterationClock()
        start = time.perf_counter()
        naive, _ = naive_fit_predict(b, a, config, naive_clock)
        naive_s = (time.perf_counter() - start) / iterations
        engine = Engine(config, 3)
        start = time.perf_counter()
        tile = engine.prepare(b, a, b, a, np.ones(b.shape[1:], bool))
        engine.fit([tile], engine_clock)
        fast = engine.predict(tile, batch_stats=True)
        engine_s = (time.perf_counter() - start) / iterations
        rows.append([f"paper, augmentation={augmentation}", size,
                     f"{naive_s:.2f} / {naive_clock.steady():.2f}",
                     f"{engine_s:.2f} / {engine_clock.steady():.2f}",
                     f"{engine_s / naive_s:.2f} / {engine_clock.steady() / naive_clock.steady():.2f}",
                     float(np.abs(fast - naive).max())])
    table(["loop", "size", "straightforward s/it (whole run / per step)",
           "engine s/it (whole run / per step)", "ratio (whole run / per step)", "max |Δp|"], rows)


def bench_lasvegas(presets: list[str]) -> None:
    """The whole Las Vegas pair end to end through the CLI."""
    folder = DATA / "oscd" / "lasvegas"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            out = str(Path(tmp) / f"{preset}.tif")
            seconds, peak, summary = run_cli([str(folder / "img1.png"), str(folder / "img2.png"),
                                              "-o", out, "--preset", preset, *weights_args()])
            rows.append([preset, round(seconds, 1), round(peak), summary["changed_fraction"]])
    table(["preset", "seconds (CLI, end to end)", "peak RSS MB", "changed fraction"], rows)


def bench_scaling(sizes: list[int], preset: str) -> None:
    """Scene-mode wall time against pixel count; prints the fitted exponent."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            b, a = write_pair(Path(tmp), size)
            seconds, peak, _ = run_cli([b, a, "-o", str(Path(tmp) / "p.tif"), "--preset", preset,
                                        *weights_args()])
            rows.append([size, size * size / 1e6, round(seconds, 1), round(peak)])
    mp, seconds = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    exponent = np.polyfit(np.log(mp), np.log(seconds), 1)[0]
    slope, fixed = np.polyfit(mp, seconds, 1)
    residual = np.abs(fixed + slope * mp - seconds).max() / seconds.max()
    table(["size", "megapixels", "seconds", "peak RSS MB"], rows)
    print(f"\nfitted exponent (time ∝ pixels^k): k = {exponent:.2f}; linear fit: "  # noqa: T201
          f"{fixed:.1f} s fixed + {slope:.2f} s per megapixel (max residual {residual:.0%} of "
          "the longest run)")


def bench_large(size: int, preset: str) -> None:
    """A size x size pair in scene mode: time and peak RSS of the CLI process."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        b, a = write_pair(Path(tmp), size)
        generate = time.perf_counter() - start
        seconds, peak, summary = run_cli([b, a, "-o", str(Path(tmp) / "p.tif"), "--preset", preset,
                                          "--mask", str(Path(tmp) / "m.tif"), *weights_args()])
    table(["size", "preset", "generate s", "run s", "peak RSS MB", "changed fraction"],
          [[f"{size} x {size}", preset, round(generate), round(seconds), round(peak),
            summary["changed_fraction"]]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("iteration", "lasvegas", "scaling", "large"))
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--presets", nargs="+", default=["fast", "default"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--iterations", type=int, default=6, help="iteration: steps timed per loop")
    args = parser.parse_args()
    if args.what == "iteration":
        bench_iteration(iterations=args.iterations)
    elif args.what == "lasvegas":
        bench_lasvegas(args.presets)
    elif args.what == "scaling":
        bench_scaling(args.sizes, args.preset)
    else:
        bench_large(args.size, args.preset)


if __name__ == "__main__":
    main()
