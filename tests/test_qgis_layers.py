"""The run's layer group as the desktop builds it: order, expanded legends, no band heading."""

from __future__ import annotations

import numpy as np
import pytest
from metric_change_detection.processing_provider.styling import LayerStyler, place_in_group
from osgeo import gdal
from qgis.core import (
    QgsLayerTreeModel,
    QgsLayerTreeRegistryBridge,
    QgsProcessingContext,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt

pytestmark = pytest.mark.qgis
GROUP = "Metric-CD before → after (12:00:00)"


def _raster(path, dtype, values, description):
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 8, 8, 1, dtype)
    ds.SetGeoTransform((500000, 10, 0, 4000000, 0, -10))
    band = ds.GetRasterBand(1)
    band.WriteArray(values)
    band.SetDescription(description)
    ds = None
    return str(path)


@pytest.fixture()
def outputs(tmp_path, qgis_new_project):
    """A probability, a mask and a polygon layer, added to the project as Processing does."""
    grid = np.arange(64).reshape(8, 8)
    prob = QgsRasterLayer(_raster(tmp_path / "p.tif", gdal.GDT_Float32, grid / 64.0,
                                  "Change probability"), "Change probability")
    mask = QgsRasterLayer(_raster(tmp_path / "m.tif", gdal.GDT_Byte, (grid % 3 == 0).astype(np.uint8),
                                  "Change mask"), "Change mask")
    polygons = QgsVectorLayer("Polygon?crs=EPSG:32633", "Change polygons", "memory")
    assert prob.isValid() and mask.isValid() and polygons.isValid()
    return {"probability": prob, "mask": mask, "polygons": polygons}


def _load(layers, order, insert_into_group):
    """Add each layer and run its styler in ``order``; with ``insert_into_group`` the project
    adds each new layer at the top of the run's group, as the desktop's insertion point (which
    follows the current layer) does once the first output is in the group."""
    project = QgsProject.instance()
    context = QgsProcessingContext()
    context.setProject(project)
    bridge, root = project.layerTreeRegistryBridge(), project.layerTreeRoot()
    try:
        for style in order:
            layer = layers[style]
            group = root.findGroup(GROUP)
            if insert_into_group and group is not None:
                bridge.setLayerInsertionPoint(QgsLayerTreeRegistryBridge.InsertionPoint(group, 0))
            project.addMapLayer(layer)
            LayerStyler(style, group=GROUP).postProcessLayer(layer, context, None)
    finally:  # the group dies with the project: no insertion point may outlive it
        bridge.setLayerInsertionPoint(QgsLayerTreeRegistryBridge.InsertionPoint(root, 0))
    return root.findGroup(GROUP)


@pytest.mark.parametrize("insert_into_group", [False, True], ids=["at-root", "desktop-insertion-point"])
@pytest.mark.parametrize("order", [("mask", "polygons", "probability"),
                                   ("probability", "polygons", "mask"),
                                   ("polygons", "mask", "probability")])
def test_polygons_on_top_then_probability_then_mask(outputs, order, insert_into_group):
    group = _load(outputs, order, insert_into_group)
    assert [n.layer() for n in group.children()] == [outputs[s] for s in ("polygons", "probability", "mask")]
    root = QgsProject.instance().layerTreeRoot()
    assert len(root.findLayers()) == 3, "a layer left twice or dropped"
    assert root.findLayer(outputs["probability"].id()).isExpanded()
    assert root.findLayer(outputs["mask"].id()).isExpanded()


def test_legends_show_the_classes_and_ramp_without_the_band_heading(outputs):
    group = _load(outputs, ("mask", "probability", "polygons"), False)
    model = QgsLayerTreeModel(QgsProject.instance().layerTreeRoot())
    legend = {n.layer().name(): model.layerLegendNodes(n) for n in group.children()}
    assert [n.data(Qt.DisplayRole) for n in legend["Change mask"]] == ["No change", "Change"]
    assert [type(n).__name__ for n in legend["Change probability"]] == ["QgsColorRampLegendNode"]
    for nodes in legend.values():
        assert not any("Band 1" in str(n.data(Qt.DisplayRole)) for n in nodes)


def test_a_layer_outside_any_group_stays_where_it_is(outputs):
    project = QgsProject.instance()
    project.addMapLayers(list(outputs.values()))  # the project owns them (as Processing's do)
    node = place_in_group(project, outputs["mask"], None, 3)
    assert node is project.layerTreeRoot().findLayer(outputs["mask"].id())
    assert not project.layerTreeRoot().findGroups()


def test_polygons_are_outlines_that_read_over_the_red_probability(outputs):
    _load(outputs, ("polygons", "probability", "mask"), False)
    fill = outputs["polygons"].renderer().symbol().symbolLayer(0)
    assert fill.brushStyle() == Qt.NoBrush, "a fill hides the probability and the imagery"
    assert fill.strokeColor().name() == "#00e5ff" and fill.strokeWidth() >= 0.4  # cyan, not red
