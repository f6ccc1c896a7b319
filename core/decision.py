"""One label-free decision for every method: an empirical null of the score.

Otsu's threshold splits any histogram in two, so it finds "change" in pure noise. Here the
score's distribution *where nothing changed* is estimated from the data itself, and a pixel is
marked only where its score is significantly unlike it (Efron's empirical null and local false
discovery rate, "Large-scale simultaneous hypothesis testing", JASA 2004):

1. The score is mapped to a scale on which no-change is close to Gaussian: a non-negative
   magnitude ``m`` (CVA, the difference vector) by ``m ** (2/3)`` and a chi-square statistic
   ``Z`` (IR-MAD) by ``Z ** (1/3)`` (Wilson and Hilferty: the cube root of a chi-square is
   nearly normal); real-valued scores (Metric-CD, PCA-KMeans) as they are.
2. *Central matching*: the null ``N(centre, spread)`` is fitted to the mode of that histogram
   and the side of it below the mode, which change (always towards high scores) does not reach.
   The share of pixels below the mode gives the no-change share ``null_share``.
3. ``z = (t - centre) / spread`` is the pixel's standardised score; its p-value
   ``1 - Phi(z)`` is the chance that an unchanged pixel scores that high. The mask marks the
   pixels with p-value below the *false-alarm rate* ``alpha`` (``z > Phi^-1(1 - alpha)``), so
   on a pair without change about ``alpha`` of the pixels at most are marked.
4. The change probability is the posterior ``1 - lfdr(z)``, with ``lfdr = null_share *
   phi(z) / f(z)`` and ``f`` the density of ``z`` in the sample: 0.9 means that nine in ten
   pixels scoring like this one are unlike the no-change population.

A score with no spread at all (an identical pair: every difference 0) has nothing significant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.special import ndtr, ndtri

from .config import ALPHA  # noqa: F401  (the default rate, re-exported)

#: Score kinds and their power transform to a near-Gaussian no-change law (None: as it is).
POWERS = {"real": None, "magnitude": 2.0 / 3.0, "chi2": 1.0 / 3.0}
_BINS = 512
# How far right of the mode (in spreads) central matching reads the histogram: 0.5 measured
# best over the shared pairs (1.0 and 1.5 lose 0.002 and 0.012 mean F1, most on DSIFN).
_RIGHT = 0.5
_Z_GRID = np.linspace(-10.0, 40.0, 1001)
_Z_STEP = float(_Z_GRID[1] - _Z_GRID[0])


def z_critical(alpha: float) -> float:
    """The standardised score above which the p-value is below ``alpha``."""
    return float(-ndtri(alpha))


@dataclass(frozen=True)
class NullModel:
    """The no-change law of a score and the posterior probability of change it implies.

    ``centre``/``spread`` are the null's mean and deviation on the transformed scale
    (``spread`` 0: no spread, nothing is significant); ``null_share`` the estimated share of
    unchanged pixels; ``posterior`` the probability of change on ``_Z_GRID``.
    """

    kind: str = "real"
    centre: float = 0.0
    spread: float = 1.0
    null_share: float = 1.0
    posterior: Tuple[float, ...] = ()

    def transform(self, score: np.ndarray) -> np.ndarray:
        """The score on the scale where no-change is near Gaussian (NaN stays NaN; float32 for a
        float32 map, whose tiles are tested in float32: twice as fast, and far finer than any
        statistical difference; float64 otherwise)."""
        s = _floating(score)
        power = POWERS[self.kind]
        return s if power is None else np.power(np.maximum(s, 0.0), s.dtype.type(power))

    def z(self, score: np.ndarray) -> np.ndarray:
        """Standardised score under the null; 0 everywhere when the score has no spread."""
        t = self.transform(score)
        if self.spread <= 0:
            return np.where(np.isfinite(t), 0.0, np.nan)
        return (t - self.centre) / self.spread

    def score_of_z(self, z: np.ndarray) -> np.ndarray:
        """The score whose standardised value is ``z`` (the inverse of :meth:`z`; float32)."""
        z = _floating(z)
        t = z.dtype.type(self.centre) + z * z.dtype.type(max(self.spread, 0.0))
        power = POWERS[self.kind]
        if power is not None:
            t = np.power(np.maximum(t, 0.0), t.dtype.type(1.0 / power))
        return t.astype(np.float32, copy=False)

    def p_value(self, score: np.ndarray) -> np.ndarray:
        """Chance that an unchanged pixel scores at least this high."""
        return ndtr(-self.z(score))

    def probability(self, score: np.ndarray) -> np.ndarray:
        """Posterior probability of change (float32, NaN where the score is not finite)."""
        return posterior_of_z(self.z(score), self.posterior)

    def score_threshold(self, alpha: float) -> float:
        """The score above which a pixel is changed at false-alarm rate ``alpha``.

        The no-change value itself when the score has no spread (nothing above it).
        """
        t = self.centre + z_critical(alpha) * max(self.spread, 0.0)
        power = POWERS[self.kind]
        return float(t) if power is None else float(max(t, 0.0) ** (1.0 / power))


def admitted_views(scores: np.ndarray) -> Tuple[int, ...]:
    """The sharpness hypotheses a (K, N) sample of a score supports (rows of
    :func:`.preprocess.sharpness_view`: 0 the pair as it is, 1 and 2 a date blurred).

    Row 0 always; and the blurred-date row whose median score is strictly the smallest of all,
    if one is: blurring that date brings the dates closer than leaving them as they are or
    blurring the other one, so that date is the sharper acquisition. The composite null "nothing
    changed, but one date may be softer" is then tested by its least significant member.
    """
    typical = np.median(scores, axis=1)
    best = int(np.argmin(typical))
    return (0, best) if best > 0 and (typical == typical[best]).sum() == 1 else (0,)


def sharper_date(views: Sequence[int]) -> str:
    """``before`` or ``after``: the date an admitted blurred view (1 or 2) found sharper, else
    ``neither``."""
    blurred = [v for v in views if v]
    return ("before" if blurred[0] == 1 else "after") if blurred else "neither"


def describe_sharpness(views: Sequence[int], sigma: float) -> Optional[str]:
    """The admitted sharpness hypothesis in words, for the log (None: none admitted)."""
    sharper = sharper_date(views)
    if sharper == "neither":
        return None
    softer = "after" if sharper == "before" else "before"
    return (f"The {sharper} image is sharper than the {softer} image: the test allows for a blur "
            f"of {sigma:g} px between them")


def least_significant(z: Sequence[np.ndarray], limits: Sequence[float]) -> np.ndarray:
    """A composite test's standardised score, on its first member's scale.

    Member ``i`` is significant where ``z[i] > limits[i]``; the pixel passes where every member
    does, so its margin is the smallest ``z[i] - limits[i]``, returned as ``limits[0] + margin``
    (with equal limits: the smallest ``z``). NaN where any member is NaN.
    """
    margin = _floating(z[0]) - limits[0]
    for zi, li in zip(z[1:], limits[1:]):
        np.minimum(margin, _floating(zi) - li, out=margin)
    return margin + limits[0]


def posterior_of_z(z: np.ndarray, posterior: Tuple[float, ...]) -> np.ndarray:
    """Interpolate a posterior table on ``_Z_GRID`` (no table: none of it is change); float32,
    NaN where ``z`` is NaN, the table's ends beyond it.

    The grid is uniform, so a pixel's cell is found by arithmetic instead of a search (four
    times as fast as ``np.interp``); the interpolation itself is in float64, so the result
    never decreases with ``z``.
    """
    z = _floating(z)
    if not posterior:
        return np.where(np.isfinite(z), 0.0, np.nan).astype(np.float32)
    table = np.asarray(posterior, np.float64)
    position = np.clip((z - z.dtype.type(_Z_GRID[0])) / z.dtype.type(_Z_STEP), 0, table.size - 1)
    missing = np.isnan(position)
    position[missing] = 0
    cell = np.minimum(position.astype(np.intp), table.size - 2)
    p = table[cell] + (position - cell) * np.diff(table)[cell]
    p[missing] = np.nan
    return p.astype(np.float32)


def _floating(values) -> np.ndarray:
    """``values`` as a float32 array if they are float32, else as float64."""
    values = np.asarray(values)
    return values if values.dtype in (np.float32, np.float64) else values.astype(np.float64)


def fit_posterior(z: np.ndarray, null_share: float = 1.0) -> Tuple[float, ...]:
    """``1 - lfdr`` on ``_Z_GRID`` from sample ``z`` values (standard normal under the null).

    The density of ``z`` is a smoothed histogram; the result never decreases with ``z`` and a
    small share of the null's CDF is mixed in so it strictly increases, so thresholding the
    probability is the same as thresholding ``z``.
    """
    from scipy.ndimage import gaussian_filter1d

    z = np.asarray(z, np.float64)
    z = np.clip(z[np.isfinite(z)], _Z_GRID[0], _Z_GRID[-1])
    if z.size == 0:
        return ()
    step = _Z_GRID[1] - _Z_GRID[0]
    edges = np.concatenate([_Z_GRID - step / 2, [_Z_GRID[-1] + step / 2]])
    counts = np.histogram(z, bins=edges)[0].astype(np.float64)
    density = gaussian_filter1d(counts, 2.0, mode="constant") / (z.size * step)
    null = null_share * np.exp(-0.5 * _Z_GRID**2) / np.sqrt(2 * np.pi)
    with np.errstate(divide="ignore", invalid="ignore"):
        lfdr = np.where(density > 0, np.minimum(null / density, 1.0), np.nan)
    beyond = _Z_GRID > z.max()
    lfdr[beyond] = np.where(_Z_GRID[beyond] > 0, 0.0, 1.0)
    lfdr = np.where(np.isnan(lfdr), np.where(_Z_GRID > 0, 0.0, 1.0), lfdr)
    posterior = np.maximum.accumulate(np.where(_Z_GRID > 0, 1.0 - lfdr, 0.0))
    # A thousandth of a wide normal CDF keeps it rising far into the tail, where float32 still
    # tells the values apart (a narrow one saturates at 1 near the test's threshold).
    posterior = 0.999 * posterior + 0.001 * ndtr(_Z_GRID / 8.0)
    return tuple(float(v) for v in posterior)


def chi_square_null(dof: int) -> NullModel:
    """The theoretical no-change law of a chi-square statistic with ``dof`` degrees of freedom,
    on the cube-root scale (Wilson and Hilferty: ``(Z / dof) ** (1/3)`` is nearly
    ``N(1 - 2 / (9 dof), 2 / (9 dof))``; at ``alpha`` 1e-4 its limit is 1-7 % above the exact
    quantile, so slightly conservative). No posterior: it tests, the fitted null calibrates."""
    v = 2.0 / (9.0 * dof)
    root = dof ** (1.0 / 3.0)
    return NullModel("chi2", root * (1.0 - v), root * float(np.sqrt(v)))


def fit_null(score: np.ndarray, kind: str = "real") -> NullModel:
    """Fit the empirical null of a sample of ``score`` (any shape; non-finite ignored)."""
    if kind not in POWERS:
        raise ValueError(f"kind must be one of {', '.join(POWERS)}, got {kind!r}.")
    t = NullModel(kind).transform(np.asarray(score, np.float64))
    t = t[np.isfinite(t)]
    if t.size == 0:
        return NullModel(kind, spread=0.0)
    centre, spread, share = _central_matching(t)
    if spread <= 0:
        return NullModel(kind, centre, spread, share)
    return NullModel(kind, centre, spread, share, fit_posterior((t - centre) / spread, share))


def _central_matching(t: np.ndarray) -> Tuple[float, float, float]:
    """(centre, spread, null share): a Gaussian fitted to the histogram's mode and left side.

    A parabola is fitted to the log-histogram over ``centre - 2 spread .. centre + 0.5 spread``
    (change sits above the mode, so this window is mostly unchanged pixels), starting from the
    smoothed histogram's peak and its half width at half height on the left; twice.
    """
    from scipy.ndimage import gaussian_filter1d

    lo, hi = np.quantile(t, [0.0005, 0.9995])
    if not hi > lo:
        lo, hi = float(t.min()), float(t.max())
    if not hi > lo:
        return float(lo), 0.0, 1.0
    counts, edges = np.histogram(t, bins=_BINS, range=(lo, hi))
    x = 0.5 * (edges[:-1] + edges[1:])
    smooth = gaussian_filter1d(counts.astype(np.float64), 2.0, mode="nearest")
    k = int(np.argmax(smooth))
    centre = float(x[k])
    left = np.flatnonzero(smooth[: k + 1] < 0.5 * smooth[k])
    half = (centre - x[left[-1]]) if left.size else (x[1] - x[0])
    spread = max(half / 1.1774, x[1] - x[0])
    for _ in range(2):
        window = (x >= centre - 2.0 * spread) & (x <= centre + _RIGHT * spread) & (counts > 0)
        if window.sum() < 5:
            break
        a2, a1, _a0 = np.polyfit(x[window], np.log(counts[window]), 2, w=np.sqrt(counts[window]))
        if a2 >= 0:
            break
        centre, spread = float(-a1 / (2 * a2)), float(np.sqrt(-1.0 / (2 * a2)))
    inside = float(np.mean((t >= centre - 2 * spread) & (t <= centre)))
    share = min(1.0, inside / (ndtr(0.0) - ndtr(-2.0)))
    return centre, spread, share


def verdict(changed_fraction: float, rule, alpha: float) -> str:
    """The run's result in words: "No significant change ..." or how much changed."""
    test = f"at a false-alarm rate of {alpha:g}" if rule == "auto" else (
        "with Otsu's threshold" if rule == "otsu" else f"above the threshold {float(rule):g}")
    if changed_fraction <= 0:
        return f"No significant change: no pixel is marked changed {test}."
    return f"{100 * changed_fraction:.2f} % of the valid pixels are marked changed {test}."
