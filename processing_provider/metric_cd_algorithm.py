"""Processing algorithm ``metriccd:metricchangedetection``: a thin layer over core.pipeline.

Importing this module never imports torch: the pipeline is imported when the algorithm runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

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
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..core.config import MetricCDConfig
from ..core.errors import Cancelled, MetricCDError, MissingDependency
from . import help as help_texts
from .dependencies import install_message, missing_packages
from .styling import LayerStyler, keep_alive

ICON = Path(__file__).resolve().parents[1] / "resources" / "icon.svg"

PRESET_OPTIONS = ("default", "fast", "paper")
MODE_OPTIONS = ("scene", "per-tile")
BACKBONE_OPTIONS = ("vgg16", "mobilenet_v2")
WEIGHTS_OPTIONS = ("imagenet", "random", "file")
DEVICE_OPTIONS = ("auto", "cpu", "cuda", "mps")


def _settings_value(text: str) -> Any:
    """A settings value: JSON when it parses (numbers, booleans, lists), else the string."""
    try:
        value = json.loads(text)
    except ValueError:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text
    return tuple(value) if isinstance(value, list) else value


def parse_settings(text: Optional[str]) -> Dict[str, Any]:
    """Parse ``"key=value; key=value"`` expert settings into a dictionary."""
    settings: Dict[str, Any] = {}
    for item in (text or "").replace("\n", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise QgsProcessingException(
                f"Cannot read the engine setting '{item}'; write settings as key=value pairs "
                "separated by ';', e.g. 'width=16; depth=4'."
            )
        settings[key.strip()] = _settings_value(value.strip())
    return settings


class _Progress:
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


class MetricChangeDetectionAlgorithm(QgsProcessingAlgorithm):
    """Metric-CD (Bandara & Patel, WACV 2025) on a before/after raster pair."""

    BEFORE = "BEFORE"
    AFTER = "AFTER"
    BANDS_BEFORE = "BANDS_BEFORE"
    BANDS_AFTER = "BANDS_AFTER"
    FE_BANDS = "FE_BANDS"
    PRESET = "PRESET"
    ITERATIONS = "ITERATIONS"
    LEARNING_RATE = "LEARNING_RATE"
    MODE = "MODE"
    TILE_SIZE = "TILE_SIZE"
    BACKBONE = "BACKBONE"
    WEIGHTS = "WEIGHTS"
    WEIGHTS_FILE = "WEIGHTS_FILE"
    DEVICE = "DEVICE"
    SEED = "SEED"
    THRESHOLD = "THRESHOLD"
    MIN_AREA = "MIN_AREA"
    SETTINGS = "SETTINGS"
    DASK_SCHEDULER = "DASK_SCHEDULER"
    OUTPUT = "OUTPUT"
    OUTPUT_MASK = "OUTPUT_MASK"
    OUTPUT_POLYGONS = "OUTPUT_POLYGONS"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    THRESHOLD_USED = "THRESHOLD_USED"
    CHANGED_FRACTION = "CHANGED_FRACTION"
    DEVICE_USED = "DEVICE_USED"
    SECONDS = "SECONDS"

    def __init__(self) -> None:
        super().__init__()
        self._stylers: List[LayerStyler] = []  # the only per-run state: post-processors

    # ------------------------------------------------------------------ identity

    def tr(self, text: str) -> str:
        """Translate ``text``."""
        return QCoreApplication.translate("MetricChangeDetection", text)

    def createInstance(self) -> MetricChangeDetectionAlgorithm:  # noqa: N802
        """A fresh instance (QGIS runs every execution on its own copy)."""
        return MetricChangeDetectionAlgorithm()

    def name(self) -> str:
        """Algorithm id inside the provider."""
        return "metricchangedetection"

    def displayName(self) -> str:  # noqa: N802
        """Name shown in the toolbox."""
        return self.tr("Metric Change Detection")

    def group(self) -> str:
        """Toolbox group."""
        return self.tr("Change detection")

    def groupId(self) -> str:  # noqa: N802
        """Toolbox group id."""
        return "changedetection"

    def tags(self) -> List[str]:
        """Search keywords."""
        return ["change", "detection", "unsupervised", "deep", "metric", "learning", "bitemporal",
                "difference", "torch", "metric-cd"]

    def icon(self) -> QIcon:
        """Algorithm icon."""
        return QIcon(str(ICON))

    def shortHelpString(self) -> str:  # noqa: N802
        """Help shown beside the dialog."""
        return self.tr(help_texts.SHORT_HELP)

    def shortDescription(self) -> str:  # noqa: N802
        """One-line description (toolbox tooltip)."""
        return self.tr("Unsupervised change detection between two rasters with Metric-CD.")

    # ------------------------------------------------------------------ parameters

    def _add(self, param: QgsProcessingParameterDefinition, advanced: bool = False,
             output: bool = True) -> None:
        param.setHelp(self.tr(help_texts.PARAMETERS[param.name()]))
        if advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(param, output)

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802
        """Declare the parameters and outputs."""
        number = QgsProcessingParameterNumber
        self._add(QgsProcessingParameterRasterLayer(self.BEFORE, self.tr("Before image")))
        self._add(QgsProcessingParameterRasterLayer(self.AFTER, self.tr("After image")))
        self._add(QgsProcessingParameterBand(
            self.BANDS_BEFORE, self.tr("Bands of the before image [all when empty]"), None,
            self.BEFORE, True, True))
        self._add(QgsProcessingParameterBand(
            self.BANDS_AFTER, self.tr("Bands of the after image [all when empty]"), None,
            self.AFTER, True, True))
        self._add(QgsProcessingParameterEnum(
            self.PRESET, self.tr("Preset"), list(PRESET_OPTIONS), False, 0, False))
        self._add(QgsProcessingParameterNumber(
            self.THRESHOLD, self.tr("Change threshold [automatic (Otsu) when empty]"),
            number.Double, None, True, 0.0, 1.0))
        self._add(QgsProcessingParameterNumber(
            self.MIN_AREA, self.tr("Minimum change area [square map units]"),
            number.Double, None, True, 0.0))
        self._add(QgsProcessingParameterBand(
            self.FE_BANDS, self.tr("Bands fed to the feature extractor (1 or 3) [automatic]"), None,
            self.BEFORE, True, True), advanced=True)
        self._add(QgsProcessingParameterNumber(
            self.ITERATIONS, self.tr("Iterations [preset's when empty]"), number.Integer, None,
            True, 1, 100000), advanced=True)
        self._add(QgsProcessingParameterNumber(
            self.LEARNING_RATE, self.tr("Learning rate [preset's when empty]"), number.Double,
            None, True, 1e-7, 1.0), advanced=True)
        self._add(QgsProcessingParameterEnum(
            self.MODE, self.tr("Mode"), ["scene", "per-tile"], False, 0, False), advanced=True)
        self._add(QgsProcessingParameterNumber(
            self.TILE_SIZE, self.tr("Tile size [pixels]"), number.Integer, 512, False, 64, 16384),
            advanced=True)
        self._add(QgsProcessingParameterEnum(
            self.BACKBONE, self.tr("Feature extractor backbone [preset's when empty]"),
            ["VGG16", "MobileNetV2"], False, None, True), advanced=True)
        self._add(QgsProcessingParameterEnum(
            self.WEIGHTS, self.tr("Backbone weights"),
            [self.tr("ImageNet (download once)"), self.tr("Random (no download)"),
             self.tr("File (below)")], False, 0, False), advanced=True)
        self._add(QgsProcessingParameterFile(
            self.WEIGHTS_FILE, self.tr("Weights file (.pth)"),
            QgsProcessingParameterFile.File, "pth", None, True,
            self.tr("PyTorch weights (*.pth *.pt);;All files (*.*)")), advanced=True)
        self._add(QgsProcessingParameterEnum(
            self.DEVICE, self.tr("Device"), ["auto", "CPU", "CUDA", "MPS"], False, 0, False),
            advanced=True)
        self._add(QgsProcessingParameterNumber(
            self.SEED, self.tr("Random seed"), number.Integer, 0, False, 0, 2**31 - 1), advanced=True)
        self._add(QgsProcessingParameterString(
            self.SETTINGS, self.tr("Engine settings (key=value; ...)"), None, False, True),
            advanced=True)
        self._add(QgsProcessingParameterString(
            self.DASK_SCHEDULER, self.tr("Dask scheduler address"), None, False, True),
            advanced=True)
        self._add(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Change probability")))
        self._add(QgsProcessingParameterRasterDestination(
            self.OUTPUT_MASK, self.tr("Change mask"), None, True, False))
        self._add(QgsProcessingParameterVectorDestination(
            self.OUTPUT_POLYGONS, self.tr("Change polygons"), QgsProcessing.TypeVectorPolygon, None,
            True, True))
        self._add(QgsProcessingParameterFileDestination(
            self.OUTPUT_REPORT, self.tr("Report"), self.tr("HTML files (*.html)"), None, True, False))
        self.addOutput(QgsProcessingOutputNumber(self.THRESHOLD_USED, self.tr("Threshold used")))
        self.addOutput(QgsProcessingOutputNumber(self.CHANGED_FRACTION, self.tr("Changed fraction")))
        self.addOutput(QgsProcessingOutputString(self.DEVICE_USED, self.tr("Device used")))
        self.addOutput(QgsProcessingOutputNumber(self.SECONDS, self.tr("Run time [s]")))

    # ------------------------------------------------------------------ conversion

    @staticmethod
    def _is_set(parameters: Dict[str, Any], key: str) -> bool:
        value = parameters.get(key)
        return value is not None and value != ""

    def _raster_path(self, parameters, key: str, context: QgsProcessingContext) -> str:
        layer: Optional[QgsRasterLayer] = self.parameterAsRasterLayer(parameters, key, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(
                f"The {key.lower()} raster could not be loaded; choose a raster layer or a "
                "raster file GDAL can read."
            )
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"The {key.lower()} layer '{layer.name()}' is not a file-based raster "
                f"(provider '{layer.providerType()}'); export it to a GeoTIFF first "
                "(right-click > Export > Save As...)."
            )
        return layer.source()

    def _bands(self, parameters, key: str, context) -> Optional[Tuple[int, ...]]:
        if not self._is_set(parameters, key):
            return None
        bands = tuple(int(b) for b in self.parameterAsInts(parameters, key, context))
        return bands or None

    def _output(self, parameters, key: str, context, suffixes: Tuple[str, ...]) -> Optional[str]:
        if not self._is_set(parameters, key):
            return None
        path = self.parameterAsOutputLayer(parameters, key, context)
        if not path:
            return None
        if Path(path).suffix.lower() not in suffixes:
            raise QgsProcessingException(
                f"{key} must be a {' or '.join(suffixes)} file, got '{path}'; change the "
                f"file extension to {suffixes[0]}."
            )
        return path

    def _config(self, parameters, context) -> MetricCDConfig:
        preset = PRESET_OPTIONS[self.parameterAsEnum(parameters, self.PRESET, context)]
        overrides: Dict[str, Any] = parse_settings(
            self.parameterAsString(parameters, self.SETTINGS, context)
        )
        if self._is_set(parameters, self.ITERATIONS):
            overrides["iterations"] = self.parameterAsInt(parameters, self.ITERATIONS, context)
        if self._is_set(parameters, self.LEARNING_RATE):
            overrides["learning_rate"] = self.parameterAsDouble(parameters, self.LEARNING_RATE, context)
        if self._is_set(parameters, self.BACKBONE):
            overrides["backbone"] = BACKBONE_OPTIONS[
                self.parameterAsEnum(parameters, self.BACKBONE, context)
            ]
        weights = WEIGHTS_OPTIONS[self.parameterAsEnum(parameters, self.WEIGHTS, context)]
        if weights == "file":
            weights = self.parameterAsFile(parameters, self.WEIGHTS_FILE, context)
            if not weights:
                raise QgsProcessingException(
                    self.tr("Backbone weights is set to 'file' but no weights file was given; "
                            "choose a .pth file, or use weights 'ImageNet' or 'Random'.")
                )
        overrides["weights"] = weights
        overrides["device"] = DEVICE_OPTIONS[self.parameterAsEnum(parameters, self.DEVICE, context)]
        overrides["seed"] = self.parameterAsInt(parameters, self.SEED, context)
        try:
            return MetricCDConfig.preset(preset, **overrides)
        except (MetricCDError, TypeError) as exc:
            raise QgsProcessingException(str(exc)) from None

    def _stylise(self, context: QgsProcessingContext, path: Optional[str], style: str) -> None:
        """Attach a styler to the output ``path`` when QGIS will load it."""
        if path and context.willLoadLayerOnCompletion(path):
            styler = LayerStyler(style)
            self._stylers.append(styler)
            keep_alive(context, styler)
            context.layerToLoadOnCompletionDetails(path).setPostProcessor(styler)

    # ------------------------------------------------------------------ run

    def processAlgorithm(  # noqa: N802
        self, parameters: Dict[str, Any], context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        """Convert the parameters, run core.pipeline.detect_change, return the outputs."""
        feedback = feedback or QgsProcessingFeedback()
        before = self._raster_path(parameters, self.BEFORE, context)
        after = self._raster_path(parameters, self.AFTER, context)
        config = self._config(parameters, context)
        output = self._output(parameters, self.OUTPUT, context, (".tif", ".tiff"))
        if not output:
            raise QgsProcessingException(self.tr("Choose a file for the change probability output."))
        mask = self._output(parameters, self.OUTPUT_MASK, context, (".tif", ".tiff"))
        polygons = self._output(parameters, self.OUTPUT_POLYGONS, context, (".gpkg",))
        report_path = (self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
                       if self._is_set(parameters, self.OUTPUT_REPORT) else None)
        threshold: Any = "otsu"
        if self._is_set(parameters, self.THRESHOLD):
            threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context)
        min_area = 0.0
        if self._is_set(parameters, self.MIN_AREA):
            min_area = self.parameterAsDouble(parameters, self.MIN_AREA, context)
        bands_before = self._bands(parameters, self.BANDS_BEFORE, context)
        bands_after = self._bands(parameters, self.BANDS_AFTER, context)
        fe_bands = self._bands(parameters, self.FE_BANDS, context)

        missing = missing_packages()
        if missing:
            raise QgsProcessingException(install_message(missing))
        from ..core.config import PipelineOptions
        from ..core.pipeline import detect_change

        try:
            options = PipelineOptions(
                bands_before=bands_before, bands_after=bands_after, fe_bands=fe_bands,
                mode=MODE_OPTIONS[self.parameterAsEnum(parameters, self.MODE, context)],
                tile_size=self.parameterAsInt(parameters, self.TILE_SIZE, context),
                threshold=threshold, min_area=min_area, min_area_unit="map",
                mask_path=mask, polygons_path=polygons,
                dask_scheduler=(
                    self.parameterAsString(parameters, self.DASK_SCHEDULER, context) or ""
                ).strip() or None,
                extra_metadata={"METRICCD_QGIS_ALGORITHM": "metriccd:metricchangedetection"},
            )
        except MetricCDError as exc:
            raise QgsProcessingException(str(exc)) from None

        feedback.pushInfo(
            f"Metric-CD: backbone {config.backbone}, weights {config.weights}, {config.iterations} "
            f"iterations, learning rate {config.learning_rate:g}, mode {options.mode}, "
            f"device request '{config.device}', seed {config.seed}."
        )
        cancelled: Callable[[], bool] = feedback.isCanceled
        try:
            result = detect_change(
                before, after, output, config=config, options=options,
                progress=_Progress(feedback), is_cancelled=cancelled,
            )
        except Cancelled as exc:
            raise QgsProcessingException(f"Cancelled: {exc}") from None
        except MissingDependency as exc:
            name = getattr(exc, "name", None)
            if name in ("dask", "distributed"):  # optional; the message has the pip command
                raise QgsProcessingException(str(exc)) from None
            raise QgsProcessingException(
                f"{exc} {install_message([name] if name else ['torch', 'torchvision'])}"
            ) from None
        except MetricCDError as exc:
            raise QgsProcessingException(str(exc)) from None

        feedback.pushInfo(f"Device: {result.device}")
        feedback.pushInfo(f"Time: {result.seconds:.1f} s")
        automatic = " (automatic)" if threshold == "otsu" else ""
        feedback.pushInfo(f"Threshold: {result.threshold:.4f}{automatic}")
        feedback.pushInfo(f"Changed fraction: {100.0 * result.changed_fraction:.2f} %")

        results: Dict[str, Any] = {
            self.OUTPUT: result.output_path,
            self.THRESHOLD_USED: result.threshold,
            self.CHANGED_FRACTION: result.changed_fraction,
            self.DEVICE_USED: result.device,
            self.SECONDS: result.seconds,
        }
        if mask:
            results[self.OUTPUT_MASK] = mask
        if polygons:
            results[self.OUTPUT_POLYGONS] = polygons
        if report_path:
            shown = self._display_parameters(parameters, context)
            if self._write_report(report_path, result, before, after, shown, config,
                                  (bands_before, bands_after, fe_bands), feedback):
                results[self.OUTPUT_REPORT] = report_path
        self._stylise(context, output, "probability")
        self._stylise(context, mask, "mask")
        self._stylise(context, polygons, "polygons")
        return results

    def _display_parameters(self, parameters, context) -> Dict[str, str]:
        """Input parameters as readable text (enum names, layer sources) for the report."""
        shown: Dict[str, str] = {}
        for definition in self.parameterDefinitions():
            key = definition.name()
            if key.startswith("OUTPUT") or not self._is_set(parameters, key):
                continue
            if isinstance(definition, QgsProcessingParameterEnum):
                index = self.parameterAsEnum(parameters, key, context)
                shown[key] = definition.options()[index]
            elif isinstance(definition, QgsProcessingParameterRasterLayer):
                layer = self.parameterAsRasterLayer(parameters, key, context)
                shown[key] = layer.source() if layer else str(parameters[key])
            else:
                shown[key] = self.parameterAsString(parameters, key, context)
        return shown

    def _write_report(self, path, result, before, after, shown, config, bands, feedback) -> bool:
        from .report import write_report

        try:
            write_report(
                path, result=result, before=before, after=after, parameters=shown,
                settings=config.as_dict(), bands_before=bands[0], bands_after=bands[1],
                fe_bands=bands[2],
            )
        except Exception as exc:  # noqa: BLE001 - the change maps are written; report the rest
            feedback.reportError(f"The HTML report could not be written: {exc}", False)
            return False
        feedback.pushInfo(f"Report: {path}")
        return True
