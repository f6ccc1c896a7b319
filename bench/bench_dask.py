"""Scene-mode inference on Dask: one process vs 1 and 2 local workers (one table on stdout).

    .venv/bin/python bench/bench_dask.py                  # 20,000 x 20,000 3-band pair
    .venv/bin/python bench/bench_dask.py --size 4000      # what fits in minutes on 2 cores

The pair is generated on disk block by block (seeded noise, smooth texture and planted squares;
bounded memory). Every configuration runs in a fresh child process, which samples the resident
memory of itself (the client: fit, blending, writing) and of each Dask worker process. "tile
stage s" runs from the end of the scene-mode optimisation (on the client) to the last tile and
includes stopping the local cluster (it starts before the optimisation); "tiles/s (steady)" is
the throughput from the first to the last tile; "worker CPU s" is each worker's CPU time (user
+ system). Speed-ups are relative to 1 worker. Dask workers run one thread each (Dask sets
OMP_NUM_THREADS=1); the one-process baseline uses torch's default thread count.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.synthetic_raster import write_pair  # noqa: E402

MB = 1024 * 1024


class MemorySampler(threading.Thread):
    """Peak RSS of each Dask worker process (children of this process), sampled periodically."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.interval = psutil, interval
        self.me = psutil.Process()
        self.workers: Dict[int, int] = {}
        self.cpu: Dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            for child in self.me.children(recursive=True):
                try:
                    if "spawn_main" in " ".join(child.cmdline()):
                        rss = child.memory_info().rss
                        self.workers[child.pid] = max(self.workers.get(child.pid, 0), rss)
                        times = child.cpu_times()
                        self.cpu[child.pid] = times.user + times.system
                except self.psutil.Error:
                    pass


def child(spec: dict) -> dict:
    """One configuration in this (fresh) process; returns times and peak memory."""
    from metric_change_detection.core.config import MetricCDConfig, PipelineOptions
    from metric_change_detection.core.pipeline import detect_change

    config = MetricCDConfig.preset(spec["preset"], weights="random", iterations=spec["iterations"],
                                   device=spec["device"])
    options = PipelineOptions(tile_size=spec["tile_size"], dask_workers=spec["workers"])
    marks: Dict[str, float] = {}

    tiles: List[float] = []

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def progress(percent: float, message: str) -> None:
        if message.startswith("Computing the change probability"):
            marks.setdefault("tiles", time.perf_counter())
            marks.setdefault("cpu0", cpu())
        elif message.startswith("Tile "):
            tiles.append(time.perf_counter())
        elif message.startswith("Writing the change mask"):
            marks.setdefault("written", time.perf_counter())
            marks.setdefault("cpu1", cpu())

    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    result = detect_change(spec["before"], spec["after"], spec["output"], config=config,
                           options=options, progress=progress)
    total = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    return {
        "total_s": total,
        "tiles_s": marks["written"] - marks["tiles"],
        "tiles": len(tiles),
        "tiles_per_s": (len(tiles) - 1) / (tiles[-1] - tiles[0]) if len(tiles) > 1 else float("nan"),
        "client_cpu_s": marks["cpu1"] - marks["cpu0"],
        "client_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_mb": [v / MB for _, v in sorted(sampler.workers.items())],
        "workers_cpu_s": [v for _, v in sorted(sampler.cpu.items())],
        "changed": result.changed_fraction,
    }


def run_child(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"configuration {spec['workers']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(header: List[str], rows: List[List[str]]) -> None:
    """Print a markdown table."""
    print("| " + " | ".join(header) + " |")  # noqa: T201
    print("|" + "---|" * len(header))  # noqa: T201
    for row in rows:
        print("| " + " | ".join(row) + " |")  # noqa: T201
    sys.stdout.flush()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="width and height in pixels")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="local Dask worker counts to compare (0 = one process, no Dask)")
    parser.add_argument("--baseline", action="store_true", help="also run without Dask")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--iterations", type=int, default=5, help="scene-mode optimisation steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", help="folder for the generated pair (kept; reused if present)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))  # noqa: T201
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.data) if args.data else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if (folder / "after.tif").exists():
            before, after = str(folder / "before.tif"), str(folder / "after.tif")
        else:
            before, after = write_pair(folder, args.size)
        generated = time.perf_counter() - start
        counts = ([0] if args.baseline else []) + list(args.workers)
        results = {}
        for workers in counts:
            spec = {"before": before, "after": after, "output": str(Path(tmp) / f"p{workers}.tif"),
                    "workers": workers, "tile_size": args.tile_size, "preset": args.preset,
                    "iterations": args.iterations, "device": args.device}
            results[workers] = run_child(spec)
    reference = results.get(1) or results[counts[0]]
    rows = []
    for workers, r in results.items():
        rows.append([
            "one process (no Dask)" if workers == 0 else f"{workers} local worker(s)",
            f"{r['total_s']:.1f}", f"{r['tiles_s']:.1f}", f"{r['tiles_per_s']:.2f}",
            f"{reference['tiles_s'] / r['tiles_s']:.2f}x",
            f"{r['tiles_per_s'] / reference['tiles_per_s']:.2f}x", f"{r['client_cpu_s']:.0f}",
            f"{r['client_mb']:.0f}",
            ", ".join(f"{m:.0f}" for m in r["workers_mb"]) or "-",
            ", ".join(f"{c:.0f}" for c in r["workers_cpu_s"]) or "-", f"{r['changed']:.4f}",
        ])
    print(f"{args.size} x {args.size} x 3 bands, {reference['tiles']} tiles of {args.tile_size}, "  # noqa: T201
          f"preset {args.preset}, {args.iterations} iterations, device {args.device}; pair "
          f"generated in {generated:.0f} s")
    table(["run", "total s", "tile stage s", "tiles/s (steady)", "speed-up (stage)",
           "speed-up (steady)", "client CPU s (tile stage)", "client peak RSS MB",
           "worker peak RSS MB (each)", "worker CPU s (each)", "changed fraction"], rows)


if __name__ == "__main__":
    main()
