"""bench/gpu.sh and its checks run on a CPU too (CI never has a GPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_gpu import compare  # noqa: E402


def test_compare_measures_error_and_mask_disagreement():
    rng = np.random.default_rng(0)
    reference = np.where(rng.random((64, 64)) < 0.1, 0.9, 0.1).astype(np.float32)
    assert compare(reference, reference) == (0.0, 0.0)
    flipped = reference.copy()
    flipped[:8] = 1.0 - flipped[:8]  # an eighth of the rows inverted
    error, differ = compare(reference, flipped)
    assert error > 0.1
    assert differ == float(np.mean(reference[:8] > 0.5) + np.mean(reference[:8] < 0.5)) / 8


def test_gpu_script_runs_its_code_paths_on_the_cpu():
    done = subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--device", "cpu", "--quick"],
                          capture_output=True, text=True, timeout=600,
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any("correctness float32 vs CPU float32" in line and "PASS" in line for line in lines)
    assert any("fit + predict" in line and "fast" in line for line in lines)
    assert any("scene mode, arrays" in line for line in lines)
