"""Processing algorithm ``metriccd:metricchangedetection``: a thin layer over core.pipeline.

Importing this module never imports torch: the pipeline is imported when the algorithm runs.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Optional

from qgis.core import (
    Qgis,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..core.config import MetricCDConfig
from ..core.errors import MetricCDError
from ..core.torch_import import loading_message, torch_imported
from . import help as help_texts
from .algorithm_base import Progress, RasterPairAlgorithm, is_set, processing_error, run_group_name
from .dependencies import install_message, missing_packages
from .provider import packages_target
from .styling import LayerStyler

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



class MetricChangeDetectionAlgorithm(RasterPairAlgorithm):
    """Metric-CD (Bandara & Patel, WACV 2025) on a before/after raster pair."""

    ALG_ID = "metricchangedetection"
    DISPLAY = "Metric Change Detection"
    SHORT_NAME = "Metric-CD"
    HELP = help_texts.PARAMETERS

    FE_BANDS = "FE_BANDS"
    PRESET = "PRESET"
    ITERATIONS = "ITERATIONS"
    LEARNING_RATE = "LEARNING_RATE"
    GATE = "GATE"
    FEATURE_FUSION = "FEATURE_FUSION"
    MODE = "MODE"
    BACKBONE = "BACKBONE"
    WEIGHTS = "WEIGHTS"
    WEIGHTS_FILE = "WEIGHTS_FILE"
    DEVICE = "DEVICE"
    SEED = "SEED"
    SETTINGS = "SETTINGS"
    DASK_SCHEDULER = "DASK_SCHEDULER"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    DEVICE_USED = "DEVICE_USED"

    # ------------------------------------------------------------------ identity

    def tags(self) -> List[str]:
        """Search keywords."""
        return ["change", "detection", "unsupervised", "deep", "metric", "learning", "bitemporal",
                "difference", "torch", "metric-cd"]

    def shortHelpString(self) -> str:  # noqa: N802
        """Help shown beside the dialog."""
        return help_texts.one_line(self.tr(help_texts.SHORT_HELP))

    def shortDescription(self) -> str:  # noqa: N802
        """One-line description (toolbox tooltip)."""
        return self.tr("Unsupervised change detection between two rasters with Metric-CD.")

    # ------------------------------------------------------------------ parameters

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802
        """Declare the parameters and outputs."""
        number = QgsProcessingParameterNumber
        self._add_raster_pair()
        self._add(QgsProcessingParameterEnum(
            self.PRESET, self.tr("Preset"), list(PRESET_OPTIONS), False, 0, False))
        self._add_decision("Fixed probability threshold, not set = automatic test", 1.0)
        self._add_min_area()
        self._add(QgsProcessingParameterBand(
            self.FE_BANDS, self.tr("Bands fed to the feature extractor (1 or 3)"), None,
            self.BEFORE, True, True), advanced=True)
        self._add(QgsProcessingParameterNumber(
            self.ITERATIONS, self._preset_label("Iterations", "iterations"), number.Integer, None,
            True, 1, 100000), advanced=True)
        self._add(QgsProcessingParameterNumber(
            self.LEARNING_RATE, self._preset_label("Learning rate", "learning_rate"), number.Double,
            None, True, 1e-7, 1.0), advanced=True)
        self._add(QgsProcessingParameterNumber(
            self.GATE, self._preset_label("Evidence gate, 1 = on, 0 = off", "gate"),
            number.Double, None, True, 0.0, 1.0), advanced=True)
        self._add(QgsProcessingParameterNumber(
            self.FEATURE_FUSION, self._preset_label("Feature fusion weight, 0 = off", "feature_fusion"),
            number.Double, None, True, 0.0, 10.0), advanced=True)
        self._add(QgsProcessingParameterEnum(
            self.MODE, self.tr("Mode"), ["scene", "per-tile"], False, 0, False), advanced=True)
        self._add_tile_size()
        self._add(QgsProcessingParameterEnum(
            self.BACKBONE, self._preset_label("Feature extractor backbone", "backbone"),
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
        self._add_mask_and_polygons(polygons_by_default=True)
        self._add(QgsProcessingParameterFileDestination(
            self.OUTPUT_REPORT, self.tr("Report"), self.tr("HTML files (*.html)"), None, True, False))
        self.addOutput(QgsProcessingOutputNumber(self.THRESHOLD_USED, self.tr("Threshold used")))
        self.addOutput(QgsProcessingOutputNumber(self.CHANGED_FRACTION, self.tr("Changed fraction")))
        self.addOutput(QgsProcessingOutputString(self.DEVICE_USED, self.tr("Device used")))
        self.addOutput(QgsProcessingOutputNumber(self.SECONDS, self.tr("Run time (s)")))

    def _preset_label(self, label: str, setting: str) -> str:
        """``label`` with the presets' values of ``setting``: "Iterations (preset: 20, ...)"."""
        return f"{self.tr(label)} ({help_texts.preset_label(setting)})"

    # ------------------------------------------------------------------ conversion

    def _config(self, parameters, context) -> MetricCDConfig:
        preset = PRESET_OPTIONS[self.parameterAsEnum(parameters, self.PRESET, context)]
        overrides: Dict[str, Any] = parse_settings(
            self.parameterAsString(parameters, self.SETTINGS, context)
        )
        if is_set(parameters, self.ITERATIONS):
            overrides["iterations"] = self.parameterAsInt(parameters, self.ITERATIONS, context)
        if is_set(parameters, self.LEARNING_RATE):
            overrides["learning_rate"] = self.parameterAsDouble(parameters, self.LEARNING_RATE, context)
        if is_set(parameters, self.GATE):
            overrides["gate"] = self.parameterAsDouble(parameters, self.GATE, context)
        if is_set(parameters, self.FEATURE_FUSION):
            overrides["feature_fusion"] = self.parameterAsDouble(
                parameters, self.FEATURE_FUSION, context
            )
        if is_set(parameters, self.BACKBONE):
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

    # ------------------------------------------------------------------ run

    def processAlgorithm(  # noqa: N802
        self, parameters: Dict[str, Any], context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        """Convert the parameters, run core.pipeline.detect_change, return the outputs."""
        feedback = feedback or QgsProcessingFeedback()
        before, after = self._raster_pair(parameters, context)
        config = self._config(parameters, context)
        output, mask, polygons = self._change_outputs(
            parameters, context, self.tr("Choose a file for the change probability output."))
        report_path = (self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
                       if is_set(parameters, self.OUTPUT_REPORT) else None)
        threshold: Any = self._optional_double(parameters, self.THRESHOLD, context, "auto")
        bands_before = self._bands(parameters, self.BANDS_BEFORE, context)
        bands_after = self._bands(parameters, self.BANDS_AFTER, context)
        fe_bands = self._bands(parameters, self.FE_BANDS, context)

        progress = Progress(feedback)
        first, start = not torch_imported(), time.monotonic()
        progress(0.0, loading_message())  # the first import of a session takes seconds
        missing = missing_packages()
        if missing:
            raise QgsProcessingException(install_message(missing, packages_target()))
        if first:
            feedback.pushInfo(f"Loaded PyTorch in {time.monotonic() - start:.1f} s (once per QGIS "
                              "session; later runs start at once).")
        from ..core.config import PipelineOptions
        from ..core.pipeline import detect_change

        try:
            options = PipelineOptions(
                bands_before=bands_before, bands_after=bands_after, fe_bands=fe_bands,
                mode=MODE_OPTIONS[self.parameterAsEnum(parameters, self.MODE, context)],
                tile_size=self.parameterAsInt(parameters, self.TILE_SIZE, context),
                threshold=threshold, alpha=self._alpha(parameters, context),
                **self._min_area(parameters, context),
                mask_path=mask, polygons_path=polygons,
                dask_scheduler=(
                    self.parameterAsString(parameters, self.DASK_SCHEDULER, context) or ""
                ).strip() or None,
                extra_metadata={"METRICCD_QGIS_ALGORITHM": "metriccd:metricchangedetection"},
            )
        except MetricCDError as exc:
            raise processing_error(exc) from None

        feedback.pushInfo(
            f"Metric-CD: backbone {config.backbone}, weights {config.weights}, {config.iterations} "
            f"iterations, learning rate {config.learning_rate:g}, mode {options.mode}, "
            f"device request '{config.device}', seed {config.seed}."
        )
        cancelled: Callable[[], bool] = feedback.isCanceled
        try:
            result = detect_change(
                before, after, output, config=config, options=options,
                progress=progress, is_cancelled=cancelled,
            )
        except MetricCDError as exc:
            raise processing_error(exc, install_hint=True) from None

        feedback.pushInfo(f"Device: {result.device}")
        feedback.pushInfo(f"Time: {result.seconds:.1f} s")
        self._log_decision(feedback, result, threshold == "auto")

        results = self._results(result, mask, polygons, feedback)
        results[self.DEVICE_USED] = result.device
        if report_path:
            shown = self._display_parameters(parameters, context)
            if self._write_report(report_path, result, before, after, shown, config,
                                  (bands_before, bands_after, fe_bands), feedback):
                results[self.OUTPUT_REPORT] = report_path
        group = run_group_name(self.SHORT_NAME, before, after)
        self._stylise(context, output, LayerStyler("probability", group=group))
        self._stylise(context, mask, LayerStyler("mask", group=group))
        self._stylise(context, polygons, LayerStyler("polygons", group=group))
        return results

    def _display_parameters(self, parameters, context) -> Dict[str, str]:
        """Input parameters as readable text (enum names, layer sources) for the report."""
        shown: Dict[str, str] = {}
        for definition in self.parameterDefinitions():
            key = definition.name()
            if key.startswith("OUTPUT") or not is_set(parameters, key):
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
                fe_bands=bands[2], qgis_version=Qgis.QGIS_VERSION,
            )
        except Exception as exc:  # noqa: BLE001 - the change maps are written; report the rest
            feedback.reportError(f"The HTML report could not be written: {exc}", False)
            return False
        feedback.pushInfo(f"Report: {path}")
        return True
