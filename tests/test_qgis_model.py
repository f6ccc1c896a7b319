"""The shipped graphical model chains GDAL clip -> Metric Change Detection -> filter + zonal statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
from osgeo import gdal
from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProject,
    QgsVectorLayer,
)

pytestmark = pytest.mark.qgis
MODEL = Path(__file__).resolve().parents[1] / "resources" / "models" / "metric_cd_example.model3"


@pytest.fixture()
def model(provider) -> QgsProcessingModelAlgorithm:
    alg = QgsProcessingModelAlgorithm()
    assert alg.fromFile(str(MODEL)), f"cannot read {MODEL}"
    return alg


def test_model_is_valid_and_chains_the_three_steps(model):
    ok, errors = model.validate()
    assert ok, errors
    ids = {c.algorithmId() for c in model.childAlgorithms().values()}
    assert {"gdal:cliprasterbyextent", "metriccd:metricchangedetection",
            "native:extractbyattribute", "native:zonalstatisticsfb"} <= ids
    assert model.helpContent().get("ALG_DESC")


def test_model_runs_headless(model, demo_pair, fast_params, tmp_path):
    import processing

    ds = gdal.Open(demo_pair.before)
    x0, px, _, y0, _, py = ds.GetGeoTransform()
    # the central 80 x 80 pixels
    extent = f"{x0 + 8 * px},{x0 + 88 * px},{y0 + 88 * py},{y0 + 8 * py} [EPSG:32633]"
    params = {
        "before": demo_pair.before, "after": demo_pair.after, "extent": extent, "min_area": 300.0,
        "preset": 1, "iterations": 3, "weights_file": fast_params.get("WEIGHTS_FILE"),
        "metriccd:Change probability": str(tmp_path / "probability.tif"),
        "stats:Large changes": str(tmp_path / "large_changes.gpkg"),
    }
    if not params["weights_file"]:
        pytest.skip("offline backbone weights are not installed (ImageNet would be downloaded)")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    results = processing.run(model, params, context=context, feedback=QgsProcessingFeedback())
    prob = gdal.Open(results["metriccd:Change probability"])
    assert (prob.RasterXSize, prob.RasterYSize) == (80, 80)
    assert prob.GetGeoTransform()[0] == pytest.approx(x0 + 8 * px)
    layer = QgsVectorLayer(results["stats:Large changes"], "large", "ogr")
    assert layer.isValid() and layer.featureCount() > 0
    names = layer.fields().names()
    assert {"area", "prob_mean", "prob_max"} <= set(names)
    for feature in layer.getFeatures():
        assert feature["area"] >= 300.0
        assert 0.0 <= feature["prob_mean"] <= feature["prob_max"] <= 1.0
