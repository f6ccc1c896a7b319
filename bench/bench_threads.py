"""Does a scene-mode result depend on torch's CPU thread count? (issue 19, item 16)

    .venv/bin/python bench/bench_threads.py                   # 256 x 256, seeds 0-2, 1/2/4 threads
    .venv/bin/python bench/bench_threads.py --size 640        # several tiles

For every seed, three seeded demo pairs: planted changes ("change"), the same image twice
("identical"), and two dates without change but with independent noise and a radiometric shift
("no change"). Each runs through ``metric-cd`` (scene mode, the chosen preset, a fresh process
per run) with every thread count; the table gives the changed fraction, F1 against the planted
truth (change pairs), and, against the first thread count, the largest difference of the change
probability and the share of mask pixels that differ.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from metric_change_detection.core.demo import offline_weights
from metric_change_detection.core.demo_data import write_demo_pair
from osgeo import gdal


def _band(path: Path) -> np.ndarray:
    ds = gdal.Open(str(path))
    return ds.GetRasterBand(1).ReadAsArray()


def _pairs(folder: Path, size: int, seed: int) -> List[Tuple[str, str, str, Optional[str]]]:
    """(kind, before, after, truth) of the three pairs of ``seed``."""
    made = write_demo_pair(folder, size=size, seed=seed)
    same = folder / "same.tif"
    shutil.copyfile(made.before, same)
    quiet = write_demo_pair(folder / "nochange", size=size, seed=seed, n_changes=0)
    return [("change", made.before, made.after, made.truth),
            ("identical", made.before, str(same), None),
            ("no change", quiet.before, quiet.after, None)]


def _run(before: str, after: str, out: Path, threads: int, seed: int, args) -> dict:
    command = [sys.executable, "-m", "metric_change_detection.core.cli", before, after,
               "-o", str(out), "--mask", str(out.with_name(out.stem + "_mask.tif")),
               "--preset", args.preset, "--backbone", "mobilenet_v2", "--weights", args.weights,
               "--device", "cpu", "--threads", str(threads), "--seed", str(seed), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"metric-cd failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def main(argv: Optional[List[str]] = None) -> int:
    """Print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--preset", default="default")
    p.add_argument("--weights", default=offline_weights() or "random",
                   help="ImageNet MobileNetV2 weights file (default: the offline test copy, else "
                   "random)")
    args = p.parse_args(argv)
    print("| pair | seed | threads | changed fraction | F1 | max abs dP | mask pixels differing |")  # noqa: T201
    print("|---|---:|---:|---:|---:|---:|---:|")  # noqa: T201
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for kind, before, after, truth in _pairs(Path(tmp) / f"s{seed}", args.size, seed):
                reference = None
                for threads in args.threads:
                    out = Path(tmp) / f"s{seed}" / f"{kind.replace(' ', '')}_{threads}.tif"
                    summary = _run(before, after, out, threads, seed, args)
                    p_map, mask = _band(out), _band(out.with_name(out.stem + "_mask.tif")) == 1
                    reference = reference or (p_map, mask)
                    f1 = "-"
                    if truth:
                        t = _band(Path(truth)) == 1
                        f1 = f"{2 * (mask & t).sum() / max(mask.sum() + t.sum(), 1):.3f}"
                    row = (f"| {kind} | {seed} | {threads} | {summary['changed_fraction']:.4f} | "
                           f"{f1} | {np.abs(p_map - reference[0]).max():.1e} | "
                           f"{(mask != reference[1]).mean():.4%} |")
                    print(row, flush=True)  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
