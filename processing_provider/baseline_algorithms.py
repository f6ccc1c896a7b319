"""Processing algorithms ``metriccd:cva``, ``metriccd:pcakmeans`` and ``metriccd:irmad``.

Thin layers over :func:`core.baseline_pipeline.detect_change_baseline`. The baselines are numpy +
SciPy + GDAL only: importing this module (or running the algorithms) never imports torch, so they
work in a QGIS without PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from qgis.core import (
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
)

from ..core.config import SHARPNESS
from ..core.errors import MetricCDError
from . import help as help_texts
from .algorithm_base import Progress, RasterPairAlgorithm, is_set, processing_error, run_group_name
from .styling import LayerStyler, style_path

SCIPY_HINT = (
    "The classical baselines need SciPy in QGIS's Python; install it, e.g. "
    "'python3 -m pip install scipy' (OSGeo4W Shell on Windows), then restart QGIS."
)
CELIK = (
    "T. Celik, \"Unsupervised Change Detection in Satellite Images Using Principal Component "
    "Analysis and k-Means Clustering\", IEEE Geoscience and Remote Sensing Letters 6(4), 2009."
)
NIELSEN = (
    "A. A. Nielsen, \"The Regularized Iteratively Reweighted MAD Method for Change Detection in "
    "Multi- and Hyperspectral Data\", IEEE Transactions on Image Processing 16(2), 2007."
)
_COMMON_HELP = """<p><b>Inputs</b>: two co-registered rasters of the same area (same bands for both
dates; the after image is aligned onto the before image's grid; nodata and masks are respected).
The method is fitted on the whole raster, or on a sample of about 2 million pixels of larger
rasters, then applied tile by tile, so large rasters run in bounded memory. No PyTorch needed.</p>
<p><b>Outputs</b></p><ul>
<li><b>{score}</b>: float32 GeoTIFF on the before image's grid (higher = more change), styled with
a colour ramp over its 2-98 % range.</li>
<li><b>Change mask</b> (optional): byte GeoTIFF, 1 = change, 0 = no change, 255 = nodata; the
score thresholded {rule} unless you give a threshold, minus changes smaller than the minimum
area.</li>
<li><b>Change polygons</b> (optional): GeoPackage of the mask's change regions with their area
and mean / maximum score (fields mean_prob / max_prob).</li>
<li><b>Change probability</b> (optional): float32 GeoTIFF, 0 to 1, the chance that a pixel
scoring like this one is unlike the unchanged pixels (the score's posterior under its no-change
law, estimated from the data).</li>
<li><b>Threshold used</b>, <b>changed fraction</b> and the <b>result in words</b> ("No
significant change" when nothing passes the test): usable in models.</li></ul>"""

PARAMETERS = {
    "BEFORE": help_texts.PARAMETERS["BEFORE"],
    "AFTER": help_texts.PARAMETERS["AFTER"],
    "BANDS_BEFORE": help_texts.PARAMETERS["BANDS_BEFORE"],
    "BANDS_AFTER": help_texts.PARAMETERS["BANDS_AFTER"],
    "THRESHOLD": "Score above which a pixel counts as changed, for the mask, the polygons and the "
    "changed fraction, in the units of the score raster (IR-MAD: the chi-square statistic Z). "
    "Not set = the automatic decision: the score's law where nothing changed is estimated from "
    "the pair itself, and a pixel is changed where an unchanged pixel would score that high "
    "less often than the false-alarm rate below; the threshold reported is the score at that "
    "limit.",
    "MIN_AREA": help_texts.PARAMETERS["MIN_AREA"],
    "SHARPNESS": "Two acquisitions of unchanged ground often differ by about a pixel of blur "
    "(optics, resampling, sub-pixel misregistration), which a per-pixel difference reads as "
    "change along every edge. Where one date is measurably sharper (blurring it by this many "
    "pixels brings the dates closer), a pixel is only marked if its difference is also "
    f"significant with that date blurred. 0 = the plain difference only. Default {SHARPNESS:g}.",
    "TILE_SIZE": help_texts.PARAMETERS["TILE_SIZE"],
    "NORMALISE": "Standardise every band of each date (mean 0, standard deviation 1) before "
    "differencing. Removes per-date gains and offsets (illumination, sensor calibration); turn "
    "off to compare raw values of already calibrated data.",
    "BLOCK_SIZE": "Size h of the h x h blocks of the difference image analysed by PCA, and of "
    "each pixel's neighbourhood (Celik used 3 to 5). Larger blocks give smoother maps.",
    "COMPONENTS": "Number of principal components (eigenvectors) kept for the feature vectors "
    "(at most block size squared).",
    "MAX_ITERATIONS": "Maximum number of reweighting iterations of IR-MAD.",
    "TOLERANCE": "IR-MAD stops when no canonical correlation changes by more than this between "
    "two iterations.",
    "OUTPUT": "Change-score GeoTIFF (float32, higher = more change).",
    "OUTPUT_MASK": help_texts.PARAMETERS["OUTPUT_MASK"],
    "OUTPUT_POLYGONS": "GeoPackage of change polygons with area and mean / max score.",
    "OUTPUT_PROBABILITY": "Change probability GeoTIFF (0 to 1): the chance that a pixel scoring "
    "like this one is unlike the unchanged pixels, from the score's no-change law estimated on "
    "the data (1 - local false discovery rate).",
    "ALPHA": help_texts.PARAMETERS["ALPHA"],
}


class SidecarStyler(LayerStyler):
    """Loads the ``<stem>.qml`` written beside an output (its data-dependent colour ramp).

    Falls back to the named style in ``resources/styles`` when the side file is missing.
    """

    def __init__(self, qml: str, fallback: str = "score", group: Optional[str] = None) -> None:
        super().__init__(fallback, group=group)
        self.qml = qml

    def postProcessLayer(  # noqa: N802 (QGIS API name)
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        """Apply the side-file style to ``layer``."""
        if layer is None or not layer.isValid():
            return
        path = self.qml if Path(self.qml).is_file() else str(style_path(self.style))
        message, ok = layer.loadNamedStyle(path)
        if not ok and feedback is not None:
            feedback.pushWarning(f"Could not apply the style {Path(path).name}: {message}")
        self._place(layer, context)
        layer.triggerRepaint()


class BaselineAlgorithm(RasterPairAlgorithm):
    """Common parameters and run of the classical baselines; subclasses add the method's knobs."""

    METHOD = ""
    OUTPUT_PROBABILITY = "OUTPUT_PROBABILITY"
    SHARPNESS = "SHARPNESS"
    HELP = PARAMETERS
    SCORE_NAME = "Change score"
    THRESHOLD_RULE = ""
    ABOUT = ""

    # ------------------------------------------------------------------ identity

    def tags(self) -> List[str]:
        """Search keywords."""
        return ["change", "detection", "unsupervised", "baseline", "classical", "bitemporal",
                "difference", self.METHOD]

    def shortHelpString(self) -> str:  # noqa: N802
        """Help shown beside the dialog."""
        text = self.ABOUT + _COMMON_HELP.format(score=self.SCORE_NAME, rule=self.THRESHOLD_RULE)
        return help_texts.one_line(self.tr(text))

    # ------------------------------------------------------------------ parameters

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802
        """Declare the parameters and outputs."""
        self._add_raster_pair()
        self._add_decision("Fixed score threshold, not set = automatic test", None)
        self._add_min_area()
        self._add(QgsProcessingParameterNumber(
            self.SHARPNESS, self.tr("Blur allowed between the dates (pixels), 0 = none"),
            QgsProcessingParameterNumber.Double, SHARPNESS, True, 0.0, 5.0), advanced=True)
        self._method_parameters()
        self._add_tile_size()
        self._add(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr(self.SCORE_NAME)))
        self._extra_outputs()
        self._add_mask_and_polygons(polygons_by_default=False)
        self.addOutput(QgsProcessingOutputNumber(self.THRESHOLD_USED, self.tr("Threshold used")))
        self.addOutput(QgsProcessingOutputNumber(self.CHANGED_FRACTION, self.tr("Changed fraction")))
        self.addOutput(QgsProcessingOutputNumber(self.SECONDS, self.tr("Run time (s)")))

    def _method_parameters(self) -> None:
        """Add the method's (Advanced) parameters."""

    def _extra_outputs(self) -> None:
        """Add the optional change probability (the score's posterior under its no-change law)."""
        self._add(QgsProcessingParameterRasterDestination(
            self.OUTPUT_PROBABILITY, self.tr("Change probability"), None, True, False))

    def _method_options(self, parameters, context) -> Dict[str, Any]:
        """Constructor options of the core method from the parameters."""
        return {}

    # ------------------------------------------------------------------ run

    def processAlgorithm(  # noqa: N802
        self, parameters: Dict[str, Any], context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        """Convert the parameters, run core.baseline_pipeline.detect_change_baseline, return outputs."""
        feedback = feedback or QgsProcessingFeedback()
        before, after = self._raster_pair(parameters, context)
        output, mask, polygons = self._change_outputs(
            parameters, context, self.tr("Choose a file for the change score output."))
        method_options = self._method_options(parameters, context)
        extra = self._extra_paths(parameters, context)
        method_options.update(extra)
        if is_set(parameters, self.THRESHOLD):
            method_options["threshold"] = self.parameterAsDouble(parameters, self.THRESHOLD, context)
        method_options["sharpness"] = self._optional_double(
            parameters, self.SHARPNESS, context, SHARPNESS)
        try:
            from ..core.baseline_pipeline import detect_change_baseline
            from ..core.config import PipelineOptions
        except ImportError as exc:
            raise QgsProcessingException(f"{exc}. {SCIPY_HINT}") from None
        try:
            options = PipelineOptions(
                bands_before=self._bands(parameters, self.BANDS_BEFORE, context),
                bands_after=self._bands(parameters, self.BANDS_AFTER, context),
                tile_size=self.parameterAsInt(parameters, self.TILE_SIZE, context),
                alpha=self._alpha(parameters, context),
                **self._min_area(parameters, context), mask_path=mask, polygons_path=polygons,
                extra_metadata={"METRICCD_QGIS_ALGORITHM": f"metriccd:{self.ALG_ID}"},
            )
        except MetricCDError as exc:
            raise processing_error(exc) from None
        shown = {k: v for k, v in method_options.items() if not k.endswith("_path")}
        feedback.pushInfo(f"{self.DISPLAY}: {shown or 'default options'}.")
        try:
            result = detect_change_baseline(
                self.METHOD, before, after, output, options=options, method_options=method_options,
                progress=Progress(feedback), is_cancelled=feedback.isCanceled,
            )
        except MetricCDError as exc:
            raise processing_error(exc) from None

        self._log_decision(feedback, result, "threshold" not in method_options)
        feedback.pushInfo(f"Time: {result.seconds:.1f} s")
        results = self._results(result, mask, polygons, feedback)
        results.update(self._extra_results(extra))
        group = run_group_name(self.SHORT_NAME, before, after)
        self._stylise(context, output,
                      SidecarStyler(str(Path(output).with_suffix(".qml")), group=group))
        self._stylise(context, mask, LayerStyler("mask", group=group))
        self._stylise(context, polygons, LayerStyler("polygons", group=group))
        self._stylise(context, results.get(self.OUTPUT_PROBABILITY),
                      LayerStyler("probability", group=group))
        return results

    def _extra_paths(self, parameters, context) -> Dict[str, Any]:
        """The probability output's path, passed to the core as a method option."""
        path = self._output(parameters, self.OUTPUT_PROBABILITY, context, (".tif", ".tiff"))
        return {"probability_path": path} if path else {}

    def _extra_results(self, extra: Dict[str, Any]) -> Dict[str, Any]:
        path = extra.get("probability_path")
        return {self.OUTPUT_PROBABILITY: path} if path else {}


class CvaAlgorithm(BaselineAlgorithm):
    """Change vector analysis: magnitude of the per-pixel spectral difference vector."""

    METHOD = "cva"
    ALG_ID = "cva"
    SHORT_NAME = "CVA"
    DISPLAY = "Change Vector Analysis (CVA)"
    SCORE_NAME = "CVA change magnitude"
    THRESHOLD_RULE = "where the magnitude is significantly unlike its no-change law"
    ABOUT = """<p><b>Change vector analysis (CVA)</b>, the classical baseline of unsupervised
change detection: the score of a pixel is the length of its spectral change vector (after minus
before, over the selected bands, each band standardised per date by default); the automatic
threshold tests the magnitude against its no-change law, estimated from the data (see the
false-alarm rate).</p>"""
    NORMALISE = "NORMALISE"

    def _method_parameters(self) -> None:
        self._add(QgsProcessingParameterBoolean(
            self.NORMALISE, self.tr("Standardise each band per date"), True), advanced=True)

    def _method_options(self, parameters, context) -> Dict[str, Any]:
        return {"normalise": self.parameterAsBool(parameters, self.NORMALISE, context)}


class PcaKmeansAlgorithm(BaselineAlgorithm):
    """PCA-KMeans (Celik, GRSL 2009)."""

    METHOD = "pcakmeans"
    ALG_ID = "pcakmeans"
    SHORT_NAME = "PCA-KMeans"
    DISPLAY = "PCA-KMeans"
    SCORE_NAME = "PCA-KMeans change score"
    THRESHOLD_RULE = ("where the score and the difference itself (CVA's magnitude) are both "
                      "significantly unlike their no-change laws")
    ABOUT = f"""<p><b>PCA-KMeans</b> (Celik 2009): principal component analysis of non-overlapping
h x h blocks of the difference image gives an eigenvector space; every pixel's h x h
neighbourhood is projected onto the leading eigenvectors and k-means with two clusters splits
the feature vectors; the cluster with the larger mean difference is change. The score is the
signed distance to the k-means boundary (positive = change cluster).</p>
<p><b>Reference</b>: {CELIK}</p>"""
    BLOCK_SIZE = "BLOCK_SIZE"
    COMPONENTS = "COMPONENTS"

    def _method_parameters(self) -> None:
        number = QgsProcessingParameterNumber
        self._add(QgsProcessingParameterNumber(
            self.BLOCK_SIZE, self.tr("Block size h (pixels)"), number.Integer, 4, False, 2, 31),
            advanced=True)
        self._add(QgsProcessingParameterNumber(
            self.COMPONENTS, self.tr("Principal components kept"), number.Integer, 3, False, 1, 961),
            advanced=True)

    def _method_options(self, parameters, context) -> Dict[str, Any]:
        return {
            "block": self.parameterAsInt(parameters, self.BLOCK_SIZE, context),
            "n_components": self.parameterAsInt(parameters, self.COMPONENTS, context),
        }


class IrmadAlgorithm(BaselineAlgorithm):
    """Iteratively reweighted MAD (Nielsen, TIP 2007)."""

    METHOD = "irmad"
    ALG_ID = "irmad"
    SHORT_NAME = "IR-MAD"
    DISPLAY = "IR-MAD"
    SCORE_NAME = "IR-MAD chi-square statistic"
    THRESHOLD_RULE = ("where Z and the difference itself (CVA's magnitude) are both "
                      "significantly unlike their no-change laws")
    ABOUT = f"""<p><b>Iteratively reweighted multivariate alteration detection (IR-MAD)</b>
(Nielsen 2007): canonical correlation analysis between the dates gives MAD variates (differences
of canonical variates); pixels are reweighted by their chi-square no-change probability and the
analysis is iterated to convergence. The score is the chi-square statistic Z of the
standardised MAD variates (about chi-square distributed, degrees of freedom = bands, where
nothing changed). It is invariant to per-band linear radiometric differences between the
dates.</p>
<p><b>Reference</b>: {NIELSEN}</p>"""
    MAX_ITERATIONS = "MAX_ITERATIONS"
    TOLERANCE = "TOLERANCE"

    def _method_parameters(self) -> None:
        number = QgsProcessingParameterNumber
        self._add(QgsProcessingParameterNumber(
            self.MAX_ITERATIONS, self.tr("Maximum iterations"), number.Integer, 50, False, 1, 10000),
            advanced=True)
        self._add(QgsProcessingParameterNumber(
            self.TOLERANCE, self.tr("Convergence tolerance"), number.Double, 1e-6, False, 0.0, 1.0),
            advanced=True)

    def _method_options(self, parameters, context) -> Dict[str, Any]:
        return {
            "max_iter": self.parameterAsInt(parameters, self.MAX_ITERATIONS, context),
            "tol": self.parameterAsDouble(parameters, self.TOLERANCE, context),
        }
