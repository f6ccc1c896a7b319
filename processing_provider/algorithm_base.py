"""What the plugin's Processing algorithms share: identity, parameter helpers, error mapping.

Importing this module never imports torch.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..core.config import ALPHA as DEFAULT_ALPHA
from ..core.config import MIN_AREA_PIXELS
from ..core.errors import Cancelled, MetricCDError, MissingDependency
from .dependencies import install_message
from .provider import packages_target
from .styling import LayerStyler, keep_alive
from .summary import summarise

ICON = Path(__file__).resolve().parents[1] / "resources" / "icon.svg"
GEOTIFF = (".tif", ".tiff")
GEOPACKAGE = (".gpkg",)


def is_set(parameters: Dict[str, Any], key: str) -> bool:
    """Whether an optional parameter was given a value."""
    value = parameters.get(key)
    return value is not None and value != ""


def raster_path(alg: QgsProcessingAlgorithm, parameters, key: str, context) -> str:
    """Source path of a file-based (GDAL) raster layer parameter; QgsProcessingException otherwise."""
    layer: Optional[QgsRasterLayer] = alg.parameterAsRasterLayer(parameters, key, context)
    if layer is None or not layer.isValid():
        raise QgsProcessingException(
            f"The {key.lower()} raster could not be loaded; choose a raster layer or a raster "
            "file GDAL can read."
        )
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"The {key.lower()} layer '{layer.name()}' is not a file-based raster (provider "
            f"'{layer.providerType()}'); export it to a GeoTIFF first (right-click > Export > "
            "Save As...)."
        )
    return layer.source()


def raster_file_problem(value: Any, key: str) -> Optional[str]:
    """Why an existing file given as the raster parameter ``key`` is no raster, or None.

    Only a plain path to something that exists is checked (layers, layer ids and GDAL virtual
    paths are left to QGIS): QGIS itself would report such a file as "not found".
    """
    if not isinstance(value, str) or not value or value.startswith("/vsi"):
        return None
    if not os.path.exists(value):
        return None
    from ..core.raster_io import check_raster

    try:
        check_raster(value, key.capitalize())
    except MetricCDError as exc:
        return str(exc)
    return None


def whole_number_problem(value: Any, key: str) -> Optional[str]:
    """Why ``value`` of the whole-number parameter ``key`` is refused (QGIS rounds it), or None."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None  # an expression or a property: QGIS evaluates and checks it
    if math.isfinite(number) and number != round(number):
        return (f"{key} must be a whole number, got {value!r}; give e.g. {round(number)} "
                "(QGIS would round it without a word).")
    return None


def processing_error(exc: MetricCDError, install_hint: bool = False) -> QgsProcessingException:
    """The QgsProcessingException to raise for a core error (its message names the fix).

    ``Cancelled`` gets a "Cancelled:" prefix. With ``install_hint``, a ``MissingDependency``
    other than the optional dask also gets the pip command (default: torch and torchvision).
    """
    if isinstance(exc, Cancelled):
        return QgsProcessingException(f"Cancelled: {exc}")
    if install_hint and isinstance(exc, MissingDependency):
        name = getattr(exc, "name", None)
        if name not in ("dask", "distributed"):  # optional; the message has the pip command
            return QgsProcessingException(
                f"{exc} {install_message([name] if name else ['torch', 'torchvision'], packages_target())}"
            )
    return QgsProcessingException(str(exc))


def run_group_name(method: str, before: str, after: str) -> str:
    """The layer group of one run's outputs: "Metric-CD before → after (14:02:31)"."""
    stems = (Path(before.split("|")[0]).stem, Path(after.split("|")[0]).stem)
    return f"{method} {stems[0]} → {stems[1]} ({time.strftime('%H:%M:%S')})"


class Progress:
    """Forwards core progress to the feedback, logging each new message at most every second."""

    def __init__(self, feedback: QgsProcessingFeedback) -> None:
        self.feedback = feedback
        self.last_text = ""
        self.last_time = 0.0

    def __call__(self, percent: float, message: str) -> None:
        self.feedback.setProgress(max(0.0, min(100.0, float(percent))))
        now = time.monotonic()
        stage = message.split(" ")[0] != self.last_text.split(" ")[0]
        if message and message != self.last_text and (stage or now - self.last_time >= 1.0):
            self.feedback.setProgressText(message)
            self.last_text, self.last_time = message, now


