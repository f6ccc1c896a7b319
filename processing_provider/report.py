"""HTML report of one Metric Change Detection run (GDAL + numpy; self-contained file).

Sections: summary (the result in words, the threshold and how it was chosen, changed area and
polygon count), provenance (date, versions, device), inputs, the parameters the user set, the
effective engine settings (folded away), loss curves per term (inline SVG with axis ticks and
what each curve should do; terms that are off are named, not drawn), the probability histogram
(log ticks) with the threshold, and quicklooks of the two dates and of the probability with its
colour bar (downsampled PNGs embedded as base64).
"""

from __future__ import annotations

import base64
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
from .summary import summarise

QUICKLOOK = 256  # longest side of the quicklooks, pixels
HIST_SAMPLE = 512  # longest side of the probability sample for the histogram
HIST_BINS = 50
# The probability.qml ramp: value, RGB, alpha.
RAMP = (
    (0.0, (255, 255, 178), 0),
    (0.05, (255, 255, 178), 0),
    (0.3, (254, 204, 92), 170),
    (0.5, (253, 141, 60), 220),
    (0.75, (240, 59, 32), 255),
    (1.0, (189, 0, 38), 255),
)
CSS = """
body{font-family:sans-serif;font-size:13px;color:#222;max-width:980px;margin:12px}
h1{font-size:20px}h2{font-size:16px;border-bottom:1px solid #ccc;margin-top:22px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}figure{display:inline-block;margin:6px 10px 6px 0}
figcaption{text-align:center;font-size:12px}.chart{display:inline-block;margin:4px}
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
    "augmented": "the same between augmented views of the pair.",
    "consistency": "agreement of the map between augmented views.",
    "infonce": "the no-change prior: change mass minus no-change mass; falls as the change "
    "class shrinks to what differs.",
    "total": "the weighted sum the optimiser minimises: falls, then levels off.",
}


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(rows: Sequence[Tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# --------------------------------------------------------------------------- SVG charts


def nice_ticks(lo: float, hi: float, count: int = 4) -> List[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) within [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
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
    for i in nice_ticks(1, n, 4) if n > 1 else [1]:
        if float(i).is_integer():
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


def log_ticks(peak: int, pad_l: float, pad_t: float, h: float) -> List[str]:
    """SVG ticks of the histogram's log1p count axis at 0, 1, 10, 100, ... up to ``peak``."""
    parts = []
    value = 0
    while value <= peak:
        y = pad_t + h - h * math.log1p(value) / math.log1p(max(peak, 1))
        parts.append(f'<line x1="{pad_l - 3}" y1="{y:.1f}" x2="{pad_l}" y2="{y:.1f}" '
                     f'stroke="#888"/><text x="{pad_l - 5}" y="{y + 3:.1f}" font-size="10" '
                     f'text-anchor="end">{_count_label(value)}</text>')
        value = 1 if value == 0 else value * 10
    return parts


