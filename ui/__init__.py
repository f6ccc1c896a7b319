"""Dialogs of the Metric Change Detection plugin (imports qgis)."""
