"""Speed and memory benchmarks (tables on stdout; never timed tests).

    .venv/bin/python bench/bench_speed.py iteration   # s/iteration at 512²: straightforward loop vs engine
    .venv/bin/python bench/bench_speed.py lasvegas    # whole Las Vegas pair through the CLI, per preset
    .venv/bin/python bench/bench_speed.py scaling     # scene-mode time for 512² ... 4096², fitted exponent
    .venv/bin/python bench/bench_speed.py large       # 10,000 x 10,000 scene mode: time and peak RSS
    .venv/bin/python bench/bench_speed.py s2tile      # 10,980² 4-band uint16 pair, mask + polygons:
                                                      # default, fast, CVA, IR-MAD, OTB; stages, floors
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def run_timed(command: list[str]) -> tuple[float, float, str]:
    """Run a command under ``/usr/bin/time``: wall seconds, its own peak RSS (MB), stdout."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "RSS_KB=%M", *command], capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{command[0]} failed: {done.stderr[-2000:]}")
    peak = float(done.stderr.rsplit("RSS_KB=", 1)[1].split()[0]) / 1024
    return seconds, peak, done.stdout


def run_cli(args: list[str]) -> tuple[float, float, dict]:
    """Run ``metric-cd`` in a child process: wall seconds, peak RSS (MB), JSON summary."""
    seconds, peak, out = run_timed([CLI, "--quiet", *args])
    return seconds, peak, json.loads(out.strip().splitlines()[-1])


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


def bench_iteration(size: int = 512, iterations: int = 6,
                    augmentations: tuple[str, ...] = ("published", "off")) -> None:
    """Seconds per iteration of the paper preset: straightforward loop vs the engine.

    "whole run" covers set-up, ``iterations`` steps and the prediction, divided by
    ``iterations``; "per step" is the median step after the first (the engine's one-off D-FE
    pass is then excluded, as it is amortised over the paper's 50 iterations).
    """
    before, after, _ = synthetic_pair(size=size, bands=3, seed=0)
    scaling = fit_scaling(before, after)
    b, a = scaling.apply(before, after)
    valid = np.ones(before.shape[1:], bool)
    rows = []
    for augmentation in augmentations:
        config = MetricCDConfig.preset("paper", weights="random", iterations=iterations,
                                       augmentation=augmentation)
        naive_clock, engine_clock = IterationClock(), IterationClock()
        start = time.perf_counter()
        naive, _ = naive_fit_predict(b, a, config, naive_clock)
        naive_s = (time.perf_counter() - start) / iterations
        engine = Engine(config, 3)
        start = time.perf_counter()
        evidence = scaling.evidence(before, after, valid, config.gate_sharpness)  # for the gate
        tile = engine.prepare(b, a, b, a, valid, magnitude=evidence)
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


STAGES = ("read", "fit", "inference", "decision", "write", "polygons")
CACHE = Path(os.environ.get("METRICCD_BENCH_CACHE", Path(tempfile.gettempdir()) / "metriccd_bench"))


def cached_pair(size: int, bands: int) -> tuple[str, str]:
    """The generated pair of ``size``² x ``bands`` uint16 (tiled DEFLATE), made once in CACHE."""
    folder = CACHE / f"s2_{size}_{bands}b"
    if not (folder / "done").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        write_pair(folder, size, bands=bands)
        (folder / "done").write_text(f"{time.perf_counter() - start:.0f} s\n")
    return str(folder / "before.tif"), str(folder / "after.tif")


def load() -> str:
    return os.getloadavg().__repr__()[1:-1].split(",")[0]


