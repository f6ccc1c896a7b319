"""Accuracy assessment of change maps: confusion matrix, precision/recall/F1/kappa/OA and ROC-AUC.

Everything streams over tiles (:class:`ConfusionAccumulator`), so a whole raster is assessed with
bounded memory (:func:`assess_rasters`). Undefined ratios (e.g. precision with no predicted
change, recall on a reference without change) are reported as ``None``.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
from osgeo import gdal, osr
from scipy.stats import rankdata

from .errors import InputError
from .threshold import StreamingHistogram

gdal.UseExceptions()

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
RocCurve = Tuple[np.ndarray, np.ndarray]

_WINDOW = 1024


def _ratio(num: float, den: float) -> Optional[float]:
    return float(num / den) if den > 0 else None


def _auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoidal area under a curve whose points are sorted by increasing fpr."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) * 0.5))


class ConfusionAccumulator:
    """Confusion matrix and score histograms accumulated tile by tile.

    Scores are histogrammed per reference class into ``bins`` fixed bins over ``score_range``
    (values outside are clipped into the end bins), which gives a streaming ROC curve; its AUC is
    exact when no two scores of different classes share a bin (ties inside a bin count half).

    Args:
        bins: Number of score bins.
        score_range: ``(low, high)`` of the scores (e.g. ``(0, 1)`` for probabilities).
    """

    def __init__(self, bins: int = 4096, score_range: Tuple[float, float] = (0.0, 1.0)) -> None:
        lo, hi = float(score_range[0]), float(score_range[1])
        if int(bins) != bins or bins < 2 or not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise InputError(
                f"Need bins >= 2 and a finite score_range low < high, got {bins} and {score_range}."
            )
        self.edges = np.linspace(lo, hi, int(bins) + 1)
        self.hist_change = np.zeros(int(bins), np.int64)
        self.hist_nochange = np.zeros(int(bins), np.int64)
        self.tp = self.fp = self.fn = self.tn = 0
        self.has_scores = False

    def add(
        self,
        prediction: np.ndarray,
        reference_change: np.ndarray,
        reference_labelled: Optional[np.ndarray] = None,
        scores: Optional[np.ndarray] = None,
    ) -> None:
        """Add one tile.

        Args:
            prediction: Bool array, True = predicted change.
            reference_change: Bool array of the same shape, True = reference change.
            reference_labelled: Bool array, True where the pixel is assessed (None = everywhere).
            scores: Optional float array (higher = more change) for the ROC curve; non-finite
                scores are left out of the ROC only.
        """
        pred = np.asarray(prediction, dtype=bool)
        ref = np.asarray(reference_change, dtype=bool)
        if reference_labelled is None:
            lab = np.ones(pred.shape, bool)
        else:
            lab = np.asarray(reference_labelled, bool)
        if not (pred.shape == ref.shape == lab.shape):
            raise InputError(
                f"prediction, reference_change and reference_labelled must have one shape, got "
                f"{pred.shape}, {ref.shape}, {lab.shape}; align the maps first."
            )
        p, r = pred[lab], ref[lab]
        tp = int(np.count_nonzero(p & r))
        fp = int(np.count_nonzero(p)) - tp
        fn = int(np.count_nonzero(r)) - tp
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.tn += int(p.size) - tp - fp - fn
        if scores is not None:
            s = np.asarray(scores, dtype=np.float64)
            if s.shape != pred.shape:
                raise InputError(f"scores must have the prediction's shape {pred.shape}, got {s.shape}.")
            s = s[lab]
            ok = np.isfinite(s)
            s = np.clip(s[ok], self.edges[0], self.edges[-1])
            r = r[ok]
            self.hist_change += np.histogram(s[r], bins=self.edges)[0]
            self.hist_nochange += np.histogram(s[~r], bins=self.edges)[0]
            self.has_scores = True

    def roc_curve(self) -> RocCurve:
        """ROC curve from the score histograms: ``(fpr, tpr)``, from (0, 0) to (1, 1).

        Raises:
            InputError: No scores were added or one reference class is empty.
        """
        pos, neg = self.hist_change[::-1], self.hist_nochange[::-1]  # descending thresholds
        if not self.has_scores or pos.sum() == 0 or neg.sum() == 0:
            raise InputError(
                "ROC needs scores of both change and no-change reference pixels; pass scores to add() "
                "and a reference containing both classes."
            )
        tpr = np.concatenate([[0.0], np.cumsum(pos) / pos.sum()])
        fpr = np.concatenate([[0.0], np.cumsum(neg) / neg.sum()])
        return fpr, tpr

    def roc_auc(self) -> Optional[float]:
        """Area under the streamed ROC curve (None without scores or with one class only)."""
        try:
            fpr, tpr = self.roc_curve()
        except InputError:
            return None
        return _auc(fpr, tpr)

    def metrics(self) -> Dict[str, Any]:
        """tp, fp, fn, tn, n, precision, recall, f1, kappa, overall_accuracy, roc_auc,
        changed_fraction (predicted) and reference_changed_fraction; undefined values are None."""
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        return _metrics(tp, fp, fn, tn, self.roc_auc())


def _metrics(tp: int, fp: int, fn: int, tn: int, auc: Optional[float]) -> Dict[str, Any]:
    n = tp + fp + fn + tn
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    oa = _ratio(tp + tn, n)
    kappa = None
    if n:
        pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / float(n) ** 2
        kappa = _ratio((tp + tn) / n - pe, 1.0 - pe) if pe < 1.0 else None
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn, "n": n,
        "precision": precision, "recall": recall, "f1": f1, "kappa": kappa,
        "overall_accuracy": oa, "roc_auc": auc,
        "changed_fraction": _ratio(tp + fp, n),
        "reference_changed_fraction": _ratio(tp + fn, n),
    }


def roc_auc(
    scores: np.ndarray, change: np.ndarray, labelled: Optional[np.ndarray] = None
) -> Optional[float]:
    """Exact ROC-AUC (Mann-Whitney rank formula, tied scores count half).

    Args:
        scores: Float array, higher = more change; non-finite scores are ignored.
        change: Bool array, True = reference change.
        labelled: Bool array, True where assessed (None = everywhere).

    Returns:
        The AUC, or None when a reference class has no pixel.
    """
    s = np.asarray(scores, np.float64)
    c = np.asarray(change, bool)
    m = np.isfinite(s) if labelled is None else np.asarray(labelled, bool) & np.isfinite(s)
    if not (s.shape == c.shape == m.shape):
        raise InputError(f"scores, change and labelled must have one shape, got {s.shape}, {c.shape}.")
    s, c = s[m], c[m]
    n_pos = int(c.sum())
    n_neg = int(c.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[c].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def assessment(
    prediction: np.ndarray,
    change: np.ndarray,
    labelled: Optional[np.ndarray] = None,
    scores: Optional[np.ndarray] = None,
) -> Dict[str, Any]:
    """Metrics of in-memory arrays (see :meth:`ConfusionAccumulator.metrics`), exact ROC-AUC."""
    acc = ConfusionAccumulator(bins=2)
    acc.add(prediction, change, labelled)
    out = acc.metrics()
    if scores is not None:
        out["roc_auc"] = roc_auc(scores, change, labelled)
    return out


# ----------------------------------------------------------------------------- rasters


def _open(path: PathLike, role: str) -> gdal.Dataset:
    try:
        ds = gdal.Open(str(path))
    except RuntimeError as exc:
        raise InputError(f"Cannot open the {role} {path}: {exc}; check the path and format.") from exc
    if ds is None:
        raise InputError(f"Cannot open the {role} {path}; check the path and format.")
    return ds


def _georef(ds: gdal.Dataset) -> Optional[Tuple[float, ...]]:
    gt = ds.GetGeoTransform(can_return_null=True)
    return tuple(gt) if gt is not None else None


def _same_srs(wkt_a: str, wkt_b: str) -> bool:
    if not wkt_a or not wkt_b:
        return True
    a, b = osr.SpatialReference(), osr.SpatialReference()
    a.ImportFromWkt(wkt_a)
    b.ImportFromWkt(wkt_b)
    return bool(a.IsSame(b))


def _aligned_reference(ref: gdal.Dataset, grid: gdal.Dataset) -> Tuple[gdal.Dataset, Optional[int]]:
    """The reference on the change map's grid (nearest) and the index of its alpha band, if any."""
    w, h = grid.RasterXSize, grid.RasterYSize
    gt_map, gt_ref = _georef(grid), _georef(ref)
    same_size = (ref.RasterXSize, ref.RasterYSize) == (w, h)
    if gt_map is None or gt_ref is None:
        if not same_size:
            raise InputError(
                f"The reference ({ref.RasterXSize} x {ref.RasterYSize}) or the change map ({w} x {h}) is "
                "not georeferenced and their sizes differ; georeference both or give a reference on "
                "the change map's pixel grid."
            )
        return ref, None
    wkt_map, wkt_ref = grid.GetProjection(), ref.GetProjection()
    if same_size and np.allclose(gt_map, gt_ref, rtol=0, atol=1e-9 * max(1.0, abs(gt_map[1]))) and _same_srs(
        wkt_map, wkt_ref
    ):
        return ref, None
    src = ref
    if bool(wkt_map) != bool(wkt_ref):  # one side lacks a CRS: assume they share it
        src = gdal.Translate("", ref, format="VRT", outputSRS=wkt_map or wkt_ref)
        if not wkt_map:
            wkt_map = wkt_ref
    bounds = (gt_map[0], gt_map[3] + gt_map[5] * h, gt_map[0] + gt_map[1] * w, gt_map[3])
    kwargs: Dict[str, Any] = {}
    if wkt_map:
        kwargs["dstSRS"] = wkt_map
    if gt_map[2] or gt_map[4]:
        raise InputError("Rotated change-map grids are not supported; warp the change map north-up first.")
    warped = gdal.Warp(
        "", src, format="VRT", outputBounds=bounds, width=w, height=h, resampleAlg="near",
        dstAlpha=True, **kwargs,
    )
    return warped, warped.RasterCount