class ChangeDetectionAlgorithm(QgsProcessingAlgorithm):
    """Identity and parameter helpers of the plugin's algorithms (toolbox group "Change detection").

    Subclasses set ``ALG_ID``, ``DISPLAY`` and ``HELP`` (parameter name -> help text) and
    define ``tags``, ``shortHelpString``, ``initAlgorithm`` and ``processAlgorithm``.
    """

    ALG_ID = ""
    DISPLAY = ""
    HELP: Dict[str, str] = {}

    def __init__(self) -> None:
        super().__init__()
        self._stylers: List[LayerStyler] = []  # the only per-run state: post-processors

    def tr(self, text: str) -> str:
        """Translate ``text``."""
        return QCoreApplication.translate("MetricChangeDetection", text)

    def createInstance(self) -> ChangeDetectionAlgorithm:  # noqa: N802
        """A fresh instance of the same algorithm (QGIS runs every execution on its own copy)."""
        return type(self)()

    def name(self) -> str:
        """Algorithm id inside the provider."""
        return self.ALG_ID

    def displayName(self) -> str:  # noqa: N802
        """Name shown in the toolbox."""
        return self.tr(self.DISPLAY)

    def group(self) -> str:
        """Toolbox group."""
        return self.tr("Change detection")

    def groupId(self) -> str:  # noqa: N802
        """Toolbox group id."""
        return "changedetection"

    def icon(self) -> QIcon:
        """Algorithm icon."""
        return QIcon(str(ICON))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """The algorithm's own one-line messages (a file that is no raster, a fraction given
        for a whole number) before QGIS's checks, whose messages are terse."""
        for definition in self.parameterDefinitions():
            key, value = definition.name(), parameters.get(definition.name())
            problem = None
            if isinstance(definition, QgsProcessingParameterRasterLayer):
                problem = raster_file_problem(value, key)
            elif (isinstance(definition, QgsProcessingParameterNumber)
                  and definition.dataType() == QgsProcessingParameterNumber.Integer):
                problem = whole_number_problem(value, key)
            if problem:
                return False, problem
        return super().checkParameterValues(parameters, context)

    def _add(self, param: QgsProcessingParameterDefinition, advanced: bool = False) -> None:
        """Add ``param`` with its help text from ``HELP``, optionally as an Advanced parameter."""
        param.setHelp(self.tr(self.HELP[param.name()]))
        if advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(param)

    def _optional_double(self, parameters, key: str, context, default: Any) -> Any:
        """The parameter as a float when set, else ``default``."""
        if not is_set(parameters, key):
            return default
        return self.parameterAsDouble(parameters, key, context)

    def _output(self, parameters, key: str, context, suffixes: Tuple[str, ...]) -> Optional[str]:
        """Path of an optional file output; QgsProcessingException when its suffix is wrong."""
        if not is_set(parameters, key):
            return None
        path = self.parameterAsOutputLayer(parameters, key, context)
        if not path:
            return None
        if Path(path).suffix.lower() not in suffixes:
            raise QgsProcessingException(
                f"{key} must be a {' or '.join(suffixes)} file, got '{path}'; change the file "
                f"extension to {suffixes[0]}."
            )
        return path

    def _stylise(self, context: QgsProcessingContext, path: Optional[str], styler: LayerStyler) -> None:
        """Attach ``styler`` to the output ``path`` when QGIS will load it."""
        if path and context.willLoadLayerOnCompletion(path):
            self._stylers.append(styler)
            keep_alive(context, styler)
            context.layerToLoadOnCompletionDetails(path).setPostProcessor(styler)


