"""Processing algorithms metriccd:cva, pcakmeans, irmad and changeaccuracy, run with processing.run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from metric_change_detection.core.accuracy import roc_auc
from osgeo import gdal, osr
from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputHtml,
    QgsProcessingOutputNumber,
    QgsProcessingParameterDefinition,
    QgsProject,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)

pytestmark = pytest.mark.qgis
ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("cva", "pcakmeans", "irmad")
ADVANCED = {
    "cva": {"TILE_SIZE", "SHARPNESS", "NORMALISE"},
    "pcakmeans": {"TILE_SIZE", "SHARPNESS", "BLOCK_SIZE", "COMPONENTS"},
    "irmad": {"TILE_SIZE", "SHARPNESS", "MAX_ITERATIONS", "TOLERANCE"},
    "changeaccuracy": {"BAND"},
}
METRICS = ("PRECISION", "RECALL", "F1", "KAPPA", "OVERALL_ACCURACY", "ROC_AUC")


def run(alg: str, params, feedback=None):
    import processing

    return processing.run(f"metriccd:{alg}", params, feedback=feedback or QgsProcessingFeedback())


def read(path) -> np.ndarray:
    ds = gdal.Open(str(path))  # keep: the band dies with its dataset
    band = ds.GetRasterBand(1)
    values = band.ReadAsArray().astype(np.float64)
    if band.DataType == gdal.GDT_Float32 and band.GetNoDataValue() is not None:
        values[values == band.GetNoDataValue()] = np.nan
    return values


def same_grid(a: str, b: str) -> None:
    da, db = gdal.Open(a), gdal.Open(b)
    assert (da.RasterXSize, da.RasterYSize) == (db.RasterXSize, db.RasterYSize)
    assert np.allclose(da.GetGeoTransform(), db.GetGeoTransform())
    assert da.GetSpatialRef().IsSame(db.GetSpatialRef())


def write(path: Path, array: np.ndarray, dtype=gdal.GDT_Byte) -> str:
    ds = gdal.GetDriverByName("GTiff").Create(str(path), array.shape[1], array.shape[0], 1, dtype)
    ds.SetGeoTransform((500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    ds.GetRasterBand(1).WriteArray(array)
    ds = None
    return str(path)


def test_provider_lists_the_four_algorithms(provider):
    ids = {alg.id() for alg in provider.algorithms()}
    assert {"metriccd:cva", "metriccd:pcakmeans", "metriccd:irmad", "metriccd:changeaccuracy",
            "metriccd:metricchangedetection"} <= ids


@pytest.mark.parametrize("name", [*BASELINES, "changeaccuracy"])
def test_definitions(provider, name):
    alg = provider.algorithm(name)
    assert alg is not None and alg.id() == f"metriccd:{name}"
    assert (alg.group(), alg.groupId()) == ("Change detection", "changedetection")
    assert not alg.icon().isNull()
    assert not alg.flags() & QgsProcessingAlgorithm.FlagNoThreading
    for param in alg.parameterDefinitions():
        assert param.help(), f"{param.name()} has no help text"
        advanced = bool(param.flags() & QgsProcessingParameterDefinition.FlagAdvanced)
        assert advanced == (param.name() in ADVANCED[name]), param.name()
    outputs = {o.name(): o for o in alg.outputDefinitions()}
    if name == "changeaccuracy":
        for key in METRICS:
            assert isinstance(outputs[key], QgsProcessingOutputNumber), key
        assert isinstance(outputs["OUTPUT_REPORT"], QgsProcessingOutputHtml)
        assert "OUTPUT_TABLE" in outputs
        return
    for key in ("OUTPUT", "OUTPUT_MASK", "OUTPUT_POLYGONS", "THRESHOLD_USED", "CHANGED_FRACTION"):
        assert key in outputs, key
    assert alg.parameterDefinition("OUTPUT_MASK").createByDefault() is False
    assert alg.parameterDefinition("THRESHOLD").flags() & QgsProcessingParameterDefinition.FlagOptional
    help_text = alg.shortHelpString()
    assert {"pcakmeans": "Celik", "irmad": "Nielsen", "cva": "no-change law"}[name] in help_text
    assert "OUTPUT_PROBABILITY" in {p.name() for p in alg.parameterDefinitions()}
    assert {"pcakmeans": "2009", "irmad": "2007", "cva": "change vector"}[name] in help_text


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_run_on_the_demo_pair(provider, demo_pair, tmp_path, name):
    paths = {"OUTPUT": tmp_path / "score.tif", "OUTPUT_MASK": tmp_path / "mask.tif",
             "OUTPUT_POLYGONS": tmp_path / "changes.gpkg"}
    results = run(name, {"BEFORE": demo_pair.before, "AFTER": demo_pair.after, "MIN_AREA": 2,
                         **{k: str(v) for k, v in paths.items()}})
    for key, path in paths.items():
        assert Path(results[key]) == path and path.is_file(), key
        if key != "OUTPUT_POLYGONS":
            same_grid(str(path), demo_pair.before)
    scores, mask, truth = read(paths["OUTPUT"]), read(paths["OUTPUT_MASK"]), read(demo_pair.truth) > 0
    assert roc_auc(scores, truth) > 0.9
    assert isinstance(results["THRESHOLD_USED"], float) and np.isfinite(results["THRESHOLD_USED"])
    assert results["CHANGED_FRACTION"] == pytest.approx((mask == 1).mean(), abs=1e-6)
    assert 0.0 < results["CHANGED_FRACTION"] < 0.5
    assert "% of the valid pixels are marked changed" in results["VERDICT"]
    assert (tmp_path / "score.qml").is_file()
    meta = gdal.Open(str(paths["OUTPUT"])).GetMetadata()
    assert meta["METRICCD_QGIS_ALGORITHM"] == f"metriccd:{name}"


def test_method_parameters_reach_the_core(provider, demo_pair, tmp_path):
    out = tmp_path / "s.tif"
    results = run("pcakmeans", {"BEFORE": demo_pair.before, "AFTER": demo_pair.after, "BLOCK_SIZE": 5,
                                "COMPONENTS": 2, "TILE_SIZE": 64, "THRESHOLD": 1.5, "OUTPUT": str(out)})
    meta = gdal.Open(str(out)).GetMetadata()
    assert meta["METRICCD_PCAKMEANS_BLOCK"] == "5" and meta["METRICCD_PCAKMEANS_COMPONENTS"] == "2"
    assert meta["METRICCD_SHARPNESS"] == "1"  # the default
    run("cva", {"BEFORE": demo_pair.before, "AFTER": demo_pair.after, "SHARPNESS": 0.5,
                "OUTPUT": str(out)})
    assert gdal.Open(str(out)).GetMetadata()["METRICCD_SHARPNESS"] == "0.5"
    assert results["THRESHOLD_USED"] == 1.5
    out = tmp_path / "z.tif"
    prob = tmp_path / "p.tif"
    run("irmad", {"BEFORE": demo_pair.before, "AFTER": demo_pair.after, "MAX_ITERATIONS": 3,
                  "TOLERANCE": 0.0, "BANDS_BEFORE": [1, 2], "BANDS_AFTER": [1, 2], "OUTPUT": str(out),
                  "OUTPUT_PROBABILITY": str(prob)})
    meta = gdal.Open(str(out)).GetMetadata()
    assert meta["METRICCD_IRMAD_ITERATIONS"] == "3"
    assert len(meta["METRICCD_IRMAD_RHO"].split(",")) == 2
    p = read(prob)
    assert np.nanmin(p) >= 0 and np.nanmax(p) <= 1


def test_errors_become_processing_exceptions(provider, demo_pair, tmp_path):
    with pytest.raises(QgsProcessingException, match="select the same number of bands"):
        run("cva", {"BEFORE": demo_pair.before, "AFTER": demo_pair.after, "BANDS_BEFORE": [1, 2],
                    "BANDS_AFTER": [1], "OUTPUT": str(tmp_path / "s.tif")})
    with pytest.raises(QgsProcessingException, match="n_components must be between 1 and block"):
        run("pcakmeans", {"BEFORE": demo_pair.before, "AFTER": demo_pair.after, "BLOCK_SIZE": 3,
                          "COMPONENTS": 10, "OUTPUT": str(tmp_path / "s.tif")})
    assert list(tmp_path.iterdir()) == []


class CancelAfterFirstProgress(QgsProcessingFeedback):
    """A user pressing Cancel as soon as the run reports progress."""

    def setProgress(self, progress):  # noqa: N802
        super().setProgress(progress)
        self.cancel()


def test_cancel_leaves_no_output(provider, demo_pair, tmp_path):
    with pytest.raises(QgsProcessingException, match="Cancel"):
        run("irmad", {"BEFORE": demo_pair.before, "AFTER": demo_pair.after,
                      "OUTPUT": str(tmp_path / "s.tif"), "OUTPUT_MASK": str(tmp_path / "m.tif")},
            CancelAfterFirstProgress())
    assert list(tmp_path.iterdir()) == []


def test_run_and_load_styles_the_score_with_its_range(provider, demo_pair, tmp_path, qgis_new_project):
    import processing

    params = {"BEFORE": demo_pair.before, "AFTER": demo_pair.after, "OUTPUT": str(tmp_path / "cva.tif"),
              "OUTPUT_MASK": str(tmp_path / "cva_mask.tif")}
    processing.runAndLoadResults("metriccd:cva", params, feedback=QgsProcessingFeedback())
    layers = {Path(lyr.source()).name: lyr for lyr in QgsProject.instance().mapLayers().values()}
    score = layers["cva.tif"]
    assert isinstance(score, QgsRasterLayer)
    renderer = score.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    lo, hi = np.nanpercentile(read(tmp_path / "cva.tif"), [2, 98])
    assert renderer.classificationMin() == pytest.approx(lo, rel=0.1, abs=0.05)
    assert renderer.classificationMax() == pytest.approx(hi, rel=0.1)
    assert layers["cva_mask.tif"].renderer().type() == "paletted"
    groups = QgsProject.instance().layerTreeRoot().findGroups()
    assert len(groups) == 1 and groups[0].name().startswith("CVA ")
    assert [n.layer() for n in groups[0].children()] == [score, layers["cva_mask.tif"]]


# ----------------------------------------------------------------------- changeaccuracy

MAP = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], np.uint8)
REF = np.array([[2, 2, 2, 1], [1, 1, 1, 1], [0, 2, 1, 1], [0, 1, 1, 2]], np.uint8)
TP, FP, FN, TN = 4, 2, 1, 7  # labelled = REF != 0, change = 2 (see test_core_cli_baselines)


def test_changeaccuracy_matches_the_hand_computed_matrix(provider, tmp_path):
    m, r = write(tmp_path / "map.tif", MAP), write(tmp_path / "ref.tif", REF)
    table, report = tmp_path / "table.gpkg", tmp_path / "report.html"
    results = run("changeaccuracy", {"CHANGE_MAP": m, "REFERENCE": r, "CHANGE_VALUES": "2",
                                     "NOCHANGE_VALUES": "1", "OUTPUT_TABLE": str(table),
                                     "OUTPUT_REPORT": str(report)})
    n = TP + FP + FN + TN
    po = (TP + TN) / n
    pe = ((TP + FP) * (TP + FN) + (FN + TN) * (FP + TN)) / n**2
    expected = {"PRECISION": TP / (TP + FP), "RECALL": TP / (TP + FN), "F1": 2 * TP / (2 * TP + FP + FN),
                "OVERALL_ACCURACY": po, "KAPPA": (po - pe) / (1 - pe)}
    for key, value in expected.items():
        assert results[key] == pytest.approx(value), key
    assert (results["TP"], results["FP"], results["FN"], results["TN"]) == (TP, FP, FN, TN)
    assert results["ROC_AUC"] is None  # binary map
    layer = QgsVectorLayer(results["OUTPUT_TABLE"], "table", "ogr")
    assert layer.isValid() and not layer.isSpatial()
    rows = {f["metric"]: f["value"] for f in layer.getFeatures()}
    assert (rows["tp"], rows["fp"], rows["fn"], rows["tn"]) == (TP, FP, FN, TN)
    assert rows["f1"] == pytest.approx(expected["F1"])
    assert Path(results["OUTPUT_REPORT"]) == report and "Confusion matrix" in report.read_text()


def test_changeaccuracy_of_a_score_map_gives_roc_auc(provider, tmp_path):
    scores = np.where(MAP == 1, 0.8, 0.2).astype(np.float32)
    m = write(tmp_path / "score.tif", scores, gdal.GDT_Float32)
    r = write(tmp_path / "ref.tif", REF)
    report = tmp_path / "report.html"
    results = run("changeaccuracy", {"CHANGE_MAP": m, "REFERENCE": r, "CHANGE_VALUES": "2",
                                     "NOCHANGE_VALUES": " 1 ", "THRESHOLD": 0.5,
                                     "OUTPUT_REPORT": str(report)})
    assert (results["TP"], results["FP"], results["FN"], results["TN"]) == (TP, FP, FN, TN)
    pos, neg = [0.8] * TP + [0.2] * FN, [0.8] * FP + [0.2] * TN
    auc = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert results["ROC_AUC"] == pytest.approx(auc, abs=1e-3)
    assert results["THRESHOLD_USED"] == 0.5
    assert "<polyline" in report.read_text()


def test_changeaccuracy_chains_with_a_baseline(provider, demo_pair, tmp_path):
    run("cva", {"BEFORE": demo_pair.before, "AFTER": demo_pair.after, "OUTPUT": str(tmp_path / "s.tif"),
                "OUTPUT_MASK": str(tmp_path / "m.tif")})
    on_scores = run("changeaccuracy", {"CHANGE_MAP": str(tmp_path / "s.tif"), "REFERENCE": demo_pair.truth,
                                       "CHANGE_VALUES": "1"})
    on_mask = run("changeaccuracy", {"CHANGE_MAP": str(tmp_path / "m.tif"), "REFERENCE": demo_pair.truth,
                                     "CHANGE_VALUES": "1"})
    assert on_scores["ROC_AUC"] > 0.9 and on_mask["ROC_AUC"] is None
    assert on_mask["F1"] > 0.6 and on_mask["KAPPA"] > 0.6


@pytest.mark.parametrize("values, message", [("two", "numbers separated by commas"), (" ", "Give the")])
def test_changeaccuracy_bad_values_name_the_fix(provider, tmp_path, values, message):
    m, r = write(tmp_path / "map.tif", MAP), write(tmp_path / "ref.tif", REF)
    with pytest.raises(QgsProcessingException, match=message):
        run("changeaccuracy", {"CHANGE_MAP": m, "REFERENCE": r, "CHANGE_VALUES": values})


def test_importing_the_baseline_algorithms_never_imports_torch():
    code = (
        "import sys\n"
        "import metric_change_detection.processing_provider.baseline_algorithms\n"
        "import metric_change_detection.processing_provider.accuracy_algorithm\n"
        "import metric_change_detection.processing_provider.provider\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=env, cwd=str(ROOT.parent))
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


@pytest.mark.slow
def test_qgis_process_runs_a_baseline_and_the_assessment(qgis_process, demo_pair, tmp_path):
    import json

    def answer(args):
        done = qgis_process(["--json", "run", *args])
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return json.loads(done.stdout[done.stdout.index("{"):])["results"]

    score, mask = tmp_path / "z.tif", tmp_path / "m.tif"
    results = answer(["metriccd:irmad", "--", f"BEFORE={demo_pair.before}", f"AFTER={demo_pair.after}",
                      f"OUTPUT={score}", f"OUTPUT_MASK={mask}"])
    assert Path(results["OUTPUT"]) == score and mask.is_file() and results["THRESHOLD_USED"] > 0
    same_grid(str(score), demo_pair.before)
    results = answer(["metriccd:changeaccuracy", "--", f"CHANGE_MAP={mask}",
                      f"REFERENCE={demo_pair.truth}", "CHANGE_VALUES=1"])
    assert results["F1"] > 0.6 and results["TP"] > 0