def _windows(width: int, height: int, size: int = _WINDOW) -> Iterator[Tuple[int, int, int, int]]:
    for y in range(0, height, size):
        for x in range(0, width, size):
            yield x, y, min(size, width - x), min(size, height - y)


def _read_map(band: gdal.Band, win: Tuple[int, int, int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Values (float64) and validity (mask band, finite) of one window."""
    x, y, w, h = win
    values = band.ReadAsArray(x, y, w, h).astype(np.float64)
    valid = (band.GetMaskBand().ReadAsArray(x, y, w, h) > 0) & np.isfinite(values)
    return values, valid


def _score_range(band: gdal.Band) -> Tuple[float, float]:
    try:
        lo, hi = band.ComputeRasterMinMax(False)
    except RuntimeError as exc:
        raise InputError(
            f"The change map has no valid pixel ({exc}); check its nodata value or pick another band."
        ) from exc
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def assess_rasters(
    change_map_path: PathLike,
    reference_path: PathLike,
    change_values: Sequence[float],
    nochange_values: Optional[Sequence[float]] = None,
    threshold: Optional[float] = None,
    band: int = 1,
    bins: int = 4096,
) -> Dict[str, Any]:
    """Assess a change map against a reference raster, window by window.

    The reference is resampled (nearest) onto the change map's grid; without georeferencing the
    two must have the same size. An integer change map is a binary map (non-zero = change); a
    float map is a probability/score map thresholded at ``threshold`` (Otsu over its valid pixels
    when None; change is ``value > threshold``) that also gives a ROC curve and ROC-AUC.
    Nodata pixels of either raster and reference values in neither class are ignored.

    Args:
        change_map_path: The change map (binary uint8 0/1 or probability float).
        reference_path: The reference raster (first band).
        change_values: Reference values meaning change (e.g. ``[255]`` or ``[2]``).
        nochange_values: Reference values meaning no change; None = every other valid value.
        threshold: Threshold for probability maps; None = Otsu.
        band: Band of the change map (1-based).
        bins: Score bins of the streamed ROC curve.

    Returns:
        The metrics of :meth:`ConfusionAccumulator.metrics` plus ``map_type`` ("binary" |
        "probability"), ``threshold`` (None for binary maps) and ``roc`` (``(fpr, tpr)`` lists or
        None).
    """
    change_values = np.asarray(list(change_values), np.float64)
    if change_values.size == 0:
        raise InputError("change_values is empty; give the reference value(s) that mean change, e.g. [255].")
    nochange = None if nochange_values is None else np.asarray(list(nochange_values), np.float64)
    if nochange is not None and np.isin(nochange, change_values).any():
        raise InputError("A value is in both change_values and nochange_values; list each value once.")
    cmap = _open(change_map_path, "change map")
    ref_ds = _open(reference_path, "reference")
    if not 1 <= band <= cmap.RasterCount:
        raise InputError(f"The change map has {cmap.RasterCount} band(s); band {band} does not exist.")
    mband = cmap.GetRasterBand(band)
    ref, alpha = _aligned_reference(ref_ds, cmap)
    rband = ref.GetRasterBand(1)
    alpha_band = ref.GetRasterBand(alpha) if alpha else None
    binary = gdal.GetDataTypeName(mband.DataType).lower() in {
        "byte", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
    }
    width, height = cmap.RasterXSize, cmap.RasterYSize

    thr: Optional[float] = None
    if binary:
        acc = ConfusionAccumulator(bins=2)
    else:
        score_range = _score_range(mband)
        acc = ConfusionAccumulator(bins=bins, score_range=score_range)
        if threshold is None:
            hist = StreamingHistogram(1024, score_range)
            for win in _windows(width, height):
                values, valid = _read_map(mband, win)
                hist.add(values[valid])
            thr = hist.otsu()
        else:
            thr = float(threshold)

    for win in _windows(width, height):
        x, y, w, h = win
        values, valid = _read_map(mband, win)
        rv = rband.ReadAsArray(x, y, w, h).astype(np.float64)
        ok = valid & (rband.GetMaskBand().ReadAsArray(x, y, w, h) > 0)
        if alpha_band is not None:
            ok &= alpha_band.ReadAsArray(x, y, w, h) > 0
        is_change = np.isin(rv, change_values)
        labelled = ok & (is_change | (np.isin(rv, nochange) if nochange is not None else True))
        if binary:
            acc.add(values != 0, is_change, labelled)
        else:
            acc.add(values > thr, is_change, labelled, scores=np.where(valid, values, np.nan))

    out = acc.metrics()
    out["map_type"] = "binary" if binary else "probability"
    out["threshold"] = thr
    out["roc"] = None
    if not binary and out["roc_auc"] is not None:
        fpr, tpr = acc.roc_curve()
        out["roc"] = (fpr.tolist(), tpr.tolist())
    if out["n"] == 0:
        log.warning("No pixel of the change map has a reference label; check change_values and the overlap.")
    return out


# ----------------------------------------------------------------------------- report


def _fmt(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _roc_svg(fpr: Sequence[float], tpr: Sequence[float], size: int = 320, pad: int = 40) -> str:
    f, t = np.asarray(fpr, float), np.asarray(tpr, float)
    if f.size > 1000:  # thin the polyline, keeping both ends
        keep = np.unique(np.linspace(0, f.size - 1, 1000).round().astype(int))
        f, t = f[keep], t[keep]
    pts = " ".join(f"{pad + x * size:.1f},{pad + (1 - y) * size:.1f}" for x, y in zip(f, t))
    end = pad + size
    ticks = "".join(
        f'<text x="{pad + v * size:.0f}" y="{end + 16}" text-anchor="middle">{v:.1f}</text>'
        f'<text x="{pad - 6}" y="{pad + (1 - v) * size + 4:.0f}" text-anchor="end">{v:.1f}</text>'
        for v in (0.0, 0.5, 1.0)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 2 * pad}" height="{size + 2 * pad}" '
        f'font-family="sans-serif" font-size="11">'
        f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#888"/>'
        f'<line x1="{pad}" y1="{end}" x2="{end}" y2="{pad}" stroke="#bbb" stroke-dasharray="4 4"/>'
        f'<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{pts}"/>{ticks}'
        f'<text x="{pad + size / 2}" y="{end + 32}" text-anchor="middle">false positive rate</text>'
        f'<text x="12" y="{pad + size / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {pad + size / 2})">true positive rate</text></svg>'
    )


def accuracy_report_html(
    metrics: Dict[str, Any], roc: Optional[Tuple[Sequence[float], Sequence[float]]], path: PathLike,
    title: str = "Change detection accuracy",
) -> Path:
    """Write a small self-contained HTML report (metrics, confusion matrix, ROC curve as SVG).

    Args:
        metrics: A dict from :func:`assessment`, :func:`assess_rasters` or ``metrics()``.
        roc: ``(fpr, tpr)`` or None (no curve).
        path: Output ``.html`` path.
        title: Page title.

    Returns:
        The path written.
    """
    path = Path(path)
    m = metrics
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>"
        for k, v in m.items()
        if k not in {"roc", "tp", "fp", "fn", "tn"} and (v is None or isinstance(v, (int, float, str)))
    )
    cm = (
        "<table class='cm'><tr><th></th><th>predicted change</th><th>predicted no change</th></tr>"
        f"<tr><th>reference change</th><td>{_fmt(m.get('tp'))}</td><td>{_fmt(m.get('fn'))}</td></tr>"
        f"<tr><th>reference no change</th><td>{_fmt(m.get('fp'))}</td><td>{_fmt(m.get('tn'))}</td></tr>"
        "</table>"
    )
    curve = ""
    if roc is not None:
        auc = m.get("roc_auc")
        curve = f"<h2>ROC curve (AUC {_fmt(auc)})</h2>" + _roc_svg(roc[0], roc[1])
    doc = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
        "th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}td{text-align:right}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1><h2>Confusion matrix</h2>{cm}"
        f"<h2>Metrics</h2><table>{rows}</table>{curve}</body></html>"
    )
    try:
        path.write_text(doc, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"Cannot write the report {path}: {exc}; choose a writable folder.") from exc
    return path
