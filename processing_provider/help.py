"""Help texts of the Processing algorithms (kept apart so the algorithm code stays short)."""

from __future__ import annotations

import re
from typing import Any, Dict, List

from ..core.config import MIN_AREA_PIXELS, MetricCDConfig

REFERENCE = (
    "W. G. C. Bandara and V. M. Patel, \"Deep Metric Learning for Unsupervised Change "
    "Detection in Remote Sensing Images\", WACV 2025 (arXiv:2303.09536)."
)

PRESET_NAMES = ("default", "fast", "paper")
SHOWN = {"vgg16": "VGG16", "mobilenet_v2": "MobileNetV2"}


def one_line(text: str) -> str:
    """``text`` with each line break (and the blanks around it) made one space.

    QGIS's help panel turns every line of ``shortHelpString`` into a paragraph of its own, so
    help written over several source lines must reach it as one line.
    """
    return re.sub(r"\s*\n\s*", " ", text).strip()


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return SHOWN.get(str(value), str(value))


def preset_values(setting: str) -> Dict[str, str]:
    """Each preset's value of the engine ``setting`` as shown to users, by preset name."""
    return {name: _shown(getattr(MetricCDConfig.preset(name), setting)) for name in PRESET_NAMES}


def preset_label(setting: str) -> str:
    """The presets' values in a label: "20, paper: 50" (the default preset's value first)."""
    values = preset_values(setting)
    first = values["default"]
    others: List[str] = [f"{name}: {v}" for name, v in values.items() if v != first]
    return ", ".join([f"preset: {first}"] + others)


def preset_help(setting: str) -> str:
    """The presets' values in a help text: "Not set = the preset's value (default 20, ...)"."""
    values = preset_values(setting)
    listed = ", ".join(f"{name} {value}" for name, value in values.items())
    return f"Not set = the preset's value ({listed}); a value you give overrides it."


SHORT_HELP = f"""<p><b>Unsupervised change detection between two images of the same place</b>
(Metric-CD). No training labels are needed: a small fully convolutional change-probability
generator (D-CPG) is optimised on the pair itself. A frozen, ImageNet-pretrained feature
extractor (D-FE: VGG16 or MobileNetV2) turns both dates into deep features; deep metric
learning pulls together the features of pixels the generator calls unchanged and pushes apart
those it calls changed, in image and feature space, so the probability map converges to the
real changes while ignoring radiometric differences and noise.</p>

<p><b>Suitable inputs</b>: two co-registered rasters of the same area (multispectral, RGB or
single band; optical or SAR amplitude), e.g. Sentinel-2, Landsat, aerial orthophotos. The after
image is aligned (reprojected/resampled) onto the before image's grid over their common
extent; nodata and masks are respected. Use the same bands for both dates (choose them with
the band parameters when the files differ). Radiometric differences between the dates are
normalised automatically. Tens of megapixels work: the raster is processed in tiles.</p>

<p><b>Presets</b>: <i>default</i> (recommended: MobileNetV2 features, the generator's score
fused with the features' own change measure, tested against its no-change law and gated by
the spectral evidence),
<i>fast</i> (as default, optimised and predicted at half resolution: faster on large scenes),
<i>paper</i> (the published settings, VGG16; slow). Advanced parameters left unset take
the preset's value, shown in their labels (default and fast: {preset_values("iterations")["default"]}
iterations, learning rate {preset_values("learning_rate")["default"]}, evidence gate
{preset_values("gate")["default"]}, feature fusion {preset_values("feature_fusion")["default"]};
paper: {preset_values("iterations")["paper"]} iterations, learning rate
{preset_values("learning_rate")["paper"]}, feature fusion {preset_values("feature_fusion")["paper"]});
a value you set overrides it. A GPU (CUDA or Apple MPS) is used automatically when there is
one.</p>

<p><b>Outputs</b></p>
<ul>
<li><b>Change probability</b>: float32 GeoTIFF, 0 (no change) to 1 (change), on the before
image's grid (its CRS, extent and pixel size over the common area). Loads with a 0-1 colour
ramp whose near-zero values are transparent.</li>
<li><b>Change mask</b> (optional): byte GeoTIFF, 1 = change, 0 = no change, 255 = nodata; the
pixels whose score is significantly unlike the unchanged pixels at the false-alarm rate (unless
you give a threshold), with change regions smaller than the minimum area (default
{MIN_AREA_PIXELS} pixels) removed. Loads semi-transparent over the imagery.</li>
<li><b>Change polygons</b> (optional): GeoPackage of the mask's change regions with a stable
<i>id</i>, their area and mean / maximum probability; their number and total area are written
to the log and returned as outputs.</li>
<li><b>Report</b> (optional): HTML with the inputs, parameters, device, run time, loss curves,
the probability histogram with the threshold and quicklooks of the two dates and the
result.</li>
<li><b>Threshold used</b>, <b>changed fraction</b> and the <b>result in words</b> ("No
significant change" when nothing passes the test): usable in models.</li>
</ul>

<p><b>The automatic decision</b>: the score's law where nothing changed is estimated from the
pair itself; a pixel is marked changed where an unchanged pixel would score that high less often
than the <i>false-alarm rate</i> (default 0.0001, one in ten thousand). On a pair without change
the result says "No significant change". The outputs load in one layer group named after the
run: polygons on top, then the probability, then the mask.</p>

<p><b>Requirements</b>: PyTorch and torchvision in QGIS's Python (Plugins &gt; Metric Change
Detection &gt; Check dependencies). ImageNet weights are downloaded once by torchvision; offline,
choose a local weights file.</p>

<p><b>Reference</b>: {REFERENCE}</p>
"""

