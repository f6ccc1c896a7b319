"""Processing provider ``metriccd`` ("Metric Change Detection")."""

from __future__ import annotations

from pathlib import Path
from typing import List

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .installer import packages_dir

ICON = Path(__file__).resolve().parents[1] / "resources" / "icon.svg"
PROVIDER_ID = "metriccd"
PROVIDER_NAME = "Metric Change Detection"


def packages_target() -> Path:
    """The folder of this QGIS profile that *Install PyTorch* installs into (on ``sys.path``)."""
    return packages_dir(QgsApplication.qgisSettingsDirPath())


class MetricChangeDetectionProvider(QgsProcessingProvider):
    """Registers the plugin's algorithms; loads even when torch is not installed."""

    def id(self) -> str:
        """Provider id (the prefix of every algorithm id, e.g. ``metriccd:...``)."""
        return PROVIDER_ID

    def name(self) -> str:
        """Name shown in the Processing Toolbox."""
        return PROVIDER_NAME

    def longName(self) -> str:  # noqa: N802
        """Name with version."""
        return f"{PROVIDER_NAME} (Metric-CD, Bandara & Patel, WACV 2025)"

    def icon(self) -> QIcon:
        """Provider icon."""
        return QIcon(str(ICON))

    def svgIconPath(self) -> str:  # noqa: N802
        """Path of the provider's SVG icon."""
        return str(ICON)

    def supportedOutputRasterLayerExtensions(self) -> List[str]:  # noqa: N802
        """The pipeline writes GeoTIFF."""
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self) -> List[str]:  # noqa: N802
        """The pipeline writes GeoPackage."""
        return ["gpkg"]

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:  # noqa: N802, N803
        """Vector outputs default to GeoPackage."""
        return "gpkg"

    def defaultRasterFileExtension(self) -> str:  # noqa: N802
        """Raster outputs default to GeoTIFF."""
        return "tif"

    def loadAlgorithms(self) -> None:  # noqa: N802
        """Add the algorithms; an import failure is logged instead of breaking QGIS."""
        try:
            from .metric_cd_algorithm import MetricChangeDetectionAlgorithm
        except ImportError as exc:  # e.g. numpy missing: QGIS must still start
            QgsMessageLog.logMessage(
                f"Metric Change Detection algorithms are unavailable: {exc}",
                PROVIDER_NAME, Qgis.Critical,
            )
            return
        self.addAlgorithm(MetricChangeDetectionAlgorithm())
        try:  # numpy/SciPy/GDAL only: never imports torch
            from .accuracy_algorithm import ChangeAccuracyAlgorithm
            from .baseline_algorithms import CvaAlgorithm, IrmadAlgorithm, PcaKmeansAlgorithm
        except ImportError as exc:
            QgsMessageLog.logMessage(
                f"The classical baselines and the accuracy assessment are unavailable: {exc}",
                PROVIDER_NAME, Qgis.Critical,
            )
            return
        for algorithm in (CvaAlgorithm(), PcaKmeansAlgorithm(), IrmadAlgorithm(),
                          ChangeAccuracyAlgorithm()):
            self.addAlgorithm(algorithm)
