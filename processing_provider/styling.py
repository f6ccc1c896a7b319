"""Layer post-processors: style the algorithm's outputs when QGIS loads them (main thread)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qgis.core import (
    QgsLayerTreeLayer,
    QgsMapLayer,
    QgsMapLayerLegendUtils,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProject,
    QgsRasterLayer,
    QgsSimpleLegendNode,
    QgsSingleBandPseudoColorRenderer,
)

STYLES_DIR = Path(__file__).resolve().parents[1] / "resources" / "styles"
#: Position of each kind of output in its run's layer group, top first: the map reads at once.
RANKS = {"polygons": 0, "probability": 1, "score": 2, "mask": 3}
RANK_PROPERTY = "metriccd/rank"


def style_path(name: str) -> Path:
    """Path of ``resources/styles/<name>.qml``."""
    return STYLES_DIR / f"{name}.qml"


class LayerStyler(QgsProcessingLayerPostProcessorInterface):
    """Loads one of the plugin's QML styles onto an output layer after it is loaded.

    Created per run by the algorithm and handed to
    ``context.layerToLoadOnCompletionDetails(output).setPostProcessor(...)`` (which takes
    ownership); QGIS calls :meth:`postProcessLayer` on the main thread. With ``group`` the
    layer moves into the project's layer group of that name (made when missing), at its rank
    in :data:`RANKS`; the legends of the rasters (colour ramp, classes) are expanded. The legend's
    band heading ("Band 1: Change mask (Gray)", cut off in the Layers panel) is left out: the
    layer's name says what it is.
    """

    def __init__(self, style: str, name: Optional[str] = None, group: Optional[str] = None) -> None:
        super().__init__()
        self.style = style
        self.name = name
        self.group = group

    def postProcessLayer(  # noqa: N802 (QGIS API name)
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        """Apply the style (and a layer name) to ``layer``."""
        if layer is None or not layer.isValid():
            return
        path = style_path(self.style)
        message, ok = layer.loadNamedStyle(str(path))
        if not ok:
            if feedback is not None:
                feedback.pushWarning(f"Could not apply the style {path.name}: {message}")
            return
        if self.style == "probability" and isinstance(layer, QgsRasterLayer):
            _pin_probability_range(layer)
        if self.name:
            layer.setName(self.name)
        self._place(layer, context)
        layer.triggerRepaint()

    def _place(self, layer: QgsMapLayer, context: QgsProcessingContext) -> None:
        """Move ``layer`` into its run's group at its rank; expand the probability's legend."""
        project = (context.project() if context is not None else None) or QgsProject.instance()
        node = place_in_group(project, layer, self.group, RANKS.get(self.style, len(RANKS)))
        if node is not None:
            node.setExpanded(self.style in ("probability", "score", "mask"))
            hide_band_heading(node)


def place_in_group(
    project: QgsProject, layer: QgsMapLayer, group: Optional[str], rank: int
) -> Optional[QgsLayerTreeLayer]:
    """Move ``layer``'s layer-tree node into the layer group ``group`` (made at the top when
    missing) above the layers of a higher rank; the node now showing it (None: not in the tree).

    Without ``group`` the node stays where it is.
    """
    root = project.layerTreeRoot()
    node = root.findLayer(layer.id())
    if node is None or not group:
        return node
    target = root.findGroup(group)
    if target is None:
        target = root.insertGroup(0, group)
    moved = node.clone()
    moved.setCustomProperty(RANK_PROPERTY, rank)
    # Before the first other child of a higher rank. The desktop may already have added the
    # layer inside the group (its insertion point follows the current layer), unranked and
    # above the others: it is skipped, then removed.
    children = target.children()
    index = next((i for i, child in enumerate(children)
                  if not _shows(child, layer)
                  and int(child.customProperty(RANK_PROPERTY, len(RANKS))) > rank), len(children))
    target.insertChildNode(index, moved)
    node.parent().removeChildNode(node)
    return moved


def _shows(node, layer: QgsMapLayer) -> bool:
    """Whether the layer-tree ``node`` is a node of ``layer``."""
    return isinstance(node, QgsLayerTreeLayer) and node.layerId() == layer.id()


def hide_band_heading(node: QgsLayerTreeLayer) -> None:
    """Leave the band-name heading out of the legend of the raster layer of ``node``.

    QGIS 3.22's raster renderers put the band's name above their legend items; the node's
    legend order (the Layers panel and print layouts follow it) keeps every item but that.
    """
    layer = node.layer()
    if not isinstance(layer, QgsRasterLayer) or layer.legend() is None:
        return
    items = layer.legend().createLayerTreeModelLegendNodes(node)
    order = [i for i, item in enumerate(items) if not isinstance(item, QgsSimpleLegendNode)]
    if len(order) < len(items):
        QgsMapLayerLegendUtils.setLegendNodeOrder(node, order)
        layer.legendChanged.emit()


def keep_alive(context: QgsProcessingContext, styler: LayerStyler) -> None:
    """Tie ``styler``'s Python object to ``context``.

    ``setPostProcessor`` hands the C++ object to QGIS, but the Python subclass would die with
    the algorithm copy that ``QgsProcessingAlgorithm.run()`` deletes before the results are
    loaded (``processing.runAndLoadResults``); the context outlives both.
    """
    try:
        held = context.__dict__.setdefault("_metriccd_stylers", [])
    except AttributeError:  # pragma: no cover - a wrapper without instance attributes
        return
    held.append(styler)


def _pin_probability_range(layer: QgsRasterLayer) -> None:
    """Keep the pseudocolour ramp on 0-1 whatever the layer's own statistics are."""
    renderer = layer.renderer()
    if isinstance(renderer, QgsSingleBandPseudoColorRenderer):
        if renderer.classificationMin() != 0.0 or renderer.classificationMax() != 1.0:
            renderer.setClassificationMin(0.0)
            renderer.setClassificationMax(1.0)