PARAMETERS = {
    "BEFORE": "The earlier image. Its grid (CRS, pixel size, alignment) is the grid of every "
    "output. Must be a file-based raster GDAL can read.",
    "AFTER": "The later image of the same area. It is reprojected and resampled onto the before "
    "image's grid when the grids differ; only the common extent is processed.",
    "BANDS_BEFORE": "Bands of the before image to compare; empty = all bands. Select the same "
    "number of bands, in the same order, as for the after image.",
    "BANDS_AFTER": "Bands of the after image to compare; empty = all bands, matching the bands "
    "chosen for the before image one to one.",
    "FE_BANDS": "One or three band numbers of each image fed to the pretrained feature extractor "
    "as grey or red/green/blue. Empty = automatic: with the default and fast presets, when the "
    "bands record their centre wavelengths (ENVI headers, Sentinel-2 products), the short-wave "
    "infrared, near infrared and red bands (Landsat TM 5-4-3, Sentinel-2 B11-B8-B4: it finds "
    "land-cover change best), else red, green and blue; otherwise (and with the paper preset) "
    "the first three selected bands, or the first band. The bands used are written to the log, "
    "the report and the output's METRICCD_FE_BANDS metadata.",
    "PRESET": "Settings bundle: default (recommended), fast (quick, MobileNetV2) or paper (the "
    "published configuration). Advanced parameters left unset take the preset's values.",
    "ITERATIONS": "Optimisation iterations of the change-probability generator. More "
    "iterations sharpen the map and take longer. " + preset_help("iterations"),
    "LEARNING_RATE": "Adam learning rate of the optimisation. " + preset_help("learning_rate"),
    "GATE": "Evidence gate: 1 = a pixel is marked changed only where its spectral difference "
    "(the CVA magnitude) is also significantly unlike the unchanged pixels, so the network and "
    "the spectra must agree and a pair without change stays unmarked; 0 = the network alone. "
    + preset_help("gate"),
    "FEATURE_FUSION": "Weight of the feature extractor's own measure of change (the distance "
    "between the two dates' deep features, which the loss also uses) added to the generator's "
    "score before the map is calibrated. The two rank pixels differently enough that together "
    "they rank better than either. 0 uses the generator alone. " + preset_help("feature_fusion"),
    "MODE": "scene: one generator optimised on samples of the whole scene and applied to every "
    "tile (fast, consistent). per-tile: a fresh generator optimised on every tile (the paper's "
    "setting; slower, adapts locally).",
    "TILE_SIZE": "Width and height in pixels of the processing tiles (at least 64). Smaller tiles "
    "need less memory; rasters smaller than one tile are processed in one piece.",
    "BACKBONE": "Pretrained feature extractor (D-FE): VGG16 (the paper's; larger and slower) or "
    "MobileNetV2 (faster, smaller). " + preset_help("backbone"),
    "WEIGHTS": "Backbone weights: ImageNet (downloaded once by torchvision and cached), random "
    "(no download; for tests, much less accurate) or a file (choose it below).",
    "WEIGHTS_FILE": "A torchvision state-dict file (.pth) for the chosen backbone, e.g. "
    "vgg16-397923af.pth or mobilenet_v2-b0353104.pth, used when weights is 'file' (offline use).",
    "DEVICE": "Where to compute: auto (CUDA GPU, then Apple MPS, then CPU), CPU, CUDA or MPS.",
    "SEED": "Random seed; the same inputs, settings and seed give the same result on one "
    "machine.",
    "THRESHOLD": "A fixed change probability (between 0 and 1, exclusive) above which a pixel "
    "counts as changed in the mask, the polygons and the changed fraction; not set = the "
    "automatic decision. The automatic decision estimates from the pair itself how the score is "
    "distributed where nothing changed (the peak of its histogram and the side below it, which "
    "change does not reach) and marks a pixel where an unchanged pixel would score that high "
    "less often than the false-alarm rate below (0.0001: one in ten thousand). The number it "
    "reports as 'Threshold used' is the change probability at that limit. The probability is "
    "the share of pixels scoring like this one that are unlike the unchanged ones, so on pairs "
    "with change the threshold is usually 0.97 to 0.99 (it differs from pair to pair), lower "
    "where little changed. A fixed value below it marks more pixels, above it fewer.",
    "ALPHA": "False-alarm rate of the automatic decision: the share of unchanged pixels expected "
    "to be marked changed (0.0001 = one in ten thousand). Lower it for fewer, surer changes; raise "
    "it to find weaker ones. When nothing is significant the result says 'No significant "
    "change' and the mask is empty.",
    "MIN_AREA": "Change regions (8-connected) of fewer pixels than this are removed from the "
    "mask and the polygons; 0 keeps every region. In pixels of the before image, so one value "
    f"suits any resolution ({MIN_AREA_PIXELS} pixels are {MIN_AREA_PIXELS * 100} m² of a 10 m "
    f"Sentinel-2 image, {MIN_AREA_PIXELS / 4:g} m² of a 0.5 m orthophoto). The default, "
    f"{MIN_AREA_PIXELS}, was measured on the 29 shared labelled pairs (bench/bench_min_area.py): "
    "with Metric-CD it removes more than half of the change polygons, the speckle of a few "
    "pixels, and lowers no kind of imagery's mean F1 by more than 0.005; twice as large lowers "
    "Landsat's and DSIFN's by 0.009. To keep only changes above an area in map units, filter "
    "the polygons by their 'area' field.",
    "SETTINGS": "Expert engine settings as key=value pairs separated by ';', e.g. 'width=16; "
    "depth=4; temperature=0.1' (fields of MetricCDConfig). Explicit parameters above win.",
    "DASK_SCHEDULER": "Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786, to compute "
    "the tiles on its cluster (empty = on this computer). Every worker needs the same Python "
    "environment (torch, GDAL, this plugin's package) and must read the inputs under the same "
    "path (shared folder, /vsis3/ or /vsicurl/). Needs the optional package dask[distributed].",
    "OUTPUT": "Change probability GeoTIFF (0 = no change, 1 = change).",
    "OUTPUT_MASK": "Binary change mask GeoTIFF (1 = change, 0 = no change, 255 = nodata).",
    "OUTPUT_POLYGONS": "GeoPackage of change polygons with a stable id, their area and mean / "
    "max probability.",
    "OUTPUT_REPORT": "HTML report: inputs, parameters, device, time, loss curves, histogram with "
    "threshold, quicklooks.",
}