def histogram_chart(values: np.ndarray, threshold: float, width: int = 560, height: int = 200) -> str:
    """Histogram of probabilities on [0, 1] as an inline SVG, with the threshold marked."""
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=HIST_BINS, range=(0.0, 1.0))
    pad_l, pad_r, pad_t, pad_b = 48, 10, 10, 26
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    peak = max(int(counts.max()) if counts.size else 0, 1)
    heights = h * np.log1p(counts) / np.log1p(peak)  # log scale: the change mode stays visible
    bar = w / HIST_BINS
    bars = "".join(
        f'<rect x="{pad_l + i * bar:.1f}" y="{pad_t + h - bh:.1f}" width="{bar - 0.6:.1f}" '
        f'height="{bh:.1f}" fill="#fd8d3c"/>'
        for i, bh in enumerate(heights)
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
        f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#bbb"/>',
        bars,
        *log_ticks(peak, pad_l, pad_t, h),
        *(f'<text x="{pad_l + w * v:.1f}" y="{pad_t + h + 12}" font-size="10" '
          f'text-anchor="middle">{v:g}</text>' for v in (0.0, 0.25, 0.5, 0.75, 1.0)),
        f'<text x="{pad_l + w / 2}" y="{height - 3}" font-size="10" text-anchor="middle">'
        "change probability (pixels per bin, log scale)</text>",
    ]
    if math.isfinite(threshold):
        x = pad_l + w * min(max(threshold, 0.0), 1.0)
        parts.append(
            f'<line x1="{x:.1f}" y1="{pad_t}" x2="{x:.1f}" y2="{pad_t + h}" stroke="#bd0026" '
            f'stroke-width="2" stroke-dasharray="5,3"/><text x="{x + 4:.1f}" y="{pad_t + 12}" '
            f'font-size="11" fill="#bd0026">threshold {threshold:.3f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- quicklooks


def _png_data_uri(rgba: np.ndarray) -> str:
    """Encode an (bands, H, W) uint8 array as a base64 PNG data URI (GDAL's PNG driver)."""
    bands, height, width = rgba.shape
    mem = gdal.GetDriverByName("MEM").Create("", width, height, bands, gdal.GDT_Byte)
    for i in range(bands):
        mem.GetRasterBand(i + 1).WriteArray(rgba[i])
    name = f"/vsimem/metriccd_{uuid.uuid4().hex}.png"
    try:
        gdal.GetDriverByName("PNG").CreateCopy(name, mem)
        handle = gdal.VSIFOpenL(name, "rb")
        try:
            gdal.VSIFSeekL(handle, 0, 2)
            size = gdal.VSIFTellL(handle)
            gdal.VSIFSeekL(handle, 0, 0)
            data = gdal.VSIFReadL(1, size, handle)
        finally:
            gdal.VSIFCloseL(handle)
    finally:
        gdal.Unlink(name)
        aux = name + ".aux.xml"
        if gdal.VSIStatL(aux) is not None:
            gdal.Unlink(aux)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _quicklook_grid(prob: gdal.Dataset, size: int) -> Tuple[int, int]:
    scale = max(prob.RasterXSize, prob.RasterYSize) / float(size)
    if scale <= 1:
        return prob.RasterXSize, prob.RasterYSize
    return max(1, round(prob.RasterXSize / scale)), max(1, round(prob.RasterYSize / scale))


def _on_grid(path: str, prob: gdal.Dataset, width: int, height: int, bands: Sequence[int]):
    """Read ``bands`` of ``path`` resampled onto the probability raster's extent and size."""
    gt = prob.GetGeoTransform()
    bounds = (gt[0], gt[3] + gt[5] * prob.RasterYSize, gt[0] + gt[1] * prob.RasterXSize, gt[3])
    srs = prob.GetProjection()
    src = gdal.Open(str(path))
    if srs and src.GetProjection():
        ds = gdal.Warp(
            "", src, format="MEM", outputBounds=bounds, width=width, height=height, dstSRS=srs,
            resampleAlg="average", multithread=False,
        )
    else:
        ds = gdal.Translate("", src, format="MEM", width=width, height=height, resampleAlg="average")
    data = np.stack([ds.GetRasterBand(b).ReadAsArray().astype(np.float64) for b in bands])
    valid = np.ones(data.shape[1:], bool)
    for i, b in enumerate(bands):
        valid &= ds.GetRasterBand(b).GetMaskBand().ReadAsArray() > 0
        valid &= np.isfinite(data[i])
    return data, valid


def _stretch(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2-98 % percentile stretch per band to uint8 RGBA (grey when one band)."""
    out = np.zeros((3,) + data.shape[1:], np.uint8)
    channels = data if data.shape[0] == 3 else np.repeat(data[:1], 3, axis=0)
    for i in range(3):
        values = channels[i][valid]
        lo, hi = (np.percentile(values, (2, 98)) if values.size else (0.0, 1.0))
        span = hi - lo if hi > lo else 1.0
        out[i] = np.clip((channels[i] - lo) / span * 255.0, 0, 255).astype(np.uint8)
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    return np.concatenate([out, alpha[None]])


def colour_probability(prob: np.ndarray) -> np.ndarray:
    """Probabilities (H, W) to RGBA uint8 with the probability.qml ramp over a white page."""
    values = np.clip(np.nan_to_num(prob, nan=0.0), 0.0, 1.0)
    stops = np.array([s[0] for s in RAMP])
    rgb = np.stack([np.interp(values, stops, [s[1][i] for s in RAMP]) for i in range(3)])
    alpha = np.interp(values, stops, [s[2] for s in RAMP]) / 255.0
    page = 255.0 * (1.0 - alpha) + rgb * alpha
    valid = np.isfinite(prob)
    out = np.concatenate([page, np.where(valid, 255.0, 0.0)[None]])
    return np.round(out).astype(np.uint8)


def quicklooks(
    before: str,
    after: str,
    probability: str,
    bands_before: Sequence[int],
    bands_after: Sequence[int],
    size: int = QUICKLOOK,
) -> List[Tuple[str, str]]:
    """(caption, data URI) of the before, after and probability quicklooks on one grid."""
    prob = gdal.Open(str(probability))
    width, height = _quicklook_grid(prob, size)
    looks = []
    for caption, path, bands in (("Before", before, bands_before), ("After", after, bands_after)):
        data, valid = _on_grid(path, prob, width, height, bands)
        looks.append((caption, _png_data_uri(_stretch(data, valid))))
    band = prob.GetRasterBand(1)
    values = band.ReadAsArray(buf_xsize=width, buf_ysize=height).astype(np.float64)
    nodata = band.GetNoDataValue()
    if nodata is not None:
        values[values == nodata] = np.nan
    looks.append(("Change probability", _png_data_uri(colour_probability(values))))
    return looks


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
    automatic decision), ``settings`` the effective engine settings (folded away).
    """
    threshold = float(result.threshold)
    if "THRESHOLD" in parameters:
        how = "given by the user"
    else:
        alpha = float(parameters.get("ALPHA", ALPHA))
        how = f"automatic: the no-change test at false-alarm rate {alpha:g}"
    changed = summarise(result.output_path, result.changed_fraction, result.mask_path,
                        result.polygons_path)
    area = f"{changed.area:,.6g} {changed.units}"
    summary = [
        ("Change probability", result.output_path),
        ("Change mask", result.mask_path or "not requested"),
        ("Change polygons", result.polygons_path or "not requested"),
        ("Threshold", f"{threshold:.4f} ({how})"),
        ("Changed fraction", f"{100.0 * float(result.changed_fraction):.2f} % of the valid pixels"),
        ("Changed area", f"{changed.hectares:,.4g} ha ({area})" if changed.hectares is not None
         else area),
        ("Change polygons (count)", "not requested" if changed.polygons is None
         else str(changed.polygons)),
        ("Feature-extractor bands", getattr(result, "fe_bands", "") or "none (classical method)"),
        ("Run time", f"{float(result.seconds):.1f} s"),
        ("Mode", getattr(result, "mode", "")),
        ("Grid", f"{getattr(result, 'width', '?')} x {getattr(result, 'height', '?')} pixels"),
    ]
    inputs = []
    for role, path in (("Before", before), ("After", after)):
        ds = gdal.Open(str(path))
        inputs.append((role, f"{path} ({ds.RasterXSize} x {ds.RasterYSize} px, {ds.RasterCount} bands)"))
    parts = [
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">",
        "<title>Metric Change Detection report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Metric Change Detection report</h1>",
        f'<h2 id="summary">Summary</h2><p class="verdict"><b>{_e(result.verdict)}</b></p>',
        _table(summary),
        '<h2 id="provenance">Provenance</h2>', _table(provenance(result.device, qgis_version)),
        '<h2 id="inputs">Inputs</h2>', _table(inputs),
        '<h2 id="parameters">Parameters you set</h2>',
        _table([(k, _fmt(v)) for k, v in parameters.items()]),
        f'<details id="settings"><summary>All {len(settings)} engine settings (the preset with '
        "your changes)</summary>",
        _table([(k, _fmt(v)) for k, v in settings.items()]), "</details>",
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
        f"<p>{sample.size} sampled pixels; the dashed line is the threshold used for the mask, "
        "the polygons and the changed fraction.</p>"
    )
    parts.append('<h2 id="quicklooks">Quicklooks</h2>')
    b_count, a_count = gdal.Open(str(before)).RasterCount, gdal.Open(str(after)).RasterCount
    looks = quicklooks(
        before, after, result.output_path,
        quicklook_bands(bands_before, fe_bands, b_count), quicklook_bands(bands_after, fe_bands, a_count),
    )
    for caption, uri in looks:
        bar = colour_bar() if caption == "Change probability" else ""
        parts.append(f'<figure><img alt="{_e(caption)}" src="{uri}" width="{QUICKLOOK}">'
                     f"<figcaption>{_e(caption)}{bar}</figcaption></figure>")
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
