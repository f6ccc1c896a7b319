"""The Processing algorithm metriccd:metricchangedetection, run headless with processing.run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from metric_change_detection.processing_provider.dependencies import install_hint
from metric_change_detection.processing_provider.provider import packages_target
from osgeo import gdal, ogr
from qgis.core import (
    QgsLayerTreeModel,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputHtml,
    QgsProcessingParameterDefinition,
    QgsProject,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt

pytestmark = pytest.mark.qgis
ALG = "metriccd:metricchangedetection"
ADVANCED = {"FE_BANDS", "ITERATIONS", "LEARNING_RATE", "GATE", "FEATURE_FUSION", "MODE", "TILE_SIZE",
            "BACKBONE", "WEIGHTS", "WEIGHTS_FILE", "DEVICE", "SEED", "SETTINGS", "DASK_SCHEDULER"}


def run(params, feedback=None):
    import processing

    return processing.run(ALG, params, feedback=feedback or QgsProcessingFeedback())


def read(path: str) -> np.ndarray:
    ds = gdal.Open(path)
    return ds.GetRasterBand(1).ReadAsArray().astype(np.float64)


def same_grid(a: str, b: str) -> None:
    da, db = gdal.Open(a), gdal.Open(b)
    assert (da.RasterXSize, da.RasterYSize) == (db.RasterXSize, db.RasterYSize)
    assert np.allclose(da.GetGeoTransform(), db.GetGeoTransform())
    assert da.GetSpatialRef().IsSame(db.GetSpatialRef())


def test_algorithm_definition(provider):
    alg = provider.algorithm("metricchangedetection")
    assert alg is not None and alg.id() == ALG
    assert alg.displayName() == "Metric Change Detection"
    assert (alg.group(), alg.groupId()) == ("Change detection", "changedetection")
    assert not alg.icon().isNull()
    assert not alg.flags() & QgsProcessingAlgorithm.FlagNoThreading
    help_text = alg.shortHelpString()
    for words in ("Bandara", "WACV 2025", "Suitable inputs", "Change probability", "Change mask",
                  "Change polygons", "Report"):
        assert words in help_text
    for param in alg.parameterDefinitions():
        assert param.help(), f"{param.name()} has no help text"
        advanced = bool(param.flags() & QgsProcessingParameterDefinition.FlagAdvanced)
        assert advanced == (param.name() in ADVANCED), param.name()
    outputs = {o.name(): o for o in alg.outputDefinitions()}
    assert isinstance(outputs["OUTPUT_REPORT"], QgsProcessingOutputHtml)
    for name in ("OUTPUT", "OUTPUT_MASK", "OUTPUT_POLYGONS", "THRESHOLD_USED", "CHANGED_FRACTION",
                 "VERDICT"):
        assert name in outputs
    assert alg.parameterDefinition("OUTPUT_MASK").createByDefault() is False
    assert alg.parameterDefinition("ALPHA").defaultValue() == pytest.approx(1e-4)


def test_an_identical_pair_is_no_significant_change(provider, fast_params, demo_pair, tmp_path):
    results = run({**fast_params, "AFTER": demo_pair.before, "OUTPUT": str(tmp_path / "p.tif"),
                   "OUTPUT_MASK": str(tmp_path / "m.tif")})
    assert results["CHANGED_FRACTION"] == 0.0
    assert results["VERDICT"].startswith("No significant change")
    assert (read(str(tmp_path / "m.tif")) == 1).sum() == 0
    assert results["CHANGED_AREA"] == 0.0 and results["CHANGED_HECTARES"] == 0.0


def test_run_returns_probability_on_the_input_grid(provider, fast_params, demo_pair, tmp_path):
    out = str(tmp_path / "probability.tif")
    results = run({**fast_params, "OUTPUT": out})
    assert results["OUTPUT"] == out
    same_grid(out, demo_pair.before)
    prob, truth = read(out), read(demo_pair.truth) > 0
    assert np.nanmin(prob) >= 0.0 and np.nanmax(prob) <= 1.0
    assert prob[truth].mean() > prob[~truth].mean() + 0.1, "planted changes not scored higher"
    assert 0.0 < results["THRESHOLD_USED"] < 1.0
    assert 0.0 <= results["CHANGED_FRACTION"] <= 1.0
    assert results["DEVICE_USED"] == "cpu" and results["SECONDS"] > 0


def test_mask_polygons_and_report(provider, fast_params, demo_pair, tmp_path):
    paths = {"OUTPUT": tmp_path / "p.tif", "OUTPUT_MASK": tmp_path / "m.tif",
             "OUTPUT_POLYGONS": tmp_path / "c.gpkg", "OUTPUT_REPORT": tmp_path / "report.html"}
    log = InfoLog()
    results = run({**fast_params, **{k: str(v) for k, v in paths.items()}, "THRESHOLD": 0.4}, log)
    for key, path in paths.items():
        assert Path(results[key]) == path and path.is_file(), key
    assert results["THRESHOLD_USED"] == pytest.approx(0.4)
    mask = read(str(paths["OUTPUT_MASK"]))
    same_grid(str(paths["OUTPUT_MASK"]), demo_pair.before)
    assert set(np.unique(mask)) <= {0, 1, 255}
    prob = read(str(paths["OUTPUT"]))
    # the default minimum area only removes regions of fewer pixels from the threshold's mask
    from metric_change_detection.core.config import MIN_AREA_PIXELS
    from scipy import ndimage

    assert ((mask == 1) <= (prob > 0.4)).all()
    labels, count = ndimage.label(mask == 1, structure=np.ones((3, 3)))
    assert count and np.bincount(labels.ravel())[1:].min() >= MIN_AREA_PIXELS
    assert results["CHANGED_FRACTION"] == pytest.approx((mask == 1).mean(), abs=1e-6)
    source = ogr.Open(str(paths["OUTPUT_POLYGONS"]))  # keep: the layer dies with its data source
    layer = source.GetLayer(0)
    assert layer.GetFeatureCount() > 0
    assert {layer.GetLayerDefn().GetFieldDefn(i).GetName()
            for i in range(layer.GetLayerDefn().GetFieldCount())} >= {"id", "area", "mean_prob"}
    # The count and total changed area: in the outputs and the log (10 m pixels, EPSG:32633).
    areas = [feature["area"] for feature in layer]
    assert results["POLYGON_COUNT"] == layer.GetFeatureCount() == len(areas)
    assert results["CHANGED_AREA"] == pytest.approx(100.0 * (mask == 1).sum())
    assert results["CHANGED_AREA"] == pytest.approx(sum(areas))
    assert results["CHANGED_HECTARES"] == pytest.approx(results["CHANGED_AREA"] / 1e4)
    line = next(m for m in log.infos if m.startswith("Changed area: "))
    assert f"{results['CHANGED_HECTARES']:,.4g} ha" in line
    assert f"{results['POLYGON_COUNT']} change polygons" in line
    html = paths["OUTPUT_REPORT"].read_text(encoding="utf-8")
    for section in ('id="summary"', 'id="inputs"', 'id="parameters"', 'id="loss"', 'id="histogram"',
                    'id="quicklooks"', "Bandara", "threshold 0.400", "<polyline", "data:image/png;base64,"):
        assert section in html, section
    assert html.count("data:image/png;base64,") == 5  # dates, polygons, probability, mask
    assert demo_pair.before in html and "cpu" in html and "1,2,3 (first bands)" in html
    assert f'class="verdict"><b>{results["VERDICT"]}</b>' in html
    assert (log.infos + log.texts).count(results["VERDICT"]) == 1  # said once in the log
    # What makes it worth sending: how the threshold was chosen, area, count and provenance.
    import torch
    from osgeo import gdal as gdal_module
    from qgis.core import Qgis

    assert "0.4000 (given by the user)" in html
    ha = results["CHANGED_HECTARES"]
    assert f"{ha:,.4g} ha" in html and f"<td>{results['POLYGON_COUNT']}</td>" in html
    for version in (Qgis.QGIS_VERSION, gdal_module.__version__, torch.__version__, np.__version__):
        assert f"<td>{version}</td>" in html, version
    assert 'id="provenance"' in html and "Metric Change Detection 0." in html
    assert '<details id="settings"><summary>' in html and "</details>" in html
    assert "Off in these settings (always 0, not drawn): augmented, consistency." in html
    assert "<b>feature</b>: " in html and html.count("<polyline") == 4  # image, feature, infonce, total
    assert 'font-size="10" text-anchor="end">10</text>' in html  # a log tick of the histogram
    assert 'class="colourbar"' in html and "linearGradient" in html


def test_run_and_load_results_styles_the_layers(provider, fast_params, tmp_path, qgis_new_project):
    import processing

    params = {**fast_params, "OUTPUT": str(tmp_path / "p.tif"), "OUTPUT_MASK": str(tmp_path / "m.tif"),
              "OUTPUT_POLYGONS": str(tmp_path / "c.gpkg")}
    results = processing.runAndLoadResults(ALG, params, feedback=QgsProcessingFeedback())
    loaded = QgsProject.instance().mapLayers().values()
    layers = {Path(lyr.source().split("|")[0]).name: lyr for lyr in loaded}
    prob = layers["p.tif"]
    assert isinstance(prob, QgsRasterLayer)
    renderer = prob.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    assert (renderer.classificationMin(), renderer.classificationMax()) == (0.0, 1.0)
    shader = renderer.shader().rasterShaderFunction()
    items = shader.colorRampItemList()
    assert items[0].value == 0.0 and items[-1].value == 1.0
    assert items[0].color.alpha() == 0, "near-zero probabilities should be transparent"
    assert renderer.legendSymbologyItems(), "no legend"
    mask = layers["m.tif"]
    assert mask.renderer().type() == "paletted"
    assert mask.renderer().opacity() == pytest.approx(0.6), "the imagery should show through"
    assert [label for label, _ in mask.legendSymbologyItems()] == ["No change", "Change"]
    assert mask.dataProvider().generateBandName(1) and mask.bandName(1).endswith("Change mask")
    polygons = layers["c.gpkg"]
    assert isinstance(polygons, QgsVectorLayer) and polygons.featureCount() > 0
    assert polygons.renderer().type() == "singleSymbol"
    assert results["OUTPUT"] == str(tmp_path / "p.tif")
    # One group named after the run, polygons on top, then the probability, then the mask.
    root = QgsProject.instance().layerTreeRoot()
    groups = root.findGroups()
    assert len(groups) == 1 and groups[0].name().startswith(
        f"Metric-CD {Path(fast_params['BEFORE']).stem} → {Path(fast_params['AFTER']).stem} (")
    assert [node.layer() for node in groups[0].children()] == [polygons, prob, mask]
    assert root.findLayer(prob.id()).isExpanded(), "the colour ramp should be in view"
    assert not [n for n in root.children() if n.nodeType() == n.NodeLayer], "layers left outside"
    # The Layers panel shows the classes and the ramp, without the cut-off band heading.
    model = QgsLayerTreeModel(root)
    mask_legend = [n.data(Qt.DisplayRole) for n in model.layerLegendNodes(root.findLayer(mask.id()))]
    assert mask_legend == ["No change", "Change"]
    prob_legend = model.layerLegendNodes(root.findLayer(prob.id()))
    assert [type(n).__name__ for n in prob_legend] == ["QgsColorRampLegendNode"]


class InfoLog(QgsProcessingFeedback):
    """Keeps what the algorithm writes to the log."""

    def __init__(self):
        super().__init__()
        self.infos = []
        self.texts = []  # progress texts, which the dialog's log shows too

    def pushInfo(self, info):  # noqa: N802
        self.infos.append(info)
        super().pushInfo(info)

    def setProgressText(self, text):  # noqa: N802
        self.texts.append(text)
        super().setProgressText(text)


class CancelAfterFirstProgress(QgsProcessingFeedback):
    """A user pressing Cancel as soon as the run reports progress."""

    def setProgress(self, progress):  # noqa: N802
        super().setProgress(progress)
        self.cancel()


def test_cancel_raises_and_leaves_no_output(provider, fast_params, tmp_path):
    out = tmp_path / "p.tif"
    with pytest.raises(QgsProcessingException, match="Cancel"):
        run({**fast_params, "OUTPUT": str(out), "OUTPUT_MASK": str(tmp_path / "m.tif")},
            CancelAfterFirstProgress())
    assert list(tmp_path.iterdir()) == []


def test_band_out_of_range_names_the_fix(provider, fast_params, tmp_path):
    with pytest.raises(QgsProcessingException, match="choose bands between 1 and 3"):
        run({**fast_params, "BANDS_BEFORE": [1, 7], "BANDS_AFTER": [1, 2], "OUTPUT": str(tmp_path / "p.tif")})
    assert not (tmp_path / "p.tif").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"WEIGHTS": 2, "WEIGHTS_FILE": None}, "no weights file was given"),
        ({"WEIGHTS": 2, "WEIGHTS_FILE": "/nonexistent/w.pth"}, "does not exist"),
        ({"SETTINGS": "width"}, "key=value"),
        ({"SETTINGS": "no_such_setting=1"}, "no_such_setting"),
        ({"OUTPUT_POLYGONS": "c.shp"}, "gpkg"),
        ({"FE_BANDS": [1, 2]}, "1 or 3"),
        ({"BANDS_BEFORE": [1, 2], "BANDS_AFTER": [1]}, "same number of bands"),
    ],
)
def test_bad_parameters_name_the_fix(provider, fast_params, tmp_path, overrides, message):
    params = {**fast_params, "OUTPUT": str(tmp_path / "p.tif"), **overrides}
    if str(params.get("OUTPUT_POLYGONS", "")).endswith(".shp"):
        params["OUTPUT_POLYGONS"] = str(tmp_path / "c.shp")
    with pytest.raises(QgsProcessingException, match=message):
        run(params)


def test_cuda_request_without_gpu_names_the_fix(provider, fast_params, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(QgsProcessingException, match="choose device 'auto' or 'cpu'"):
        run({**fast_params, "DEVICE": 2, "OUTPUT": str(tmp_path / "p.tif")})


def test_missing_torch_names_package_and_install_command(provider, fast_params, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(QgsProcessingException) as info:
        run({**fast_params, "OUTPUT": str(tmp_path / "p.tif")})
    message = str(info.value)
    assert "'torch'" in message and "'torchvision'" in message
    assert install_hint(target=packages_target()).command in message
    assert not (tmp_path / "p.tif").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"PRESET": 0, "MODE": 1, "TILE_SIZE": 64, "LEARNING_RATE": 0.01, "SEED": 3,
                      "GATE": 0.0, "FEATURE_FUSION": 1.5}, id="per-tile"),
        pytest.param({"PRESET": 2, "DEVICE": 0, "WEIGHTS": 1, "ITERATIONS": 2}, id="paper-auto-random"),
        pytest.param({"BANDS_BEFORE": [3, 2, 1], "BANDS_AFTER": [3, 2, 1], "FE_BANDS": [1]}, id="bands"),
        # default: a full-resolution map, whose threshold leaves regions of a few pixels
        pytest.param({"PRESET": 0, "MIN_AREA": 20, "THRESHOLD": 0.3}, id="min-area"),
        pytest.param({"PRESET": 0, "MIN_AREA": 0, "THRESHOLD": 0.3}, id="min-area-0"),
        pytest.param({"BACKBONE": None, "ITERATIONS": None, "SETTINGS": "width=8; depth=2; temperature=0.2"},
                     id="preset-values"),
    ],
)
def test_every_parameter_reaches_the_core(provider, fast_params, demo_pair, tmp_path, overrides):
    params = {**fast_params, **overrides, "OUTPUT": str(tmp_path / "p.tif"),
              "OUTPUT_MASK": str(tmp_path / "m.tif")}
    params = {k: v for k, v in params.items() if v is not None}
    results = run(params)
    same_grid(results["OUTPUT"], demo_pair.before)
    ds = gdal.Open(results["OUTPUT"])
    import json

    config = json.loads(ds.GetMetadataItem("METRICCD_CONFIG"))
    if "MODE" in overrides:
        assert ds.GetMetadataItem("METRICCD_MODE") == "per-tile"
        assert config["learning_rate"] == pytest.approx(0.01) and config["seed"] == 3
        assert config["gate"] == 0.0 and config["feature_fusion"] == pytest.approx(1.5)
        assert config["depth"] == 2 and config["width"] == 8
    if overrides.get("PRESET") == 2:
        assert config["iterations"] == 2 and config["weights"] == "random" and config["device"] == "auto"
        assert config["augmentation"] == "published" and config["gate"] == 1.0
        assert config["feature_fusion"] == 0.0
    if "FE_BANDS" in overrides:
        assert read(results["OUTPUT"]).shape == (96, 96)
    if "MIN_AREA" in overrides:
        mask = read(results["OUTPUT_MASK"])
        assert results["THRESHOLD_USED"] == pytest.approx(0.3)
        from scipy import ndimage

        labels, count = ndimage.label(mask == 1, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())[1:]
        if overrides["MIN_AREA"]:
            assert count and sizes.min() >= 20
        else:  # 0 keeps every region: the mask is the threshold's
            assert np.array_equal(mask == 1, read(results["OUTPUT"]) > 0.3)
            assert sizes.min() < 20
    if "BACKBONE" in overrides:
        assert config["backbone"] == "mobilenet_v2" and config["iterations"] == 20  # the fast preset's
        assert config["temperature"] == pytest.approx(0.2)


def test_layers_from_the_project_are_accepted(provider, fast_params, demo_pair, tmp_path, qgis_new_project):
    before = QgsRasterLayer(demo_pair.before, "before")
    after = QgsRasterLayer(demo_pair.after, "after")
    QgsProject.instance().addMapLayers([before, after])
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    import processing

    results = processing.run(ALG, {**fast_params, "BEFORE": before.id(), "AFTER": after,
                                   "OUTPUT": "TEMPORARY_OUTPUT"}, context=context)
    assert results["OUTPUT"].endswith(".tif") and Path(results["OUTPUT"]).is_file()


def test_help_panel_paragraphs_have_no_inner_line_breaks(provider):
    """QGIS's help panel makes every line of shortHelpString a paragraph: one line each."""
    ids = {alg.name() for alg in provider.algorithms()}
    assert ids >= {"metricchangedetection", "cva", "pcakmeans", "irmad", "changeaccuracy"}
    for alg in provider.algorithms():
        text = alg.shortHelpString()
        assert "\n" not in text and "\r" not in text, alg.name()
        assert text.startswith("<p>") and "  " not in text, alg.name()
        for param in alg.parameterDefinitions():
            assert "\n" not in param.help(), (alg.name(), param.name())