class RasterPairAlgorithm(ChangeDetectionAlgorithm):
    """Parameters and outputs shared by the algorithms comparing a before and an after raster."""

    BEFORE = "BEFORE"
    AFTER = "AFTER"
    BANDS_BEFORE = "BANDS_BEFORE"
    BANDS_AFTER = "BANDS_AFTER"
    THRESHOLD = "THRESHOLD"
    ALPHA = "ALPHA"
    MIN_AREA = "MIN_AREA"
    TILE_SIZE = "TILE_SIZE"
    OUTPUT = "OUTPUT"
    OUTPUT_MASK = "OUTPUT_MASK"
    OUTPUT_POLYGONS = "OUTPUT_POLYGONS"
    THRESHOLD_USED = "THRESHOLD_USED"
    CHANGED_FRACTION = "CHANGED_FRACTION"
    VERDICT = "VERDICT"
    SECONDS = "SECONDS"
    CHANGED_AREA = "CHANGED_AREA"
    CHANGED_HECTARES = "CHANGED_HECTARES"
    POLYGON_COUNT = "POLYGON_COUNT"

    # ------------------------------------------------------------------ parameters

    def _add_raster_pair(self) -> None:
        """Add the before / after rasters and their band selections."""
        self._add(QgsProcessingParameterRasterLayer(self.BEFORE, self.tr("Before image")))
        self._add(QgsProcessingParameterRasterLayer(self.AFTER, self.tr("After image")))
        self._add(QgsProcessingParameterBand(
            self.BANDS_BEFORE, self.tr("Bands of the before image"), None,
            self.BEFORE, True, True))
        self._add(QgsProcessingParameterBand(
            self.BANDS_AFTER, self.tr("Bands of the after image"), None,
            self.AFTER, True, True))

    def _add_decision(self, threshold_label: str, maximum: Optional[float]) -> None:
        """Add the optional fixed threshold and the automatic decision's false-alarm rate."""
        self._add(QgsProcessingParameterNumber(
            self.THRESHOLD, self.tr(threshold_label), QgsProcessingParameterNumber.Double, None,
            True, 0.0 if maximum else -1e308, maximum if maximum else 1e308))
        self._add(QgsProcessingParameterNumber(
            self.ALPHA, self.tr("False-alarm rate of the automatic decision"),
            QgsProcessingParameterNumber.Double, DEFAULT_ALPHA, True, 1e-12, 0.4999))
        self.addOutput(QgsProcessingOutputString(self.VERDICT, self.tr("Result in words")))
        self.addOutput(QgsProcessingOutputNumber(
            self.CHANGED_AREA, self.tr("Changed area (square map units)")))
        self.addOutput(QgsProcessingOutputNumber(
            self.CHANGED_HECTARES, self.tr("Changed area (hectares; projected CRS only)")))
        self.addOutput(QgsProcessingOutputNumber(self.POLYGON_COUNT, self.tr("Change polygons")))

    def _alpha(self, parameters, context) -> float:
        """The false-alarm rate (the default where a model or script leaves it out)."""
        return self._optional_double(parameters, self.ALPHA, context, DEFAULT_ALPHA)

    def _log_decision(self, feedback, result, automatic: bool) -> None:
        """Log the threshold and how it was chosen (the result in words is the run's last
        progress message, already in the log)."""
        how = " (automatic: the no-change test)" if automatic else ""
        feedback.pushInfo(f"Threshold: {result.threshold:.6g}{how}")
        feedback.pushInfo(f"Changed fraction: {100.0 * result.changed_fraction:.2f} %")

    def _add_min_area(self) -> None:
        """Add the minimum change area in pixels (the measured default; 0 keeps all). Optional,
        so models and scripts written without it stay valid and get the default."""
        self._add(QgsProcessingParameterNumber(
            self.MIN_AREA, self.tr("Minimum change area in pixels, 0 = keep all"),
            QgsProcessingParameterNumber.Integer, MIN_AREA_PIXELS, True, 0))

    def _min_area(self, parameters, context) -> Dict[str, Any]:
        """``min_area`` and its unit for PipelineOptions (the default where a script leaves it out)."""
        pixels = (self.parameterAsInt(parameters, self.MIN_AREA, context)
                  if is_set(parameters, self.MIN_AREA) else MIN_AREA_PIXELS)
        return {"min_area": pixels, "min_area_unit": "pixels"}

    def _add_tile_size(self) -> None:
        """Add the (Advanced) tile size."""
        self._add(QgsProcessingParameterNumber(
            self.TILE_SIZE, self.tr("Tile size (pixels)"), QgsProcessingParameterNumber.Integer, 512,
            False, 64, 16384), advanced=True)

    def _add_mask_and_polygons(self, polygons_by_default: bool) -> None:
        """Add the optional change mask and change polygons outputs."""
        self._add(QgsProcessingParameterRasterDestination(
            self.OUTPUT_MASK, self.tr("Change mask"), None, True, False))
        self._add(QgsProcessingParameterVectorDestination(
            self.OUTPUT_POLYGONS, self.tr("Change polygons"), QgsProcessing.TypeVectorPolygon, None,
            True, polygons_by_default))

    # ------------------------------------------------------------------ conversion

    def _raster_pair(self, parameters, context) -> Tuple[str, str]:
        """Source paths of the BEFORE and AFTER rasters (file-based GDAL layers)."""
        return (raster_path(self, parameters, self.BEFORE, context),
                raster_path(self, parameters, self.AFTER, context))

    def _bands(self, parameters, key: str, context) -> Optional[Tuple[int, ...]]:
        """Selected band numbers, or None for all bands."""
        if not is_set(parameters, key):
            return None
        bands = tuple(int(b) for b in self.parameterAsInts(parameters, key, context))
        return bands or None

    def _change_outputs(self, parameters, context,
                        no_output: str) -> Tuple[str, Optional[str], Optional[str]]:
        """Paths of OUTPUT (required; ``no_output`` is the error without it), mask and polygons."""
        output = self._output(parameters, self.OUTPUT, context, GEOTIFF)
        if not output:
            raise QgsProcessingException(no_output)
        mask = self._output(parameters, self.OUTPUT_MASK, context, GEOTIFF)
        polygons = self._output(parameters, self.OUTPUT_POLYGONS, context, GEOPACKAGE)
        return output, mask, polygons

    def _results(self, result: Any, mask: Optional[str], polygons: Optional[str],
                 feedback: Optional[QgsProcessingFeedback] = None) -> Dict[str, Any]:
        """The outputs every raster-pair algorithm returns, from a core ``ChangeResult``; the
        changed area and polygon count are also logged to ``feedback``."""
        summary = summarise(result.output_path, result.changed_fraction, mask, polygons)
        if feedback is not None:
            feedback.pushInfo(summary.in_words())
        results: Dict[str, Any] = {
            self.OUTPUT: result.output_path,
            self.THRESHOLD_USED: result.threshold,
            self.CHANGED_FRACTION: result.changed_fraction,
            self.VERDICT: result.verdict,
            self.SECONDS: result.seconds,
            self.CHANGED_AREA: summary.area,
            self.CHANGED_HECTARES: summary.hectares,
            self.POLYGON_COUNT: summary.polygons,
        }
        if mask:
            results[self.OUTPUT_MASK] = mask
        if polygons:
            results[self.OUTPUT_POLYGONS] = polygons
        return results
