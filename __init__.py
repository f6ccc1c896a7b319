"""Metric Change Detection: unsupervised change detection for QGIS."""


def classFactory(iface):  # noqa: N802 (QGIS entry point name)
    """Return the plugin instance (called by QGIS)."""
    from .plugin import MetricChangeDetectionPlugin

    return MetricChangeDetectionPlugin(iface)
