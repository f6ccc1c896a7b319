"""HTML report of one Metric Change Detection run (GDAL + numpy; self-contained file).

Sections: summary (the result in words, the threshold and how it was chosen, changed area and
polygon count), inputs, the parameters the user set, the effective engine settings (folded
away), provenance (date, versions, device), loss curves per term (inline SVG with axis ticks and
what each curve should do; terms that are off are named, not drawn), the probability histogram
(log count axis) with the threshold, and quicklooks drawn as QGIS draws the layers: the two
dates, the polygons over the after image, the probability with its colour bar and the mask
(PNGs embedded as data URIs: the file references nothing outside itself).
"""

from __future__ import annotations

import datetime
import html
import math
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from osgeo import gdal

from ..core.config import ALPHA
from .help import REFERENCE
from .quicklook import (
    QUICKLOOK,
    colour_probability,
    image_rgba,
    mask_rgba,
    png_data_uri,
    polygons_rgba,
    probability_rgba,
    quicklook_grid,
)
from .summary import summarise

HIST_SAMPLE = 512  # longest side of the probability sample for the histogram
HIST_BINS = 50
LOG_FLOOR = 0.5  # the histogram's log axis starts at half a pixel: a bin of 1 pixel shows
CSS = """
body{font-family:sans-serif;font-size:13px;color:#222;max-width:1000px;margin:12px}
h1{font-size:20px}h2{font-size:16px;border-bottom:1px solid #ccc;margin-top:22px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3;white-space:nowrap}
figure{display:inline-block;vertical-align:top;margin:6px 10px 6px 0}
figcaption{text-align:center;font-size:12px}figcaption small{color:#555}
.chart{display:inline-block;margin:4px}
img{image-rendering:pixelated;border:1px solid #ccc}details{margin:6px 0}
summary{cursor:pointer;color:#1f4e79}.colourbar{display:block;margin:2px auto}
.note{color:#555;font-size:12px;max-width:900px}
"""
METADATA = Path(__file__).resolve().parents[1] / "metadata.txt"
#: What each loss curve is and what it is expected to do, in one line.
TERM_NOTES = {
    "image": "similarity-dissimilarity in the images: the mean difference of the pixels called "
    "unchanged minus that of the pixels called changed; falls as the two groups separate.",
    "feature": "the same in the feature extractor's deep features; it can rise while the "
    "no-change prior moves pixels into the unchanged group (more pixels counted there).",
    "augmented": "the same between colour-jittered views of the two dates; falls as the "
    "groups separate.",
    "consistency": "how far the deep features move under the colour jitter; flat or noisy "
    "while the feature extractor is frozen (nothing it can train).",
    "infonce": "the no-change prior: change mass minus no-change mass; falls as the change "
    "class shrinks to what differs.",
    "total": "the weighted sum the optimiser minimises: falls, then levels off.",
}


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(rows: Sequence[Tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _number(value: float, decimals: int) -> str:
    """``value`` with ``decimals`` decimals; two significant digits below 0.01 (not "0.001")."""
    return f"{value:.2g}" if 0 < abs(value) < 0.01 else f"{value:.{decimals}f}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# --------------------------------------------------------------------------- SVG charts


def nice_ticks(lo: float, hi: float, least: int = 3, integers: bool = False) -> List[float]:
    """Round values within [lo, hi], 1, 2, 2.5 or 5 times a power of ten apart: the widest such
    spacing that gives at least ``least`` of them (with ``integers``, whole spacings only)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    power = 10.0 ** math.ceil(math.log10(hi - lo))
    ticks: List[float] = []
    for k in range(80):  # steps 5, 2.5, 2, 1, 0.5, ... times ``power / 10``: stops long before
        step = float(f"{power * (0.5, 0.25, 0.2, 0.1)[k % 4] / 10.0 ** (k // 4):.12g}")
        if integers and step < 1:
            step = 1.0
        elif integers and not step.is_integer():
            continue
        first = math.ceil(lo / step - 1e-9)
        ticks = [0.0 if i == 0 else i * step
                 for i in range(first, math.floor(hi / step + 1e-9) + 1)]
        if len(ticks) >= least or (integers and step == 1.0):
            break
    return ticks


def is_off(values: Sequence[float]) -> bool:
    """Whether a loss term was off: every recorded value exactly 0."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return bool(finite) and all(v == 0.0 for v in finite)


def loss_chart(term: str, values: Sequence[float], width: int = 300, height: int = 150) -> str:
    """One loss term as an inline SVG polyline with ticked axes (loss, iteration)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    pad_l, pad_r, pad_t, pad_b = 50, 10, 18, 30
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    head = (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<text x="{pad_l}" y="12" font-size="12" font-weight="bold">{_e(term)}</text>'
        f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#bbb"/>'
    )
    if not finite:
        return head + f'<text x="{pad_l + 6}" y="{pad_t + 20}" font-size="11">no values</text></svg>'
    lo, hi = min(finite), max(finite)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - 0.5 * max(abs(lo), 1e-3), hi + 0.5 * max(abs(hi), 1e-3)
    lo, hi = lo - 0.06 * (hi - lo), hi + 0.06 * (hi - lo)  # the curve clear of the frame
    span = hi - lo
    n = len(finite)

    def x_of(i: float) -> float:
        return pad_l + w * (i - 1) / max(n - 1, 1)

    def y_of(v: float) -> float:
        return pad_t + h - h * (v - lo) / span

    points = " ".join(f"{x_of(i + 1):.1f},{y_of(v):.1f}" for i, v in enumerate(finite))
    ticks = []
    for v in nice_ticks(lo, hi):
        y = y_of(v)
        ticks.append(f'<line x1="{pad_l - 3}" y1="{y:.1f}" x2="{pad_l + w}" y2="{y:.1f}" '
                     f'stroke="#eee"/><text x="{pad_l - 5}" y="{y + 3:.1f}" font-size="10" '
                     f'text-anchor="end">{v:.3g}</text>')
    for i in nice_ticks(1, n, integers=True) if n > 1 else [1]:
        x = x_of(i)
        ticks.append(f'<line x1="{x:.1f}" y1="{pad_t + h}" x2="{x:.1f}" y2="{pad_t + h + 3}" '
                     f'stroke="#888"/><text x="{x:.1f}" y="{pad_t + h + 13}" font-size="10" '
                     f'text-anchor="middle">{int(i)}</text>')
    return (
        head + "".join(ticks)
        + f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{points}"/>'
        + f'<text x="{pad_l + w / 2}" y="{height - 3}" font-size="10" text-anchor="middle">'
        "iteration</text></svg>"
    )


def probability_sample(path: str, size: int = HIST_SAMPLE) -> np.ndarray:
    """Valid probabilities of a decimated read of band 1 of ``path`` (1-D float array)."""
    ds = gdal.Open(str(path))
    band = ds.GetRasterBand(1)
    scale = max(ds.RasterXSize, ds.RasterYSize) / float(size)
    bw = max(1, int(round(ds.RasterXSize / max(scale, 1.0))))
    bh = max(1, int(round(ds.RasterYSize / max(scale, 1.0))))
    values = band.ReadAsArray(buf_xsize=bw, buf_ysize=bh).astype(np.float64)
    ok = np.isfinite(values)
    nodata = band.GetNoDataValue()
    if nodata is not None:
        ok &= values != nodata
    return values[ok]


def _count_label(value: int) -> str:
    if value >= 10**6:
        return f"{value // 10**6}M"
    return f"{value // 1000}k" if value >= 10**4 else str(value)


def _log_y(count: float, top: float, pad_t: float, h: float) -> float:
    """Height on the histogram's log axis: :data:`LOG_FLOOR` at the bottom, ``top`` at the top."""
    return pad_t + h - h * math.log10(count / LOG_FLOOR) / math.log10(top / LOG_FLOOR)


def log_ticks(peak: int, pad_l: float, pad_t: float, h: float) -> List[str]:
    """SVG ticks of the histogram's log count axis: labelled at 1, 10, 100, ... up to ``peak``,
    short unlabelled ones at 2-9 times each power of ten."""
    top = max(peak, 1)
    parts = []
    decade = 1
    while decade <= top:
        for m in range(1, 10):
            value = m * decade
            if value > top:
                break
            y = _log_y(value, top, pad_t, h)
            length = 4 if m == 1 else 2
            parts.append(f'<line x1="{pad_l - length}" y1="{y:.1f}" x2="{pad_l}" y2="{y:.1f}" '
                         'stroke="#888"/>')
            if m == 1:
                parts.append(f'<text x="{pad_l - 6}" y="{y + 3:.1f}" font-size="10" '
                             f'text-anchor="end">{_count_label(value)}</text>')
        decade *= 10
    return parts


def histogram_chart(values: np.ndarray, threshold: float, width: int = 560, height: int = 200) -> str:
    """Histogram of probabilities on [0, 1] as an inline SVG (log count axis), the threshold
    marked."""
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=HIST_BINS, range=(0.0, 1.0))
    pad_l, pad_r, pad_t, pad_b = 48, 10, 10, 28
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    peak = max(int(counts.max()) if counts.size else 0, 1)
    bar = w / HIST_BINS
    bars = "".join(  # log scale: the change mode stays visible beside the no-change mode
        f'<rect x="{pad_l + i * bar:.1f}" y="{_log_y(c, peak, pad_t, h):.1f}" '
        f'width="{bar - 0.6:.1f}" height="{pad_t + h - _log_y(c, peak, pad_t, h):.1f}" '
        'fill="#fd8d3c"/>'
        for i, c in enumerate(counts.tolist()) if c > 0
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
        f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#bbb"/>',
        bars,
        *log_ticks(peak, pad_l, pad_t, h),
        *(f'<line x1="{pad_l + w * v:.1f}" y1="{pad_t + h}" x2="{pad_l + w * v:.1f}" '
          f'y2="{pad_t + h + 4}" stroke="#888"/><text x="{pad_l + w * v:.1f}" '
          f'y="{pad_t + h + 14}" font-size="10" text-anchor="middle">{v:g}</text>'
          for v in (0.0, 0.25, 0.5, 0.75, 1.0)),
        f'<text x="{pad_l + w / 2}" y="{height - 2}" font-size="10" text-anchor="middle">'
        "change probability (pixels per bin, log scale)</text>",
    ]
    if math.isfinite(threshold):
        t = min(max(threshold, 0.0), 1.0)
        x = pad_l + w * t
        label_x, anchor = (x - 5, "end") if t > 0.6 else (x + 5, "start")  # stays inside
        parts.append(
            f'<line x1="{x:.1f}" y1="{pad_t}" x2="{x:.1f}" y2="{pad_t + h}" stroke="#bd0026" '
            f'stroke-width="2" stroke-dasharray="5,3"/><text x="{label_x:.1f}" y="{pad_t + 13}" '
            f'font-size="11" fill="#bd0026" text-anchor="{anchor}">threshold {_number(threshold, 3)}'
            "</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- quicklooks


def colour_bar(width: int = QUICKLOOK, height: int = 44) -> str:
    """The probability ramp (as drawn over white in the quicklook) as an inline SVG with ticks."""
    values = np.linspace(0.0, 1.0, 41)
    rgba = colour_probability(values[None, :])[:3, 0, :]
    stops = "".join(
        f'<stop offset="{v:.3f}" stop-color="rgb({r},{g},{b})"/>'
        for v, (r, g, b) in zip(values, rgba.T.tolist())
    )
    ident = f"ramp{uuid.uuid4().hex[:8]}"
    ticks = "".join(
        f'<line x1="{4 + (width - 8) * v:.1f}" y1="22" x2="{4 + (width - 8) * v:.1f}" y2="26" '
        f'stroke="#555"/><text x="{4 + (width - 8) * v:.1f}" y="37" font-size="10" '
        f'text-anchor="middle">{v:g}</text>' for v in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    return (
        f'<svg class="colourbar" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}"><defs><linearGradient id="{ident}">{stops}</linearGradient></defs>'
        f'<rect x="4" y="6" width="{width - 8}" height="16" fill="url(#{ident})" stroke="#999"/>'
        f"{ticks}</svg>"
    )


def _bands_caption(bands: Sequence[int]) -> str:
    names = ("red", "green", "blue")
    if len(bands) == 3:
        return ", ".join(f"{n} = band {b}" for n, b in zip(names, bands))
    return f"band {bands[0]}"


def quicklooks(
    before: str,
    after: str,
    probability: str,
    bands_before: Sequence[int],
    bands_after: Sequence[int],
    mask: Optional[str] = None,
    polygons: Optional[str] = None,
    size: int = QUICKLOOK,
) -> List[Tuple[str, str, str, Tuple[int, int]]]:
    """(caption, what it shows, data URI, display size) of the quicklooks on the probability's
    grid (shown :data:`QUICKLOOK` pixels on their longest side).

    Before, after, the polygons over the after image (with ``polygons``), the probability and
    the mask (with ``mask``), each drawn as QGIS draws the layer (see :mod:`.quicklook`).
    """
    grid = quicklook_grid(probability, size)
    shown = (size, max(1, round(size * grid.height / grid.width))) if grid.width >= grid.height \
        else (max(1, round(size * grid.width / grid.height)), size)
    after_rgba = image_rgba(after, bands_after, grid, probability)
    looks = [
        ("Before", _bands_caption(bands_before),
         png_data_uri(image_rgba(before, bands_before, grid, probability))),
        ("After", _bands_caption(bands_after), png_data_uri(after_rgba)),
    ]
    if polygons:
        looks.append(("Change polygons over the after image", "outlines and fill as styled",
                      png_data_uri(polygons_rgba(polygons, after_rgba, grid))))
    looks.append(("Change probability", "", png_data_uri(probability_rgba(probability, grid))))
    if mask:
        looks.append(("Change mask", "red = change, grey = no data",
                      png_data_uri(mask_rgba(mask, grid))))
    return [(caption, detail, uri, shown) for caption, detail, uri in looks]


def plugin_version() -> str:
    """The plugin's version from metadata.txt."""
    try:
        for line in METADATA.read_text(encoding="utf-8").splitlines():
            if line.startswith("version="):
                return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def provenance(device: str, qgis_version: Optional[str] = None) -> List[Tuple[str, str]]:
    """When and with what the run was made: date, plugin, QGIS, GDAL, torch, numpy, device."""
    torch = sys.modules.get("torch")
    return [
        ("Date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z").strip()),
        ("Plugin", f"Metric Change Detection {plugin_version()}"),
        ("QGIS", qgis_version or "not used (command line)"),
        ("GDAL", gdal.__version__),
        ("PyTorch", getattr(torch, "__version__", "not loaded (classical method)")),
        ("numpy", np.__version__),
        ("Python", sys.version.split()[0]),
        ("Device", device),
    ]


def quicklook_bands(chosen: Optional[Sequence[int]], fe_bands: Optional[Sequence[int]], count: int):
    """Bands shown for one date: the D-FE bands, else three of the chosen bands, else band 1."""
    if fe_bands:
        return list(fe_bands)
    bands = list(chosen) if chosen else list(range(1, count + 1))
    return bands[:3] if len(bands) >= 3 else bands[:1]


# --------------------------------------------------------------------------- the report


def threshold_rule(parameters: Mapping[str, Any], mode: str, threshold: float) -> str:
    """How the threshold was chosen, and what the number means, in words."""
    given = parameters.get("THRESHOLD")
    if given is not None and str(given).strip().lower() == "otsu":
        return "Otsu's threshold: the value that splits the probability histogram in two groups"
    if given is not None:
        return "given by the user"
    if mode == "per-tile":
        return ("automatic, per tile: each tile's map is calibrated on its own no-change law, "
                "and the mask marks a change probability above 0.5")
    alpha = float(parameters.get("ALPHA", ALPHA))
    return (f"automatic: the no-change test at false-alarm rate {alpha:g}. A pixel is marked "
            f"where an unchanged pixel would score as high with a chance below {alpha:g}; on "
            f"this map that is a change probability above {_number(threshold, 4)}")


def _figure(caption: str, detail: str, uri: str, size: Tuple[int, int], extra: str = "") -> str:
    small = f"<br><small>{_e(detail)}</small>" if detail else ""
    return (f'<figure><img alt="{_e(caption)}" src="{uri}" width="{size[0]}" height="{size[1]}">'
            f"<figcaption>{_e(caption)}{small}{extra}</figcaption></figure>")


def build_report(
    result: Any,
    before: str,
    after: str,
    parameters: Mapping[str, Any],
    settings: Mapping[str, Any],
    bands_before: Optional[Sequence[int]] = None,
    bands_after: Optional[Sequence[int]] = None,
    fe_bands: Optional[Sequence[int]] = None,
    qgis_version: Optional[str] = None,
) -> str:
    """The report's HTML for a finished run (``result`` is a core ``ChangeResult``).

    ``parameters`` are the ones the user set (shown in view; no ``THRESHOLD`` means the
    automatic decision, ``"otsu"`` Otsu's), ``settings`` the effective engine settings
    (folded away).
    """
    threshold = float(result.threshold)
    mode = str(getattr(result, "mode", ""))
    changed = summarise(result.output_path, result.changed_fraction, result.mask_path,
                        result.polygons_path)
    area = f"{changed.area:,.6g} {changed.units}"
    summary = [
        ("Threshold", f"{_number(threshold, 4)} ({threshold_rule(parameters, mode, threshold)})"),
        ("Changed fraction", f"{100.0 * float(result.changed_fraction):.2f} % of the valid pixels"),
        ("Changed area", f"{changed.hectares:,.4g} ha ({area})" if changed.hectares is not None
         else area),
        ("Change polygons (count)", "not requested" if changed.polygons is None
         else str(changed.polygons)),
        ("Change probability", result.output_path),
        ("Change mask", result.mask_path or "not requested"),
        ("Change polygons", result.polygons_path or "not requested"),
        ("Feature-extractor bands", getattr(result, "fe_bands", "") or "none (classical method)"),
        ("Run time", f"{float(result.seconds):.1f} s"),
        ("Mode", mode),
        ("Grid", f"{getattr(result, 'width', '?')} x {getattr(result, 'height', '?')} pixels"),
    ]
    inputs = []
    for role, path in (("Before", before), ("After", after)):
        ds = gdal.Open(str(path))
        inputs.append((role, f"{path} ({ds.RasterXSize} x {ds.RasterYSize} px, {ds.RasterCount} bands)"))
    chosen = [(k, _fmt(v)) for k, v in parameters.items() if k not in ("BEFORE", "AFTER")]
    parts = [
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">",
        "<title>Metric Change Detection report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Metric Change Detection report</h1>",
        f'<h2 id="summary">Summary</h2><p class="verdict"><b>{_e(result.verdict)}</b></p>',
        _table(summary),
        '<h2 id="inputs">Inputs</h2>', _table(inputs),
        '<h2 id="parameters">Parameters you set</h2>',
        _table(chosen) if chosen else "<p>None: the preset's defaults.</p>",
        f'<details id="settings"><summary>All {len(settings)} engine settings (the preset with '
        "your changes)</summary>",
        _table([(k, _fmt(v)) for k, v in settings.items()]), "</details>",
        '<h2 id="provenance">Provenance</h2>', _table(provenance(result.device, qgis_version)),
        '<h2 id="loss">Loss curves</h2>',
    ]
    history: Dict[str, List[float]] = dict(getattr(result, "history", {}) or {})
    drawn = {term: values for term, values in history.items() if not is_off(values)}
    off = [term for term in history if term not in drawn]
    if drawn:
        parts.extend(loss_chart(term, values) for term, values in drawn.items())
        notes = "".join(f"<li><b>{_e(term)}</b>: {_e(TERM_NOTES.get(term, ''))}</li>"
                        for term in drawn)
        parts.append(f'<ul class="note">{notes}</ul>')
        if off:
            parts.append(f'<p class="note">Off in these settings (always 0, not drawn): '
                         f'{_e(", ".join(off))}.</p>')
    else:
        parts.append("<p>No loss history was recorded.</p>")
    parts.append('<h2 id="histogram">Probability histogram</h2>')
    sample = probability_sample(result.output_path)
    parts.append(histogram_chart(sample, threshold))
    parts.append(
        f'<p class="note">{sample.size:,} sampled pixels; the dashed line is the threshold used '
        "for the mask, the polygons and the changed fraction.</p>"
    )
    parts.append('<h2 id="quicklooks">Quicklooks</h2>')
    b_count, a_count = gdal.Open(str(before)).RasterCount, gdal.Open(str(after)).RasterCount
    looks = quicklooks(
        before, after, result.output_path,
        quicklook_bands(bands_before, fe_bands, b_count), quicklook_bands(bands_after, fe_bands, a_count),
        mask=result.mask_path, polygons=result.polygons_path,
    )
    for caption, detail, uri, size in looks:
        bar = colour_bar(size[0]) if caption == "Change probability" else ""
        parts.append(_figure(caption, detail, uri, size, bar))
    parts.append(
        '<p class="note">Drawn as QGIS draws the layers: the dates with its default stretch '
        "(8-bit bands as they are, other bands cut at 2 % and 98 % of their values, one band "
        "from its minimum to its maximum), the outputs in the plugin's styles.</p>"
    )
    parts.append(f'<h2 id="reference">Reference</h2><p>{_e(REFERENCE)}</p></body></html>')
    return "\n".join(parts)


def write_report(path: str, **kwargs: Any) -> str:
    """Build the report (see :func:`build_report`) and write it to ``path``; return ``path``."""
    text = build_report(**kwargs)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    return str(target)
