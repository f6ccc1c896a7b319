"""The HTML report's quicklooks (drawn as QGIS draws the layers), threshold words and charts."""

from __future__ import annotations

import base64
import re
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from metric_change_detection.core.demo_data import write_demo_pair
from metric_change_detection.core.outputs import write_mask, write_polygons
from metric_change_detection.processing_provider import quicklook, report
from osgeo import gdal, gdal_array, ogr
from qgis.core import QgsContrastEnhancement, QgsRasterLayer

pytestmark = pytest.mark.qgis


def decode(uri: str) -> np.ndarray:
    """A data URI's PNG as a (bands, H, W) array."""
    assert uri.startswith("data:image/png;base64,")
    name = f"/vsimem/test_{uuid.uuid4().hex}.png"
    gdal.FileFromMemBuffer(name, base64.b64decode(uri.split(",", 1)[1]))
    try:
        ds = gdal.Open(name)
        return ds.ReadAsArray()
    finally:
        gdal.Unlink(name)


def qgis_limits(path: str):
    """What QGIS does with a layer it loads without a style: per shown band (min, max), or None
    where it draws the values as they are."""
    layer = QgsRasterLayer(path, "layer")
    assert layer.isValid()
    renderer = layer.renderer()
    if renderer.type() == "singlebandgray":
        enhancements = [renderer.contrastEnhancement()]
    else:
        assert renderer.type() == "multibandcolor"
        enhancements = [renderer.redContrastEnhancement(), renderer.greenContrastEnhancement(),
                        renderer.blueContrastEnhancement()]
    return [None if e.contrastEnhancementAlgorithm() == QgsContrastEnhancement.NoEnhancement
            else (e.minimumValue(), e.maximumValue()) for e in enhancements]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """A 64 x 64 demo pair with a probability made from its truth, its mask and polygons."""
    folder = tmp_path_factory.mktemp("report")
    pair = write_demo_pair(folder, size=64, n_changes=3)
    truth_ds = gdal.Open(pair.truth)
    truth = truth_ds.GetRasterBand(1).ReadAsArray() > 0
    prob = np.where(truth, 0.97, 0.02).astype(np.float32)
    prob[:4, :4] = np.nan  # nodata corner
    path = str(folder / "p.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, 64, 64, 1, gdal.GDT_Float32)
    ds.SetGeoTransform(truth_ds.GetGeoTransform())
    ds.SetProjection(truth_ds.GetProjection())
    ds.GetRasterBand(1).SetNoDataValue(float("nan"))
    ds.GetRasterBand(1).WriteArray(prob)
    ds = None
    write_mask(path, str(folder / "m.tif"), 0.5)
    count = write_polygons(str(folder / "m.tif"), path, str(folder / "c.gpkg"))
    return SimpleNamespace(pair=pair, truth=truth, prob=path, mask=str(folder / "m.tif"),
                           polygons=str(folder / "c.gpkg"), count=count, folder=folder)


def result_of(outputs, **changes):
    fields = dict(
        output_path=outputs.prob, mask_path=outputs.mask, polygons_path=outputs.polygons,
        threshold=0.5, changed_fraction=float(outputs.truth.mean()), seconds=1.0, device="cpu",
        mode="scene", width=64, height=64, fe_bands="1,2,3 (first bands)",
        verdict="Some change.",
        history={"image": [0.2, 0.1, 0.05], "feature": [0.3, 0.35, 0.3],
                 "augmented": [0.0, 0.0, 0.0], "consistency": [0.0, 0.0, 0.0],
                 "infonce": [-1.0, -2.0, -2.5], "total": [-0.5, -1.5, -2.2]},
    )
    fields.update(changes)
    return SimpleNamespace(**fields)


def test_the_stretch_is_the_one_qgis_gives_a_layer_without_style(tmp_path, outputs):
    rng = np.random.default_rng(1)
    byte_rgb = str(tmp_path / "rgb8.tif")
    gdal_array.SaveArray(rng.integers(20, 200, (3, 80, 90)).astype(np.uint8), byte_rgb, "GTiff")
    grey = str(tmp_path / "grey16.tif")
    gdal_array.SaveArray(rng.gamma(2.0, 400.0, (80, 90)).astype(np.uint16), grey, "GTiff")
    for path, bands in ((outputs.pair.before, [1, 2, 3]), (byte_rgb, [1, 2, 3]), (grey, [1])):
        ours, theirs = quicklook.qgis_stretch(path, bands), qgis_limits(path)
        assert len(ours) == len(theirs)
        for mine, qgis in zip(ours, theirs):
            if qgis is None:
                assert mine is None, path
            else:
                tolerance = 0.01 * (qgis[1] - qgis[0])  # QGIS bins its histogram
                assert mine == pytest.approx(qgis, abs=tolerance), path
    ds = gdal.Open(outputs.pair.before)
    band = ds.GetRasterBand(1).ReadAsArray().astype(float)
    lo, hi = np.percentile(band, (2, 98))
    grid = quicklook.quicklook_grid(outputs.prob)
    image = quicklook.image_rgba(outputs.pair.before, [1, 2, 3], grid, outputs.prob)
    expected = np.clip(np.round((band - lo) / (hi - lo) * 255), 0, 255)  # same grid: 64 px
    assert np.abs(image[0].astype(float) - expected).max() <= 1.0


def test_the_dates_look_as_qgis_renders_them(outputs, tmp_path):
    from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    grid = quicklook.quicklook_grid(outputs.prob)
    layer = QgsRasterLayer(outputs.pair.after, "after")
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(layer.extent())
    settings.setOutputSize(QSize(grid.width, grid.height))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    png = str(tmp_path / "qgis.png")
    assert job.renderedImage().save(png)
    theirs = gdal.Open(png).ReadAsArray()[:3].astype(float)
    ours = quicklook.image_rgba(outputs.pair.after, [1, 2, 3], grid, outputs.prob)[:3]
    difference = np.abs(theirs - ours)
    assert np.median(difference) <= 1.0 and np.percentile(difference, 99) <= 4.0


def test_mask_and_polygon_quicklooks_are_drawn_in_the_styles(outputs):
    grid = quicklook.quicklook_grid(outputs.prob)
    assert (grid.width, grid.height) == (64, 64)
    mask = quicklook.mask_rgba(outputs.mask, grid)
    (r, g, b), opacity = quicklook.mask_colour()
    assert ((r, g, b), opacity) == ((227, 26, 28), pytest.approx(0.6))
    changed = outputs.truth.copy()
    changed[:4, :4] = False
    expected = [round(255 * (1 - opacity) + c * opacity) for c in (r, g, b)]
    assert (mask[:3, changed].T == expected).all()
    unchanged = ~outputs.truth
    unchanged[:4, :4] = False
    assert (mask[:3, unchanged] == 255).all()
    assert (mask[:3, :4, :4] == 200).all()  # nodata grey
    after = quicklook.image_rgba(outputs.pair.after, [1, 2, 3], grid, outputs.prob)
    drawn = quicklook.polygons_rgba(outputs.polygons, after, grid)
    fill, fill_opacity, outline = quicklook.polygon_colours()
    is_outline = (drawn[:3] == np.array(outline)[:, None, None]).all(axis=0)
    assert outputs.count > 0 and is_outline.sum() > 0
    # Outlines lie on change pixels' edges; far from any change the after image is untouched.
    from scipy.ndimage import binary_dilation

    near = binary_dilation(outputs.truth, iterations=2)
    assert not is_outline[~near].any()
    assert np.array_equal(drawn[:, ~near], after[:, ~near])
    inside = outputs.truth & ~binary_dilation(~outputs.truth, iterations=2)
    mixed = after[:3, inside] * (1 - fill_opacity) + np.array(fill)[:, None] * fill_opacity
    assert np.abs(drawn[:3, inside] - mixed).max() <= 1.0
    # Every polygon has an outline pixel.
    source = ogr.Open(outputs.polygons)
    assert source.GetLayer(0).GetFeatureCount() == outputs.count


def test_report_quicklooks_threshold_words_and_charts(outputs):
    html = report.build_report(
        result_of(outputs), outputs.pair.before, outputs.pair.after,
        parameters={"PRESET": "fast", "ALPHA": "0.001"}, settings={"iterations": 3},
        qgis_version="3.22",
    )
    uris = re.findall(r'src="(data:image/png;base64,[^"]+)"', html)
    captions = re.findall(r"<figcaption>([^<]+)", html)
    assert captions == ["Before", "After", "Change polygons over the after image",
                        "Change probability", "Change mask"]
    assert len(uris) == 5
    looks = [decode(u) for u in uris]
    assert all(look.shape == (4, 64, 64) for look in looks)
    assert 'width="300" height="300"' in html  # shown at the quicklook size, square here
    probability = looks[3]
    top = quicklook.probability_ramp()[-1]
    assert top == (1.0, (189, 0, 38), 255)
    assert probability[3, :4, :4].max() == 0  # nodata transparent
    changed = outputs.truth.copy()
    changed[:4, :4] = False
    colour = quicklook.colour_probability(np.array([[0.97]]))[:3, 0, 0]
    assert (probability[:3, changed].T == colour).all()
    # The threshold says how it was chosen and what the number means.
    assert "automatic: the no-change test at false-alarm rate 0.001." in html
    assert "change probability above 0.5000" in html
    assert "<th>PRESET</th><td>fast</td>" in html and "<th>BEFORE</th>" not in html
    assert '<details id="settings">' in html
    # Off terms named, not drawn; each drawn curve has its line.
    assert "Off in these settings (always 0, not drawn): augmented, consistency." in html
    assert html.count('<svg class="chart"') == 4
    for term in ("image", "feature", "infonce", "total"):
        assert f"<li><b>{term}</b>: " in html
    # One file: nothing outside it.
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", html):
        assert ref.startswith(("data:", "#")), ref


@pytest.mark.parametrize("parameters, mode, words", [
    ({}, "scene", "automatic: the no-change test at false-alarm rate 0.0001."),
    ({"THRESHOLD": "0.4"}, "scene", "given by the user"),
    ({"THRESHOLD": "otsu"}, "scene", "Otsu's threshold"),
    ({}, "per-tile", "automatic, per tile"),
])
def test_threshold_rule_in_words(parameters, mode, words):
    assert report.threshold_rule(parameters, mode, 0.5).startswith(words)


def test_log_axis_ticks_and_round_axis_ticks():
    parts = report.log_ticks(53388, 48, 10, 164)
    labels = re.findall(r">([^<]+)</text>", "".join(parts))
    assert labels == ["1", "10", "100", "1000", "10k"]
    ys = [float(y) for y in re.findall(r'<text x="[^"]+" y="([^"]+)"', "".join(parts))]
    gaps = np.diff(ys)
    assert np.allclose(gaps, gaps[0], atol=0.15)  # decades equally spaced: a true log axis
    assert "".join(parts).count("<line") == 4 * 9 + 5  # 1-9 per decade, then 10k-50k
    chart = report.histogram_chart(np.array([0.0] * 1000 + [0.99] * 3), 0.9)
    assert chart.count('fill="#fd8d3c"') == 2  # empty bins draw no bar
    assert 'text-anchor="end">threshold 0.900' in chart  # the label stays inside
    assert report.nice_ticks(0.11, 0.24) == pytest.approx([0.125, 0.15, 0.175, 0.2, 0.225])
    assert report.nice_ticks(1, 10, integers=True) == [2, 4, 6, 8, 10]
    assert report.nice_ticks(1, 2, integers=True) == [1, 2]
