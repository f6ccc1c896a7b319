"""The HTML report of a real run, rendered by a real browser (headless Chromium).

Skipped only where no Chromium is installed (``setup.sh`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

pytestmark = pytest.mark.qgis
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1200, 4000


def screenshot(html: Path, png: Path, profile: Path) -> None:
    """Render ``html`` as Chromium shows it in a 1200 x 4000 window into ``png``."""
    command = [
        BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={WIDTH},{HEIGHT}",
        html.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def colour_count(rgb: np.ndarray, colour, tolerance: int = 2) -> int:
    return int((np.abs(rgb.astype(int) - np.array(colour)).max(axis=1) <= tolerance).sum())


@pytest.mark.skipif(BROWSER is None, reason="Chromium is not installed (setup.sh installs it)")
def test_a_real_report_renders_in_chromium_and_is_one_file(provider, fast_params, tmp_path):
    import processing
    from metric_change_detection.processing_provider import quicklook
    from qgis.core import QgsProcessingFeedback

    html_path = tmp_path / "report.html"
    params = {**fast_params, "OUTPUT": str(tmp_path / "p.tif"), "OUTPUT_MASK": str(tmp_path / "m.tif"),
              "OUTPUT_POLYGONS": str(tmp_path / "c.gpkg"), "OUTPUT_REPORT": str(html_path)}
    results = processing.run("metriccd:metricchangedetection", params,
                             feedback=QgsProcessingFeedback())
    assert results["OUTPUT_REPORT"] == str(html_path) and results["POLYGON_COUNT"] > 0
    html = html_path.read_text(encoding="utf-8")

    # One self-contained file: every reference is a data URI or a fragment inside the page.
    refs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", html)
    assert refs and all(ref.startswith(("data:", "#")) for ref in refs), refs
    assert "<link" not in html and "<script" not in html and "@import" not in html
    assert not re.findall(r"https?://(?!www\.w3\.org/2000/svg\")", html)  # only SVG's namespace

    png = tmp_path / "report.png"
    screenshot(html_path, png, tmp_path / "chromium-profile")
    assert png.is_file()
    ds = gdal.Open(str(png))
    assert (ds.RasterXSize, ds.RasterYSize) == (WIDTH, HEIGHT)
    rgb = ds.ReadAsArray()[:3].reshape(3, -1).T
    assert rgb.std() > 20, "the page rendered blank or uniform"
    assert len(np.unique(rgb @ np.array([65536, 256, 1]))) > 2000, "no imagery on the page"
    rows = np.where((ds.ReadAsArray()[:3] < 240).any(axis=(0, 2)))[0]
    assert rows.max() > 1800, "the page stops early: sections missing"
    # The embedded quicklooks and SVG charts were drawn: their exact style colours are on screen.
    mask_colour, opacity = quicklook.mask_colour()
    on_white = [round(255 * (1 - opacity) + c * opacity) for c in mask_colour]
    outline = quicklook.polygon_colours()[2]
    top_of_ramp = quicklook.probability_ramp()[-1][1]
    for name, colour in (("mask quicklook", on_white), ("polygon outlines", outline),
                         ("probability quicklook and colour bar", top_of_ramp),
                         ("histogram bars", (253, 141, 60)), ("loss curves", (31, 119, 180))):
        assert colour_count(rgb, colour) > 50, f"{name} not rendered"
