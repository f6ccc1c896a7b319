"""The command line: ``metric-cd --method ...`` and ``metric-cd-accuracy``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from metric_change_detection.core.cli import accuracy_main, main
from metric_change_detection.core.demo_data import write_demo_pair
from osgeo import gdal, osr

SCRIPTS = Path(sys.executable).parent


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_demo_pair(tmp_path_factory.mktemp("pair"), size=96)


def write(path: Path, array: np.ndarray, dtype=gdal.GDT_Byte, nodata=None) -> str:
    """A tiny georeferenced one-band GeoTIFF."""
    ds = gdal.GetDriverByName("GTiff").Create(str(path), array.shape[1], array.shape[0], 1, dtype)
    ds.SetGeoTransform((500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    band = ds.GetRasterBand(1)
    if nodata is not None:
        band.SetNoDataValue(nodata)
    band.WriteArray(array)
    ds = None
    return str(path)


# 4 x 4 map and reference (OSCD-like: 1 = no change, 2 = change, 0 = unlabelled)
MAP = np.array([[1, 1, 0, 0],
                [1, 0, 0, 0],
                [0, 1, 1, 0],
                [0, 0, 0, 1]], np.uint8)
REF = np.array([[2, 2, 2, 1],
                [1, 1, 1, 1],
                [0, 2, 1, 1],
                [0, 1, 1, 2]], np.uint8)
# labelled = REF != 0 (14 px): tp = (0,0),(0,1),(2,1),(3,3) = 4; fp = (1,0),(2,2) = 2;
# fn = (0,2) = 1; tn = 14 - 7 = 7
HAND = {"tp": 4, "fp": 2, "fn": 1, "tn": 7, "n": 14}


def hand_metrics(tp, fp, fn, tn, n):
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n**2
    return {"precision": tp / (tp + fp), "recall": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn),
            "overall_accuracy": po, "kappa": (po - pe) / (1 - pe)}


@pytest.mark.parametrize("method", ["cva", "pcakmeans", "irmad"])
def test_method_flag_runs_the_classics(pair, tmp_path, capsys, method):
    out, mask = tmp_path / "s.tif", tmp_path / "m.tif"
    rc = main([pair.before, pair.after, "-o", str(out), "--method", method, "--mask", str(mask),
               "--quiet", "--iterations", "7", "--device", "cpu", "--preset", "paper"])  # ignored flags
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip())
    assert summary["mode"] == method and summary["output_path"] == str(out)
    assert out.is_file() and mask.is_file()
    assert gdal.Open(str(out)).GetMetadataItem("METRICCD_METHOD") == method


def test_method_options_and_numeric_threshold_reach_the_method(pair, tmp_path, capsys):
    out = tmp_path / "s.tif"
    rc = main([pair.before, pair.after, "-o", str(out), "--method", "pcakmeans", "--quiet",
               "--method-option", "block=5", "--method-option", "n_components=2", "--threshold", "2.5"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["threshold"] == 2.5
    meta = gdal.Open(str(out)).GetMetadata()
    assert meta["METRICCD_PCAKMEANS_BLOCK"] == "5" and meta["METRICCD_PCAKMEANS_COMPONENTS"] == "2"


def test_method_errors_are_one_line_and_exit_1(pair, tmp_path, capsys):
    rc = main([pair.before, pair.after, "-o", str(tmp_path / "s.tif"), "--method", "irmad", "--quiet",
               "--method-option", "max_iters=3"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "Unknown option(s) max_iters" in err and "max_iter" in err
    assert list(tmp_path.iterdir()) == []


def test_accuracy_of_a_binary_map_matches_the_hand_computed_matrix(tmp_path, capsys):
    m, r = write(tmp_path / "map.tif", MAP), write(tmp_path / "ref.tif", REF)
    rc = accuracy_main([m, r, "--change-values", "2", "--nochange-values", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    metrics = json.loads(out)
    assert {k: metrics[k] for k in HAND} == HAND
    for key, value in hand_metrics(**HAND).items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["roc_auc"] is None and metrics["map_type"] == "binary"


def test_accuracy_of_a_score_map_with_threshold_and_report(tmp_path, capsys):
    scores = np.where(MAP == 1, 0.8, 0.2).astype(np.float32)
    scores[0, 2] = 0.5  # the missed change gets a middling score
    m = write(tmp_path / "score.tif", scores, gdal.GDT_Float32)
    r = write(tmp_path / "ref.tif", REF)
    report = tmp_path / "report.html"
    rc = accuracy_main([m, r, "--change-values", "2", "--nochange-values", "1", "--threshold", "0.6",
                        "--report", str(report)])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {k: metrics[k] for k in HAND} == HAND
    assert metrics["threshold"] == 0.6 and metrics["map_type"] == "probability"
    # ranks: change scores {0.8 x4, 0.5}, no-change {0.8 x2, 0.2 x7}: AUC by pairs
    pos, neg = np.array([0.8] * 4 + [0.5]), np.array([0.8] * 2 + [0.2] * 7)
    auc = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert metrics["roc_auc"] == pytest.approx(auc, abs=1e-3)
    html = report.read_text(encoding="utf-8")
    assert "ROC curve" in html and "<polyline" in html
    assert metrics["report"] == str(report)


def test_nochange_defaults_to_every_other_value(tmp_path, capsys):
    m, r = write(tmp_path / "map.tif", MAP), write(tmp_path / "ref.tif", REF)
    assert accuracy_main([m, r, "--change-values", "2"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # the two unlabelled (0) pixels now count as no change: (2,0) and (3,0), both predicted 0
    assert {k: metrics[k] for k in HAND} == {**HAND, "tn": 9, "n": 16}


@pytest.mark.parametrize("args, message", [
    (["missing.tif", "REF", "--change-values", "2"], "Cannot open the change map"),
    (["MAP", "REF", "--change-values", "two"], "--change-values must be"),
    (["MAP", "REF", "--change-values", "2", "--nochange-values", "2"], "both change_values"),
    (["MAP", "REF", "--change-values", "2", "--band", "3"], "band 3 does not exist"),
])
def test_accuracy_bad_input_is_one_line_and_exit_1(tmp_path, capsys, args, message):
    m, r = write(tmp_path / "map.tif", MAP), write(tmp_path / "ref.tif", REF)
    args = [m if a == "MAP" else r if a == "REF" else str(tmp_path / a) if a.endswith(".tif") else a
            for a in args]
    assert accuracy_main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("metric-cd-accuracy: error:") and message in err


def test_console_scripts_are_installed(tmp_path):
    script = shutil.which("metric-cd-accuracy", path=str(SCRIPTS))
    assert script, "run: .venv/bin/pip install --no-deps --no-build-isolation -e ."
    m, r = write(tmp_path / "map.tif", MAP), write(tmp_path / "ref.tif", REF)
    done = subprocess.run([script, m, r, "--change-values", "2", "--nochange-values", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tp"] == 4
    done = subprocess.run([script, m, r, "--change-values", "x"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