def _otb(before: str, after: str, out: Path, alpha: float) -> tuple[float, float, float]:
    """OTB's MAD variates, then a chi-square mask with BandMath: (seconds, peak RSS MB, changed)."""
    from osgeo import gdal
    from scipy.stats import chi2

    gdal.UseExceptions()
    mad = str(out / "otb_mad.tif")
    s1, rss1, _ = run_timed(["otbcli_MultivariateAlterationDetector", "-in1", before, "-in2", after,
                             "-out", mad, "float"])
    start = time.perf_counter()
    ds = gdal.Open(mad)
    sigmas = [ds.GetRasterBand(i + 1).ComputeStatistics(True)[3] for i in range(ds.RasterCount)]
    count = ds.RasterCount
    ds = None
    s2 = time.perf_counter() - start
    terms = "+".join(f"(im1b{i + 1}/{s:.9g})*(im1b{i + 1}/{s:.9g})" for i, s in enumerate(sigmas))
    critical = chi2.ppf(1 - alpha, count)
    mask = str(out / "otb_mask.tif")
    s3, rss3, _ = run_timed(["otbcli_BandMath", "-il", mad, "-out", mask, "uint8",
                             "-exp", f"({terms}) > {critical:.9g} ? 1 : 0"])
    ds = gdal.Open(mask)
    changed = float(ds.GetRasterBand(1).ComputeStatistics(False)[2])
    ds = None
    return s1 + s2 + s3, max(rss1, rss3), changed


