"""End to end as a batch user: qgis_process.bin runs the algorithm on a GeoTIFF pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

pytestmark = [pytest.mark.qgis, pytest.mark.slow]


def parse_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def test_qgis_process_lists_the_algorithm(qgis_process):
    done = qgis_process(["list"])
    assert done.returncode == 0, done.stderr
    assert "metriccd:metricchangedetection" in done.stdout


def test_qgis_process_run_keeps_the_input_grid(qgis_process, fast_params, demo_pair, tmp_path):
    out = tmp_path / "out" / "probability.tif"
    out.parent.mkdir()
    params = {**fast_params, "OUTPUT": out, "OUTPUT_MASK": tmp_path / "out" / "mask.tif",
              "OUTPUT_REPORT": tmp_path / "out" / "report.html"}
    args = ["--json", "run", "metriccd:metricchangedetection", "--"]
    args += [f"{k}={v}" for k, v in params.items()]
    done = qgis_process(args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    answer = parse_json(done.stdout)
    results = answer["results"]
    assert Path(results["OUTPUT"]) == out and out.is_file()
    assert Path(results["OUTPUT_MASK"]).is_file() and Path(results["OUTPUT_REPORT"]).is_file()
    assert 0.0 < results["THRESHOLD_USED"] < 1.0
    src, res = gdal.Open(demo_pair.before), gdal.Open(str(out))
    assert (res.RasterXSize, res.RasterYSize) == (src.RasterXSize, src.RasterYSize)
    assert np.allclose(res.GetGeoTransform(), src.GetGeoTransform())
    assert res.GetSpatialRef().IsSame(src.GetSpatialRef())
    assert "Threshold" in answer.get("log", {}).get("info", "") or "Threshold" in done.stdout


def test_qgis_process_reports_bad_input(qgis_process, fast_params, tmp_path):
    args = ["run", "metriccd:metricchangedetection", "--"]
    args += [f"{k}={v}" for k, v in {**fast_params, "BANDS_BEFORE": 9, "BANDS_AFTER": 1,
                                     "OUTPUT": tmp_path / "p.tif"}.items()]
    done = qgis_process(args)
    assert done.returncode != 0
    assert "choose bands between 1 and 3" in done.stdout + done.stderr
    assert not (tmp_path / "p.tif").exists()
