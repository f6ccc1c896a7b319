"""Processing algorithm ``metriccd:changeaccuracy``: a change map against a reference raster.

A thin layer over :func:`core.accuracy.assess_rasters` and :func:`core.accuracy.accuracy_report_html`
(numpy + GDAL; never imports torch).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from qgis.core import (
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBand,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from ..core.errors import MetricCDError
from .algorithm_base import ChangeDetectionAlgorithm, is_set, processing_error, raster_path
from .help import one_line

SHORT_HELP = """<p><b>Accuracy of a change map</b> against a reference (ground truth) raster:
precision, recall, F1 score, Cohen's kappa, overall accuracy, ROC-AUC and the confusion matrix.</p>
<p><b>Change map</b>: an integer raster is a binary map (non-zero = change, e.g. a change mask);
a float raster is a probability or score map (change = value above the threshold; Otsu's
threshold when empty), which also gives the ROC curve and ROC-AUC.</p>
<p><b>Reference</b>: say which of its values mean change (e.g. 2 for OSCD's 1/2 labels, 255 for
0/255 masks) and, optionally, which mean no change (e.g. 1); values in neither list are not
assessed (sparse labels). With no-change values empty, every other value is no change. The
reference is resampled (nearest neighbour) onto the change map's grid; nodata pixels of either
raster are ignored.</p>
<p><b>Outputs</b>: the metrics as numbers usable in models (undefined ones, such as precision
without predicted change, are empty), a table of the metrics and the confusion matrix, and an
optional HTML report with the ROC curve.</p>"""

PARAMETERS = {
    "CHANGE_MAP": "The change map to assess: a binary mask (integer, non-zero = change) or a "
    "probability / score raster (float, higher = more change).",
    "BAND": "Band of the change map to assess.",
    "REFERENCE": "The reference (ground truth) raster; its first band is used. It is resampled "
    "(nearest neighbour) onto the change map's grid.",
    "CHANGE_VALUES": "Reference value(s) meaning change, separated by commas, e.g. 2 (OSCD), "
    "255 (0/255 masks) or 1 (0/1 masks).",
    "NOCHANGE_VALUES": "Reference value(s) meaning no change, separated by commas, e.g. 1 (OSCD). "
    "Empty = every value not listed as change. Values in neither list are ignored.",
    "THRESHOLD": "For probability / score maps: value above which a pixel counts as changed. "
    "Empty = Otsu's threshold of the map. Ignored for binary maps.",
    "OUTPUT_TABLE": "Table (no geometry) with one row per metric: the confusion matrix counts "
    "tp, fp, fn, tn and the metrics.",
    "OUTPUT_REPORT": "HTML report: confusion matrix, metrics and the ROC curve.",
}
TABLE_ROWS = (
    "tp", "fp", "fn", "tn", "n", "precision", "recall", "f1", "kappa", "overall_accuracy",
    "roc_auc", "changed_fraction", "reference_changed_fraction", "threshold",
)


def parse_values(text: Optional[str], what: str) -> Optional[List[float]]:
    """Numbers separated by commas (or spaces/semicolons); None for empty text."""
    items = [v for v in (text or "").replace(";", ",").replace(" ", ",").split(",") if v.strip()]
    if not items:
        return None
    try:
        return [float(v) for v in items]
    except ValueError:
        raise QgsProcessingException(
            f"{what} must be numbers separated by commas, e.g. '2' or '1, 2'; got '{text}'."
        ) from None


def _number(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class ChangeAccuracyAlgorithm(ChangeDetectionAlgorithm):
    """Precision, recall, F1, kappa, OA, ROC-AUC and confusion matrix of a change map."""

    ALG_ID = "changeaccuracy"
    DISPLAY = "Change detection accuracy"
    HELP = PARAMETERS

    CHANGE_MAP = "CHANGE_MAP"
    BAND = "BAND"
    REFERENCE = "REFERENCE"
    CHANGE_VALUES = "CHANGE_VALUES"
    NOCHANGE_VALUES = "NOCHANGE_VALUES"
    THRESHOLD = "THRESHOLD"
    OUTPUT_TABLE = "OUTPUT_TABLE"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    PRECISION = "PRECISION"
    RECALL = "RECALL"
    F1 = "F1"
    KAPPA = "KAPPA"
    OVERALL_ACCURACY = "OVERALL_ACCURACY"
    ROC_AUC = "ROC_AUC"
    THRESHOLD_USED = "THRESHOLD_USED"
    TP = "TP"
    FP = "FP"
    FN = "FN"
    TN = "TN"
    NUMBERS = {
        PRECISION: ("precision", "Precision"),
        RECALL: ("recall", "Recall"),
        F1: ("f1", "F1 score"),
        KAPPA: ("kappa", "Cohen's kappa"),
        OVERALL_ACCURACY: ("overall_accuracy", "Overall accuracy"),
        ROC_AUC: ("roc_auc", "ROC-AUC"),
        THRESHOLD_USED: ("threshold", "Threshold used"),
        TP: ("tp", "True positives (pixels)"),
        FP: ("fp", "False positives (pixels)"),
        FN: ("fn", "False negatives (pixels)"),
        TN: ("tn", "True negatives (pixels)"),
    }

    def tags(self) -> List[str]:
        """Search keywords."""
        return ["change", "accuracy", "assessment", "confusion", "matrix", "precision", "recall",
                "f1", "kappa", "roc", "auc", "validation", "reference"]

    def shortHelpString(self) -> str:  # noqa: N802
        """Help shown beside the dialog."""
        return one_line(self.tr(SHORT_HELP))

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802
        """Declare the parameters and outputs."""
        self._add(QgsProcessingParameterRasterLayer(self.CHANGE_MAP, self.tr("Change map")))
        self._add(QgsProcessingParameterRasterLayer(self.REFERENCE, self.tr("Reference raster")))
        self._add(QgsProcessingParameterString(
            self.CHANGE_VALUES, self.tr("Reference values meaning change (e.g. 2 or 255)")))
        self._add(QgsProcessingParameterString(
            self.NOCHANGE_VALUES,
            self.tr("Reference values meaning no change (default: every other value)"),
            None, False, True))
        self._add(QgsProcessingParameterNumber(
            self.THRESHOLD, self.tr("Threshold of a probability or score map (default: Otsu's)"),
            QgsProcessingParameterNumber.Double, None, True))
        self._add(QgsProcessingParameterBand(
            self.BAND, self.tr("Band of the change map"), 1, self.CHANGE_MAP, True),
            advanced=True)
        self._add(QgsProcessingParameterFeatureSink(
            self.OUTPUT_TABLE, self.tr("Accuracy table"), QgsProcessing.TypeVector, None, True))
        self._add(QgsProcessingParameterFileDestination(
            self.OUTPUT_REPORT, self.tr("Accuracy report"), self.tr("HTML files (*.html)"), None,
            True, False))
        for key, (_, label) in self.NUMBERS.items():
            self.addOutput(QgsProcessingOutputNumber(key, self.tr(label)))

    def processAlgorithm(  # noqa: N802
        self, parameters: Dict[str, Any], context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        """Assess the map (core.accuracy.assess_rasters), write the table and report."""
        feedback = feedback or QgsProcessingFeedback()
        change_map = raster_path(self, parameters, self.CHANGE_MAP, context)
        reference = raster_path(self, parameters, self.REFERENCE, context)
        change_values = parse_values(
            self.parameterAsString(parameters, self.CHANGE_VALUES, context), "Change values")
        if not change_values:
            raise QgsProcessingException(
                "Give the reference value(s) meaning change, e.g. '2' (OSCD) or '255' (0/255 masks)."
            )
        nochange_values = parse_values(
            self.parameterAsString(parameters, self.NOCHANGE_VALUES, context), "No-change values")
        threshold = self._optional_double(parameters, self.THRESHOLD, context, None)
        band = self.parameterAsInt(parameters, self.BAND, context) or 1
        from ..core.accuracy import accuracy_report_html, assess_rasters

        feedback.setProgressText("Comparing the change map with the reference")
        try:
            metrics = assess_rasters(change_map, reference, change_values, nochange_values,
                                     threshold=threshold, band=band)
        except MetricCDError as exc:
            raise processing_error(exc) from None
        except RuntimeError as exc:  # GDAL
            raise QgsProcessingException(
                f"The rasters could not be compared ({exc}); check that both are readable and "
                "overlap."
            ) from None
        feedback.setProgress(80)
        if metrics["n"] == 0:
            feedback.pushWarning(
                "No pixel of the change map has a reference label; check the change / no-change "
                "values and that the rasters overlap."
            )
        for key in ("tp", "fp", "fn", "tn", "precision", "recall", "f1", "kappa",
                    "overall_accuracy", "roc_auc", "threshold"):
            value = metrics.get(key)
            feedback.pushInfo(f"{key}: {'-' if value is None else f'{value:.6g}'}")

        results: Dict[str, Any] = {
            key: _number(metrics.get(name)) for key, (name, _) in self.NUMBERS.items()
        }
        if is_set(parameters, self.OUTPUT_TABLE):
            table = self._write_table(parameters, context, metrics)
            if table:
                results[self.OUTPUT_TABLE] = table
        if is_set(parameters, self.OUTPUT_REPORT):
            path = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
            try:
                accuracy_report_html(metrics, metrics.get("roc"), path,
                                     title=f"Change detection accuracy: {Path(change_map).name}")
            except MetricCDError as exc:
                raise processing_error(exc) from None
            results[self.OUTPUT_REPORT] = path
        feedback.setProgress(100)
        return results

    def _write_table(self, parameters, context, metrics: Dict[str, Any]) -> Optional[str]:
        fields = QgsFields()
        fields.append(QgsField("metric", QVariant.String))
        fields.append(QgsField("value", QVariant.Double))
        sink, dest = self.parameterAsSink(
            parameters, self.OUTPUT_TABLE, context, fields, QgsWkbTypes.NoGeometry)
        if sink is None:
            return None
        for name in TABLE_ROWS:
            feature = QgsFeature(fields)
            value = _number(metrics.get(name))
            feature.setAttributes([name, value])
            sink.addFeature(feature, QgsFeatureSink.FastInsert)
        return dest