def test_labels_say_it_once_and_show_the_presets_values(provider):
    """No piled-up brackets (QGIS adds "[optional]"); the presets' values are in view."""
    for alg in provider.algorithms():
        for param in alg.parameterDefinitions():
            assert "[" not in param.description(), (alg.name(), param.description())
    alg = provider.algorithm("metricchangedetection")
    label = {p.name(): p.description() for p in alg.parameterDefinitions()}
    assert label["ITERATIONS"] == "Iterations (preset: 20, paper: 50)"
    assert label["LEARNING_RATE"] == "Learning rate (preset: 0.001, paper: 0.0001)"
    assert label["GATE"] == "Evidence gate, 1 = on, 0 = off (preset: 1)"
    assert label["FEATURE_FUSION"] == "Feature fusion weight, 0 = off (preset: 0.5, paper: 0)"
    assert label["BACKBONE"] == "Feature extractor backbone (preset: MobileNetV2, paper: VGG16)"
    iterations = alg.parameterDefinition("ITERATIONS").help()
    assert "default 20, fast 20, paper 50" in iterations
    threshold = alg.parameterDefinition("THRESHOLD").help()
    assert "false-alarm rate" in threshold and "Otsu" not in threshold
    assert "Threshold used" in threshold and "0.97 to 0.99" in threshold  # what the number means
    from metric_change_detection.core.config import MIN_AREA_PIXELS

    for algorithm in (alg, provider.algorithm("cva")):
        min_area = algorithm.parameterDefinition("MIN_AREA")
        assert min_area.defaultValue() == MIN_AREA_PIXELS and min_area.minimum() == 0
        assert "pixels" in min_area.description() and "0 = keep all" in min_area.description()
        assert f"The default, {MIN_AREA_PIXELS}," in min_area.help()
    assert f"default {MIN_AREA_PIXELS} pixels" in alg.shortHelpString()
    assert "20 iterations, learning rate 0.001" in alg.shortHelpString()


