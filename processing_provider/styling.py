"""Layer post-processors: style the algorithm's outputs when QGIS loads them (main thread)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qgis.core import (
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
)

STYLES_DIR = Path(__file__).resolve().parents[1] / "resources" / "styles"


def style_path(name: str) -> Path:
    """Path of ``resources/styles/<name>.qml``."""
    return STYLES_DIR / f"{name}.qml"


class LayerStyler(QgsProcessingLayerPostProcessorInterface):
    """Loads one of the plugin's QML styles onto an output layer after it is loaded.

    Created per run by the algorithm and handed to
    ``context.layerToLoadOnCompletionDetails(output).setPostProcessor(...)`` (which takes
    ownership); QGIS calls :meth:`postProcessLayer` on the main thread.
    """

    def __init__(self, style: str, name: Optional[str] = None) -> None:
        super().__init__()
        self.style = style
        self.name = name

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
        layer.triggerRepaint()


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
