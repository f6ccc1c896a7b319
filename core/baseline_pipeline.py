"""detect_change_baseline: the classical baselines (CVA, PCA-KMeans, IR-MAD) through the raster pipeline.

Same contract as :func:`.pipeline.detect_change`: the pair is aligned on the before image's grid,
the method is fitted once on a bounded sample (the whole raster when it has at most
``sample_pixels`` pixels, else a mosaic of random windows), then every tile is scored and
written, blended, into an atomically written float32 score GeoTIFF. The mask's threshold comes
from the one decision layer of every method (:mod:`.decision`): the score's empirical null,
fitted on the sample, at false-alarm rate ``alpha`` (CVA's magnitude and IR-MAD's chi-square
statistic on their near-Gaussian power scales; IR-MAD's also under its theoretical chi-square
law; PCA-KMeans never below its k-means boundary, as its score's no-change law has a long
shoulder where the k-means split already says "no change"). ``threshold="otsu"`` keeps the classic rules
for comparison (Otsu on CVA's magnitude and on ``sqrt(Z)``, PCA-KMeans' k-means boundary).

Scores are not probabilities, so the score raster gets a pseudocolour style whose range is the
score's 2-98 % range (``<stem>.qml`` beside it). Numpy + SciPy + GDAL only (no torch).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import timing
from .baselines import CVA, IRMAD, Baseline, PCAKMeans
from .config import SHARPNESS, THRESHOLD_RULES, PipelineOptions, check_sharpness
from .decision import (
    NullModel,
    admitted_views,
    chi_square_null,
    describe_sharpness,
    fit_null,
    least_significant,
    sharper_date,
    verdict,
    z_critical,
)
from .errors import InputError
from .pipeline import VERSION, ChangeResult, IsCancelled, Progress, _resolved, _Stages
from .preprocess import blur_radius, sharpness_view
from .threshold import StreamingHistogram

log = logging.getLogger(__name__)

METHODS: Dict[str, type] = {"cva": CVA, "pcakmeans": PCAKMeans, "irmad": IRMAD}
ALIASES = {"pca-kmeans": "pcakmeans", "pca_kmeans": "pcakmeans", "ir-mad": "irmad"}
NAMES = {"cva": "CVA", "pcakmeans": "PCA-KMeans", "irmad": "IR-MAD"}
DESCRIPTIONS = {
    "cva": "CVA change magnitude",
    "pcakmeans": "PCA-KMeans change score",
    "irmad": "IR-MAD chi-square statistic",
}
#: How each score is distributed without change (see :data:`.decision.POWERS`).
KINDS = {"cva": "magnitude", "pcakmeans": "real", "irmad": "chi2"}
SAMPLE_PIXELS = 2_000_000
SAMPLE_WINDOW = 256
COMMON_OPTIONS = ("threshold", "sample_pixels", "probability_path", "sharpness", "gate")
SCORE_STYLE = "score"
_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"


def method_key(method: str) -> str:
    """Canonical key (``cva``, ``pcakmeans``, ``irmad``) of a method name; InputError if unknown."""
    key = str(method).strip().lower()
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise InputError(
            f"Unknown method {method!r}; choose one of {', '.join(METHODS)}."
        )
    return key


def make_method(method: str, method_options: Optional[Dict[str, Any]] = None) -> Tuple[str, Baseline]:
    """Build the baseline from its constructor options (common options are ignored here).

    Args:
        method: ``cva``, ``pcakmeans`` or ``irmad``.
        method_options: Constructor keywords, e.g. ``{"block": 4, "n_components": 3}`` for
            PCA-KMeans, ``{"max_iter": 50, "tol": 1e-6}`` for IR-MAD, ``{"normalise": True}`` for
            CVA.

    Returns:
        ``(key, unfitted method)``.
    """
    key = method_key(method)
    cls = METHODS[key]
    kwargs = {k: v for k, v in (method_options or {}).items() if k not in COMMON_OPTIONS}
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise InputError(
            f"Unknown option(s) {', '.join(unknown)} for {NAMES[key]}; use "
            f"{', '.join(allowed + list(COMMON_OPTIONS))}."
        )
    try:
        return key, cls(**kwargs)
    except TypeError as exc:  # e.g. a string where a number is expected
        raise InputError(f"Invalid {NAMES[key]} options {kwargs}: {exc}; check the values.") from None


def _context(model: Baseline) -> int:
    """Pixels of neighbourhood a score depends on (tiles are read with this halo)."""
    return int(model.block) if isinstance(model, PCAKMeans) else 0


def _transform(key: str) -> Callable[[np.ndarray], np.ndarray]:
    """Map scores to the scale the automatic threshold works on (sqrt for IR-MAD's Z)."""
    if key == "irmad":
        return lambda v: np.sqrt(np.maximum(np.asarray(v, np.float64), 0.0))
    return lambda v: np.asarray(v, np.float64)


def _inverse(key: str, value: float) -> float:
    return float(value) ** 2 if key == "irmad" else float(value)


def _whole(grid):
    from .tiling import Window

    return Window(0, 0, grid.width, grid.height)


@dataclass(frozen=True)
class Member:
    """One test of the composite decision: ``model``'s score under sharpness view ``view``
    (:func:`.preprocess.sharpness_view`), its no-change law, and the standardised score above
    which it is significant."""

    model: Baseline
    view: int
    null: NullModel
    limit: float


@dataclass(frozen=True)
class CompositeTest:
    """Every method's decision, as Metric-CD's: the method's own score is significant *and* so
    is the difference itself (the evidence: CVA's magnitude, which for CVA is its own score)
    under every sharpness hypothesis the pair supports (the plain difference, and the sharper
    date blurred by ``sigma`` pixels where one date is measurably sharper).

    A pixel is as significant as its least significant member; the score written is the
    method's plain score that would be that significant (the method's own score where it is
    the only member), so a threshold on it is still the whole test.
    """

    key: str
    members: Tuple[Member, ...]
    sigma: float = 0.0

    @property
    def null(self) -> NullModel:
        """The no-change law of the score written (the method's own plain score's)."""
        return self.members[0].null

    @property
    def halo(self) -> int:
        """Pixels of neighbourhood a blurred view needs beyond the method's own."""
        return blur_radius(self.sigma) if any(m.view for m in self.members) else 0

    def score(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The (H, W) float32 score of a window (NaN where invalid)."""
        views: dict = {}
        scores: dict = {}  # members testing one score under two laws compute it once
        for member in self.members:
            if member.view not in views:
                views[member.view] = sharpness_view(member.view, before, after, valid, self.sigma)
            key = (id(member.model), member.view)
            if key not in scores:
                scores[key] = member.model.score(*views[member.view], valid)
        return self.combine([scores[(id(m.model), m.view)] for m in self.members])

    def combine(self, scores: Sequence[np.ndarray]) -> np.ndarray:
        """The written score from every member's score."""
        if len(scores) == 1:
            return scores[0]
        z = least_significant([m.null.z(s) for m, s in zip(self.members, scores)],
                              [m.limit for m in self.members])
        return np.where(np.isnan(z), np.nan, self.null.score_of_z(z)).astype(np.float32)

    @property
    def views(self) -> Tuple[int, ...]:
        """The sharpness views of the members."""
        return tuple(m.view for m in self.members)


def fit_composite_test(
    key: str, model: Baseline, sample: Tuple[np.ndarray, np.ndarray, np.ndarray], cell: int,
    sigma: float, gate: bool, alpha: float,
) -> Tuple[CompositeTest, np.ndarray]:
    """Fit the decision on a fitted model's sample (a mosaic of ``cell``-sized windows, each
    blurred on its own); returns it and the sample's written score.

    ``gate``: also require the evidence (always, for CVA: its score is the evidence); ``sigma``
    0: the plain difference only.
    """
    b, a, valid = sample
    evidence = model if isinstance(model, CVA) else (CVA().fit(b, a, valid) if gate else None)
    own = model.score(b, a, valid)
    limit = z_critical(alpha)
    null = fit_null(own, KINDS[key])
    if key == "pcakmeans":  # never mark its no-change cluster: its k-means boundary
        limit = max(limit, float(null.z(np.array([model.decision_threshold]))[0]))
    members = [Member(model, 0, null, limit)]
    scores = [own]
    if isinstance(model, IRMAD):  # and under Nielsen's law: Z ~ chi2(bands) without change
        members.append(Member(model, 0, chi_square_null(model.n_bands), z_critical(alpha)))
        scores.append(own)
    if evidence is not None:
        rows = (0, 1, 2) if sigma > 0 else (0,)
        magnitudes = [own if evidence is model and row == 0 else
                      _mosaic_score(evidence, row, b, a, valid, cell, sigma) for row in rows]
        stacked = np.stack(magnitudes)
        ok = np.isfinite(stacked).all(axis=0)
        views = admitted_views(stacked[:, ok]) if ok.any() else (0,)
        for row in views:
            if evidence is model and row == 0:
                continue  # CVA's plain magnitude is its own score, already a member
            members.append(Member(evidence, row, fit_null(magnitudes[row], "magnitude"),
                                  z_critical(alpha)))
            scores.append(magnitudes[row])
    test = CompositeTest(key, tuple(members), float(sigma))
    return test, test.combine(scores)


def _mosaic_score(model: Baseline, row: int, b: np.ndarray, a: np.ndarray, valid: np.ndarray,
                  cell: int, sigma: float) -> np.ndarray:
    """The score of a sample mosaic under one sharpness view, each window blurred on its own."""
    if row == 0:
        return model.score(b, a, valid)
    vb, va = b.copy(), a.copy()
    for r in range(0, valid.shape[0], cell):
        for c in range(0, valid.shape[1], cell):
            w = (slice(None), slice(r, r + cell), slice(c, c + cell))
            vb[w], va[w] = sharpness_view(row, b[w], a[w], valid[w[1:]], sigma)
    return model.score(vb, va, valid)


def sample_cell(grid, sample_pixels: int) -> int:
    """The side of the windows :func:`read_sample` reads (the whole raster's when it fits)."""
    if grid.width * grid.height <= sample_pixels:
        return max(grid.width, grid.height)
    return min(SAMPLE_WINDOW, grid.width, grid.height)


def read_sample(pair, sample_pixels: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fitting sample: ``(before, after, valid)`` of at most about ``sample_pixels`` pixels.

    The whole raster when it is small enough, else a mosaic (a grid of side-by-side windows) of
    random ``256 x 256`` windows from :meth:`AlignedPair.sample_windows`.
    """
    grid = pair.grid
    size = sample_cell(grid, sample_pixels)
    if size >= max(grid.width, grid.height):
        read = pair.read(_whole(grid))
        return read.before, read.after, read.valid
    count = max(1, sample_pixels // (size * size))
    windows = pair.sample_windows(size, count, np.random.default_rng(seed))
    ncols = int(math.ceil(math.sqrt(count)))
    nrows = int(math.ceil(count / ncols))
    c = pair.band_count
    before = np.zeros((c, nrows * size, ncols * size), np.float32)
    after = np.zeros_like(before)
    valid = np.zeros(before.shape[1:], bool)
    for i, window in enumerate(windows):
        r, q = divmod(i, ncols)
        rows, cols = slice(r * size, (r + 1) * size), slice(q * size, (q + 1) * size)
        read = pair.read(window)
        before[:, rows, cols], after[:, rows, cols], valid[rows, cols] = read.before, read.after, read.valid
    return before, after, valid


def write_score_style(path, low: float, high: float) -> Optional[Path]:
    """Write ``<stem>.qml`` beside ``path``: ``resources/styles/score.qml`` rescaled to low..high.

    The template's colour ramp is defined on 0..1; its class values and the renderer's range
    are mapped linearly onto ``low..high`` (low scores transparent, high scores dark red).
    """
    from .raster_io import STYLES_DIR

    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        high = low + 1.0 if math.isfinite(low) else 1.0
        low = low if math.isfinite(low) else 0.0
    target = Path(str(path)).with_suffix(".qml")
    try:
        tree = ET.parse(STYLES_DIR / f"{SCORE_STYLE}.qml")
        root = tree.getroot()
        for renderer in root.iter("rasterrenderer"):
            renderer.set("classificationMin", repr(float(low)))
            renderer.set("classificationMax", repr(float(high)))
        for shader in root.iter("colorrampshader"):
            shader.set("minimumValue", repr(float(low)))
            shader.set("maximumValue", repr(float(high)))
            shader.set("labelPrecision", "3")
            for item in shader.iter("item"):
                value = low + float(item.get("value", "0")) * (high - low)
                item.set("value", repr(value))
                label = f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
                if item.get("label", "").endswith("(low score)"):
                    label += " (low score)"
                elif item.get("label", "").endswith("(high score)"):
                    label += " (high score)"
                item.set("label", label)
        target.write_text(_DOCTYPE + ET.tostring(root, encoding="unicode"), encoding="utf-8")
    except (OSError, ET.ParseError) as exc:
        log.warning("Could not write the style %s: %s", target, exc)
        return None
    return target


def _threshold_rule(options: PipelineOptions, method_options: Dict[str, Any]) -> Union[str, float]:
    """``"auto"``, ``"otsu"`` or a fixed score threshold (a method option wins over the options)."""
    value = method_options.get("threshold")
    if value is None:
        return options.threshold
    if value in THRESHOLD_RULES:
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"threshold must be a number (in score units), 'auto' or 'otsu', got {value!r}."
        ) from None
    if not math.isfinite(value):
        raise InputError(f"threshold must be a finite number, got {value}.")
    return value


def detect_change_baseline(
    method: str,
    before_path: str,
    after_path: str,
    output_path: str,
    *,
    options: Optional[PipelineOptions] = None,
    method_options: Optional[Dict[str, Any]] = None,
    progress: Optional[Progress] = None,
    is_cancelled: Optional[IsCancelled] = None,
) -> ChangeResult:
    """Run CVA, PCA-KMeans or IR-MAD on two rasters and write the change-score GeoTIFF.

    Args:
        method: ``cva``, ``pcakmeans`` (``pca-kmeans``) or ``irmad``.
        before_path: Raster of the earlier date (defines the grid).
        after_path: Raster of the later date (aligned onto the before grid).
        output_path: Float32 score GeoTIFF (higher = more change; nodata -9999).
        options: Pipeline options: bands, tile size, resampling, min area, mask and polygons
            paths. Metric-CD-only options (mode, fe_bands, train_crop, Dask) are ignored; a
            numeric ``threshold`` is used as a fixed score threshold.
        method_options: The method's constructor options (see :func:`make_method`) plus
            ``threshold`` (fixed threshold in score units, for IR-MAD in Z units, or "auto" /
            "otsu"; None = ``options.threshold``), ``sample_pixels`` (fit sample size, default
            2 M) and ``probability_path`` (also write the change probability GeoTIFF: the
            score's posterior under its no-change law).
        progress: ``progress(percent, message)``.
        is_cancelled: ``is_cancelled() -> bool``, checked once per tile.

    Returns:
        The :class:`ChangeResult` (``device`` "cpu", ``mode`` the method key; for IR-MAD
        ``history`` holds the canonical correlations and the iteration count).

    Raises:
        InputError: Bad inputs or options. Cancelled: the caller asked to stop. On any error
        no output file is left behind.
    """
    from . import outputs, raster_io

    start = time.perf_counter()
    timing.reset()
    options = options or PipelineOptions()
    method_options = dict(method_options or {})
    key, model = make_method(method, method_options)
    rule = _threshold_rule(options, method_options)
    sample_pixels = method_options.get("sample_pixels", SAMPLE_PIXELS)
    if int(sample_pixels) != sample_pixels or sample_pixels < 4096:
        raise InputError(f"sample_pixels must be a whole number >= 4096, got {sample_pixels}.")
    probability_path = method_options.get("probability_path") or None
    sharpness = check_sharpness(method_options.get("sharpness", SHARPNESS))
    gate = method_options.get("gate", True)
    if not isinstance(gate, bool):
        raise InputError(f"gate must be true or false, got {gate!r}.")
    context = _context(model) + blur_radius(sharpness)
    if 2 * context >= options.tile_size:
        raise InputError(
            f"The PCA-KMeans block and the blur allowed between the dates need {context} "
            f"pixels of context, which must be less than half the tile size "
            f"({options.tile_size}); use a smaller block or sharpness, or larger tiles."
        )
    stages = _Stages(progress or (lambda pct, msg: None), is_cancelled or (lambda: False))
    paths = [p for p in (output_path, probability_path, options.mask_path, options.polygons_path) if p]
    if len(set(map(_resolved, paths))) != len(paths):
        raise InputError("Two outputs share one path; give each output its own file name.")
    for path in paths:
        raster_io.check_output_path(path, [before_path, after_path])

    report = stages.stage(2, "Opening and aligning the rasters")
    with raster_io.open_pair(
        before_path, after_path, options.bands_before, options.bands_after, None, options.resampling
    ) as pair:
        grid = pair.grid
        report(100, f"Aligned grid: {grid.width} x {grid.height} pixels, {pair.band_count} bands")
        report = stages.stage(20, f"Fitting {NAMES[key]}")
        with timing.stage("fit"):
            b, a, valid = read_sample(pair, int(sample_pixels), seed=int(getattr(model, "seed", 0)))
            if not valid.any():
                raise InputError(
                    "No pixel of the fitting sample is valid in both dates; check the nodata "
                    "values and masks, or raise sample_pixels."
                )
            stages.check()
            model.fit(b, a, valid)
            test, raw = fit_composite_test(
                key, model, (b, a, valid), sample_cell(grid, int(sample_pixels)), sharpness,
                gate, options.alpha,
            )
            null = test.null
            sample = _transform(key)(raw)
            del b, a, valid, raw
            finite = sample[np.isfinite(sample)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            if hi <= lo:
                hi = lo + max(abs(lo), 1.0) * 1e-6
            # The style stretches the sample's 2-98 % range (the whole map's, up to sampling).
            low, high = np.quantile(finite, (0.02, 0.98)) if finite.size else (lo, hi)
            del sample, finite
        report(100, f"{NAMES[key]} fitted")
        said = describe_sharpness(test.views, sharpness)
        if said:
            report(100, said)
        metadata = {
            "METRICCD_VERSION": VERSION,
            "METRICCD_METHOD": key,
            "METRICCD_METHOD_OPTIONS": json.dumps(
                {k: v for k, v in method_options.items() if k != "probability_path"}, default=str
            ),
            "METRICCD_BEFORE": str(before_path),
            "METRICCD_AFTER": str(after_path),
            **_fit_metadata(model),
            "METRICCD_SHARPNESS": f"{sharpness:g}",
            "METRICCD_SHARPER_DATE": sharper_date(test.views),
            **{str(k): str(v) for k, v in options.extra_metadata.items()},
        }
        # Every rule but Otsu's is known now: the mask is then written beside the scores.
        known = None if rule == "otsu" and key != "pcakmeans" else _known_threshold(
            key, rule, null, model, options.alpha
        )
        mask = None if known is None else outputs.streaming_mask(options, output_path, grid, known)
        histogram = StreamingHistogram(1024, (lo, hi)) if known is None else None
        try:
            _write_scores(
                pair, model, test, output_path, probability_path, metadata, options.tile_size,
                stages, histogram, mask,
            )
        except BaseException:
            if mask is not None:
                mask.abort()
            raise
    created: List[str] = [output_path] + ([probability_path] if probability_path else [])
    try:
        threshold = known if known is not None else _inverse(key, histogram.otsu())
        write_score_style(output_path, _inverse(key, low), _inverse(key, high))
    except BaseException:
        outputs.discard(created, mask)
        raise
    report = stages.stage(100, "Writing the change mask and polygons")
    changed = outputs.finish_outputs(
        output_path, threshold, options, grid.geotransform, created, stages.check, mask
    )
    said = verdict(changed, rule, options.alpha)
    report(100, said)
    return ChangeResult(
        output_path=str(output_path),
        mask_path=options.mask_path,
        polygons_path=options.polygons_path,
        threshold=float(threshold),
        changed_fraction=float(changed),
        seconds=time.perf_counter() - start,
        device="cpu",
        mode=key,
        width=grid.width,
        height=grid.height,
        history=_history(model),
        verdict=said,
        stages=timing.totals(),
    )


def _known_threshold(key: str, rule, null: NullModel, model: Baseline, alpha: float) -> float:
    """The score threshold of a rule known before the scores are computed (all but Otsu's)."""
    if not isinstance(rule, str):
        return float(rule)
    if rule == "auto":
        threshold = null.score_threshold(alpha)
        if key == "pcakmeans":  # its own class boundary: never mark the no-change cluster
            threshold = max(threshold, float(model.decision_threshold))
        return threshold
    return float(model.decision_threshold)  # PCA-KMeans' Otsu rule: its k-means boundary


def _fit_metadata(model: Baseline) -> Dict[str, str]:
    if isinstance(model, IRMAD):
        return {
            "METRICCD_IRMAD_RHO": json.dumps([round(float(r), 6) for r in model.rho_]),
            "METRICCD_IRMAD_ITERATIONS": str(model.iterations_),
        }
    if isinstance(model, PCAKMeans):
        return {"METRICCD_PCAKMEANS_BLOCK": str(model.block),
                "METRICCD_PCAKMEANS_COMPONENTS": str(model.n_components)}
    return {}


def _history(model: Baseline) -> Dict[str, List[float]]:
    if isinstance(model, IRMAD):
        return {"canonical_correlations": [float(r) for r in model.rho_],
                "iterations": [float(model.iterations_)]}
    return {}


def _write_scores(
    pair, model: Baseline, test: CompositeTest, output_path: str, probability_path: Optional[str],
    metadata: Dict[str, str], tile_size: int, stages: _Stages,
    histogram: Optional[StreamingHistogram] = None, mask=None,
) -> None:
    """Score every tile (read with a halo of the method's context) into the output GeoTIFF(s),
    and into ``histogram`` (of the transformed scores: Otsu's rule) and ``mask`` (an
    :class:`.outputs.MaskWriter`) when given.
    """
    import contextlib

    from .background import WriteBehind, read_ahead
    from .raster_io import AtomicRasterWriter
    from .tiling import BlendedStripWriter, Window, tile_windows

    grid = pair.grid
    key, null = test.key, test.null
    halo = _context(model) + test.halo
    single = grid.width <= tile_size and grid.height <= tile_size
    size = max(grid.width, grid.height) if single else tile_size
    overlap = 0 if single else halo
    windows = tile_windows(grid.width, grid.height, size, overlap)
    transform = _transform(key)
    report = stages.stage(90, f"Computing the {NAMES[key]} scores")
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(AtomicRasterWriter(
            output_path, grid, dtype="float32", description=DESCRIPTIONS[key], metadata=metadata,
            style=None,
        ))
        prob_writer = None
        if probability_path:
            prob_writer = stack.enter_context(AtomicRasterWriter(
                probability_path, grid, dtype="float32",
                description=f"{NAMES[key]} change probability", metadata=metadata,
                style="probability",
            ))

        def sink(values: np.ndarray, window) -> None:
            with timing.stage("decision"):
                if histogram is not None:
                    histogram.add(transform(values))
                probability = None if prob_writer is None else null.probability(values)
            writer.write(values, window)
            if prob_writer is not None:
                prob_writer.write(probability, window)
            if mask is not None:
                mask.add(values, window)

        def with_halo(window: Window) -> Window:
            c0, r0 = max(0, window.col_off - halo), max(0, window.row_off - halo)
            c1 = min(grid.width, window.col_off + window.width + halo)
            r1 = min(grid.height, window.row_off + window.height + halo)
            return Window(c0, r0, c1 - c0, r1 - r0)

        with WriteBehind(sink) as behind, contextlib.closing(
            read_ahead(lambda w: pair.read(with_halo(w)), windows)
        ) as reads:
            blender = BlendedStripWriter(behind, grid.width, grid.height, overlap)
            for i, (window, read) in enumerate(reads):
                stages.check()
                with timing.stage("inference"):
                    scores = test.score(read.before, read.after, read.valid)
                box = with_halo(window)
                r0, c0 = window.row_off - box.row_off, window.col_off - box.col_off
                rows, cols = slice(r0, r0 + window.height), slice(c0, c0 + window.width)
                with timing.stage("write"):
                    blender.add(window, scores[rows, cols])
                report(100.0 * (i + 1) / len(windows), f"Tile {i + 1}/{len(windows)}")
            blender.close()
        stages.check()
        if prob_writer is not None:
            prob_writer.commit()
        try:
            writer.commit()
        except BaseException:
            if probability_path:
                from .outputs import remove_raster

                remove_raster(probability_path)
            raise
