"""Screenshots of the plugin in the real QGIS desktop under Xvfb (what a new user sees).

    .venv/bin/python tests/screenshots.py /tmp/issue20_shots            # the OSCD Las Vegas pair
    .venv/bin/python tests/screenshots.py OUT --before a.tif --after b.tif

Starts a private Xvfb (1600 x 1000), a throw-away QGIS profile with the plugin enabled (as
``tests/test_qgis_desktop.py`` does) and ``qgis --code tests/qgis_screenshots_script.py``, which
opens the algorithm dialog, expands its advanced parameters, runs it on the pair and takes the
pictures (see that script). Without ``--before``/``--after`` the shared OSCD Las Vegas pair
(evaluation data, read in place) is written to GeoTIFFs in ``OUT/data`` with an assumed 10 m
UTM 11N grid, so the areas read in m² and hectares. Look at every picture afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from test_qgis_desktop import _stop, desktop_command, start_xvfb  # noqa: E402

SCRIPT = HERE / "qgis_screenshots_script.py"
LAS_VEGAS = HERE.parents[1] / "shared" / "data" / "oscd" / "lasvegas"


def las_vegas_pair(folder: Path) -> tuple:
    """The OSCD Las Vegas PNGs as GeoTIFFs on an assumed 10 m grid in UTM zone 11N."""
    from osgeo import gdal

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in (("lasvegas_2015", "img1.png"), ("lasvegas_2018", "img2.png")):
        path = folder / f"{name}.tif"
        gdal.Translate(str(path), str(LAS_VEGAS / png), format="GTiff", outputSRS="EPSG:32611",
                       outputBounds=[660000, 4010000, 667160, 4001760])  # 716 x 824 px, 10 m
        paths.append(str(path))
    return tuple(paths)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--before")
    parser.add_argument("--after")
    parser.add_argument("--params", default="{}",
                        help="JSON of further parameters of the run (default: the offline "
                        "ImageNet weights file when installed, CPU)")
    parser.add_argument("--timeout", type=int, default=600)
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    (out / "events.jsonl").unlink(missing_ok=True)
    before, after = (args.before, args.after) if args.before else las_vegas_pair(out / "data")
    params = json.loads(args.params)
    if not params:
        from metric_change_detection.core.demo import offline_weights

        params = {"DEVICE": 1}
        if offline_weights():
            params.update(WEIGHTS=2, WEIGHTS_FILE=offline_weights())
    work = Path(tempfile.mkdtemp(prefix="metriccd_shots_"))
    xvfb, display = start_xvfb("1600x1000x24")
    command, env = desktop_command(work, display, SCRIPT, {
        "METRICCD_SHOTS_OUT": str(out),
        "METRICCD_SHOTS_BEFORE": str(Path(before).resolve()),
        "METRICCD_SHOTS_AFTER": str(Path(after).resolve()),
        "METRICCD_SHOTS_PARAMS": json.dumps(params),
    })
    try:
        with open(out / "qgis.log", "wb") as log:
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=work)
            try:
                code = proc.wait(args.timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _stop(proc)
    finally:
        _stop(xvfb)
    events = (out / "events.jsonl").read_text() if (out / "events.jsonl").exists() else ""
    print(events)  # noqa: T201
    print(f"QGIS exit code {code}; pictures: {sorted(p.name for p in out.glob('*.png'))}")  # noqa: T201
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