def conv_macs(module, shape: tuple[int, ...]) -> float:
    """Multiply-adds per output pixel of every convolution of ``module`` on a ``shape`` input."""
    import torch

    total = [0]

    def hook(conv, _inputs, output):
        kh, kw = conv.kernel_size
        total[0] += output.numel() * (conv.in_channels // conv.groups) * kh * kw

    hooks = [m.register_forward_hook(hook) for m in module.modules()
             if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module.eval()(torch.rand(shape))
    for h in hooks:
        h.remove()
    return total[0] / (shape[-1] * shape[-2])


def gemm_rate() -> float:
    """Measured float32 multiply-adds per second of a large matrix product (all torch threads)."""
    import torch

    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    a @ b
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    return reps * 2048**3 / (time.perf_counter() - start)


def read_floor(paths: tuple[str, ...]) -> float:
    """Seconds for GDAL alone to decode both inputs block by block (one thread)."""
    from osgeo import gdal

    gdal.UseExceptions()
    start = time.perf_counter()
    for path in paths:
        ds = gdal.Open(path)
        bx, by = ds.GetRasterBand(1).GetBlockSize()
        for row in range(0, ds.RasterYSize, by):
            for col in range(0, ds.RasterXSize, bx):
                ds.ReadRaster(col, row, min(bx, ds.RasterXSize - col), min(by, ds.RasterYSize - row))
        ds = None
    return time.perf_counter() - start


def bench_s2tile(size: int, bands: int, runs: list[str], alpha: float = 1e-4) -> None:
    """A Sentinel-2-tile-sized pair end to end through the CLI with mask and polygons.

    One row per run (wall s, peak RSS, s/MP, seconds per stage from the run's JSON
    ``stages``; "other" is process start, imports and what no stage covers), then the
    compute floors: D-CPG's and D-FE's multiply-adds per pixel at the measured matrix-product
    rate, GDAL's own decode time of the inputs, and the bytes read and written.
    """
    from metric_change_detection.core.models import DCPG, FeatureExtractor

    before, after = cached_pair(size, bands)
    mp = size * size / 1e6
    args = {"default": ["--preset", "default"], "fast": ["--preset", "fast"],
            "cva": ["--method", "cva"], "irmad": ["--method", "irmad"]}
    rows, measured = [], {}
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        out = Path(tmp)
        for run in runs:
            if run == "otb":
                if not shutil.which("otbcli_MultivariateAlterationDetector"):
                    rows.append(["OTB MAD + χ² (BandMath)", "skipped: otb-bin not installed"]
                                + [""] * (len(STAGES) + 5))
                    continue
                load_before = load()
                seconds, peak, changed = _otb(before, after, out, alpha)
                rows.append(["OTB MAD + χ² (BandMath)", round(seconds, 1), round(peak),
                             round(seconds / mp, 3), round(changed, 4)] + [""] * (len(STAGES) + 1)
                            + [load_before])
                continue
            load_before = load()
            extra = weights_args() if run in ("default", "fast") else []
            seconds, peak, summary = run_cli([
                before, after, "-o", str(out / f"{run}.tif"), "--mask", str(out / f"{run}_mask.tif"),
                "--polygons", str(out / f"{run}.gpkg"), "--alpha", str(alpha), *args[run], *extra,
            ])
            stages = summary.get("stages", {})
            measured[run] = stages
            other = seconds - sum(stages.values())
            rows.append([run, round(seconds, 1), round(peak), round(seconds / mp, 3),
                         round(summary["changed_fraction"], 4)]
                        + [f"{stages.get(s, 0.0):.1f} ({stages.get(s, 0.0) / mp:.3f})" for s in STAGES]
                        + [round(other, 1), load_before])
            for name in (f"{run}.tif", f"{run}_mask.tif", f"{run}.gpkg"):
                (out / name).unlink(missing_ok=True)
    print(f"\n{size} x {size} x {bands} bands uint16 ({mp:.1f} MP), mask + polygons, alpha {alpha:g}; "  # noqa: T201
          "stage cells: seconds (seconds per megapixel). The next tile is read and the finished "
          "rows are written on background threads while tiles are computed, so those stages "
          "overlap inference: the stages add up to more than the wall time ('other' < 0 by the "
          "overlap) and 'read reached' compares a contended read with GDAL decoding alone\n")
    table(["run", "wall s", "peak RSS MB", "s/MP", "changed fraction", *STAGES, "other s",
           "load before"], rows)
    rate = gemm_rate()
    dcpg = conv_macs(DCPG(bands, 16, 4), (1, bands, 512, 512))
    fe = conv_macs(FeatureExtractor("mobilenet_v2", "random", 4), (1, 3, 512, 512))
    floor_inference = 2 * fe + dcpg  # D-FE on both dates (feature fusion), D-CPG once
    decoded = 2 * size * size * bands * 2
    on_disk = os.path.getsize(before) + os.path.getsize(after)
    floor_read = read_floor((before, after))
    floors = [
        ["inference (default)", f"D-CPG {dcpg / 1e3:.1f} k + 2 x D-FE {fe / 1e3:.1f} k MAC/px",
         f"{floor_inference * 1e6 / rate:.2f} s/MP at {rate / 1e9:.1f} GMAC/s"],
        ["read", f"{decoded / 1e9:.2f} GB decoded ({on_disk / 1e9:.2f} GB DEFLATE on disk)",
         f"{floor_read / mp:.3f} s/MP (GDAL decode alone, 1 thread)"],
        ["write", f"{size * size * 5 / 1e9:.2f} GB raw (float32 score + uint8 mask) + overviews", ""],
    ]
    for run, stages in measured.items():
        if "inference" in stages and run in ("default", "fast"):
            floors.append([f"{run}: inference reached", "",
                           f"{floor_inference * mp * 1e6 / rate / stages['inference']:.0%} of the floor"])
        if "read" in stages:
            floors.append([f"{run}: read reached", "", f"{floor_read / stages['read']:.0%} of the floor"])
    print()  # noqa: T201
    table(["stage", "work", "floor"], floors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("iteration", "lasvegas", "scaling", "large", "s2tile"))
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--presets", nargs="+", default=["fast", "default"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--iterations", type=int, default=6, help="iteration: steps timed per loop")
    parser.add_argument("--augmentations", nargs="+", default=["published", "off"],
                        choices=("published", "off"), help="iteration: the paper loop's variants")
    parser.add_argument("--bands", type=int, default=4, help="s2tile: bands of the generated pair")
    parser.add_argument("--runs", nargs="+", default=["default", "fast", "cva", "irmad", "otb"],
                        choices=("default", "fast", "cva", "irmad", "otb"), help="s2tile: what to run")
    args = parser.parse_args()
    if args.what == "iteration":
        bench_iteration(iterations=args.iterations, augmentations=tuple(args.augmentations))
    elif args.what == "lasvegas":
        bench_lasvegas(args.presets)
    elif args.what == "s2tile":
        bench_s2tile(10980 if args.size == 10000 else args.size, args.bands, args.runs)
    elif args.what == "scaling":
        bench_scaling(args.sizes, args.preset)
    else:
        bench_large(args.size, args.preset)


if __name__ == "__main__":
    main()