def test_changed_area_units_follow_the_crs(tmp_path):
    from metric_change_detection.processing_provider.summary import summarise
    from osgeo import osr

    def raster(name, epsg=None, geotransform=None):
        ds = gdal.GetDriverByName("GTiff").Create(str(tmp_path / name), 4, 2, 1, gdal.GDT_Byte)
        ds.GetRasterBand(1).WriteArray(np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.uint8))
        if geotransform:
            ds.SetGeoTransform(geotransform)
        if epsg:
            srs = osr.SpatialReference()
            srs.ImportFromEPSG(epsg)
            ds.SetProjection(srs.ExportToWkt())
        ds = None
        return str(tmp_path / name)

    utm = raster("utm.tif", 32633, (600000, 20, 0, 5e6, 0, -20))
    assert summarise(utm, 0.0, utm).in_words() == "Changed area: 0.12 ha (1,200 m²)"
    wgs = raster("wgs.tif", 4326, (10, 0.5, 0, 50, 0, -0.5))
    summary = summarise(wgs, 0.0, wgs)
    assert (summary.area, summary.hectares, summary.units) == (0.75, None, "square degree")
    plain = raster("plain.tif")
    assert summarise(plain, 0.375).in_words() == "Changed area: 3 pixels"
    # large areas without exponents (the Las Vegas run read "495.3 ha (4.9533e+06 m²)")
    from metric_change_detection.processing_provider.summary import ChangeSummary

    big = ChangeSummary(area=4953300.0, hectares=495.33, polygons=358, units="m²")
    assert big.in_words() == "Changed area: 495.3 ha (4,953,300 m²); 358 change polygons"
    assert ChangeSummary(1.2345e9, 123450.0, 1, "m²").in_words() == (
        "Changed area: 123,450 ha (1,234,500,000 m²); 1 change polygon")
    assert ChangeSummary(0.75, None, None, "square degree").in_words() == "Changed area: 0.75 square degree"


def test_report_axes_have_round_ticks_and_off_terms_are_named():
    from metric_change_detection.processing_provider import report

    assert report.nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.5, 1.0])
    assert report.nice_ticks(-0.37, -0.2) == pytest.approx([-0.35, -0.3, -0.25, -0.2])
    assert report.nice_ticks(1, 20) == pytest.approx([5, 10, 15, 20])
    assert report.is_off([0.0, 0.0]) and not report.is_off([0.0, 0.1]) and not report.is_off([])
    labels = "".join(report.log_ticks(53388, 48, 10, 164))
    for label in (">1<", ">10<", ">100<", ">1000<", ">10k<"):
        assert label in labels
    assert ">100k<" not in labels and ">0<" not in labels
    chart = report.loss_chart("total", [3.0, 2.0, 1.5, 1.4])
    assert chart.count("<text") >= 2 + 4 + 4  # title, axis name, y and x ticks
