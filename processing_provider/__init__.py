"""Processing provider and algorithms of the Metric Change Detection plugin (imports qgis)."""
