"""Classical unsupervised change-detection baselines: CVA, PCA-KMeans and IR-MAD (numpy + scipy).

Each method is *fitted* once on a sample of the scene (a downsampled scene or a few tiles) and
then *scores* any tile independently, so memory stays bounded by the tile size::

    method = IRMAD().fit(before_sample, after_sample, valid_sample)
    scores = method.score(before_tile, after_tile, valid_tile)   # (H, W) float32, NaN where invalid

Arrays are ``(C, H, W)`` (both dates with the same bands) and ``valid`` is ``(H, W)`` bool (None
means every pixel; non-finite pixels are always invalid). Higher scores mean more change.
PCA-KMeans reads a neighbourhood around each pixel, so tiles should overlap by ``block`` pixels
when their scores are stitched.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple, Type

import numpy as np
from scipy import linalg, ndimage, special
from scipy.stats import chi2

from .errors import InputError
from .preprocess import standardised_difference
from .threshold import otsu_threshold

log = logging.getLogger(__name__)

_EPS = 1e-12
#: Pixels IR-MAD's robust deviations are taken from (every k-th of the fitting sample).
_ROBUST_SAMPLE = 100_000


def _prepare(
    before: np.ndarray, after: np.ndarray, valid: Optional[np.ndarray]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes; return float32 arrays and the valid mask (also excluding non-finite pixels)."""
    b = np.asarray(before, dtype=np.float32)
    a = np.asarray(after, dtype=np.float32)
    if b.ndim == 2:
        b = b[None]
    if a.ndim == 2:
        a = a[None]
    if b.ndim != 3 or b.shape != a.shape:
        raise InputError(
            f"before and after must be (C, H, W) arrays of the same shape, got {np.shape(before)} and "
            f"{np.shape(after)}; select the same bands on one grid for both dates."
        )
    ok = np.isfinite(b).all(axis=0) & np.isfinite(a).all(axis=0)
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        if v.shape != b.shape[1:]:
            raise InputError(f"valid must be (H, W) = {b.shape[1:]}, got {v.shape}; pass the tile's mask.")
        ok &= v
    return b, a, ok


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise InputError(f"{what} has not been fitted; call fit(before, after, valid) first.")


def _band_stats(x: np.ndarray, valid: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std (float64) over the valid pixels; std 1 for constant bands."""
    if not valid.any():
        raise InputError("No valid pixels to fit on; check nodata values, masks and the inputs' overlap.")
    v = x[:, valid].astype(np.float64)
    mean = v.mean(axis=1)
    std = v.std(axis=1)
    return mean, np.where(std > 0, std, 1.0)


def otsu_score_threshold(scores: np.ndarray, bins: int = 1024) -> float:
    """Otsu threshold of arbitrary finite scores (histogram over their own min..max).

    Args:
        scores: Any array; NaN/inf are ignored.
        bins: Histogram bins.

    Returns:
        The threshold; a pixel is change when ``score > threshold``.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise InputError("No finite scores to threshold; check the valid mask or give a fixed threshold.")
    lo, hi = float(s.min()), float(s.max())
    if hi <= lo:
        return hi
    return otsu_threshold(s, bins=bins, value_range=(lo, hi))


class Baseline:
    """Common interface: ``fit(before, after, valid) -> self`` then ``score(...) -> (H, W) float32``."""

    name: str = "baseline"

    def fit(self, before: np.ndarray, after: np.ndarray, valid: Optional[np.ndarray] = None) -> Baseline:
        """Learn the method's parameters from a scene sample. Returns ``self``."""
        raise NotImplementedError

    def score(self, before: np.ndarray, after: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
        """Change score of a tile: (H, W) float32, higher = more change, NaN where invalid."""
        raise NotImplementedError

    def fit_score(
        self, before: np.ndarray, after: np.ndarray, valid: Optional[np.ndarray] = None
    ) -> np.ndarray:
        """Fit on the arrays and score them (small scenes)."""
        return self.fit(before, after, valid).score(before, after, valid)


class CVA(Baseline):
    """Change vector analysis: the magnitude of the per-pixel difference vector.

    Args:
        normalise: Standardise each band of each date (mean/std over the valid pixels of the fit
            sample) before differencing; this removes per-date radiometric gains and offsets.
    """

    name = "CVA"

    def __init__(self, normalise: bool = True) -> None:
        self.normalise = normalise
        self.stats_: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = None

    def fit(self, before: np.ndarray, after: np.ndarray, valid: Optional[np.ndarray] = None) -> CVA:
        """Learn per-band, per-date mean and std (only used with ``normalise``)."""
        b, a, ok = _prepare(before, after, valid)
        if self.normalise:
            self.stats_ = (*_band_stats(b, ok), *_band_stats(a, ok))
        else:
            c = b.shape[0]
            self.stats_ = (np.zeros(c), np.ones(c), np.zeros(c), np.ones(c))
        return self

    def difference(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """(C, H, W) float32 difference ``after - before`` (standardised with ``normalise``)."""
        _require(self.stats_ is not None, "CVA")
        mb, sb, ma, sa = self.stats_
        if before.shape[0] != mb.shape[0]:
            raise InputError(f"Fitted on {mb.shape[0]} bands but got {before.shape[0]}; use the same bands.")
        return standardised_difference(before, after, mb, sb, ma, sa)

    def score(self, before: np.ndarray, after: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
        """Magnitude of the difference vector, NaN where invalid."""
        b, a, ok = _prepare(before, after, valid)
        d = self.difference(b, a)
        out = np.sqrt(np.einsum("chw,chw->hw", d, d, dtype=np.float32)).astype(np.float32)
        out[~ok] = np.nan
        return out


class PCAKMeans(Baseline):
    """PCA-KMeans (Celik, IEEE GRSL 2009) on the (normalised) difference magnitude image.

    The difference image is the CVA magnitude (for one band: ``|after - before|`` after per-date
    standardisation). PCA on non-overlapping ``block x block`` blocks gives an eigenvector space;
    each pixel's ``block x block`` neighbourhood is projected onto the first ``n_components``
    eigenvectors and 2-means splits the feature vectors; the cluster with the larger mean
    difference is change.

    The score is the signed distance of a pixel's feature vector to the k-means boundary
    (the hyperplane halfway between the two centres): ``score > decision_threshold`` (0.0)
    reproduces the k-means labels exactly.

    Args:
        block: Block / neighbourhood size h (>= 2).
        n_components: Number of eigenvectors kept (<= block**2).
        max_fit_blocks: At most this many blocks for PCA and feature vectors for k-means.
        seed: Seed of the subsampling.
        normalise: Per-date band standardisation before differencing.
    """

    name = "PCA-KMeans"
    decision_threshold: float = 0.0

    def __init__(
        self,
        block: int = 4,
        n_components: int = 3,
        max_fit_blocks: int = 200_000,
        seed: int = 0,
        normalise: bool = True,
    ) -> None:
        if int(block) != block or block < 2:
            raise InputError(f"block must be a whole number >= 2, got {block}.")
        if int(n_components) != n_components or not 1 <= n_components <= block * block:
            raise InputError(
                f"n_components must be between 1 and block**2 = {block * block}, got {n_components}."
            )
        if max_fit_blocks < 2:
            raise InputError(f"max_fit_blocks must be >= 2, got {max_fit_blocks}.")
        self.block = int(block)
        self.n_components = int(n_components)
        self.max_fit_blocks = int(max_fit_blocks)
        self.seed = seed
        self.cva = CVA(normalise=normalise)
        self.fill_: float = 0.0
        self.eigvecs_: Optional[np.ndarray] = None  # (h*h, S)
        self.mean_block_: Optional[np.ndarray] = None  # (h*h,)
        self.centres_: Optional[np.ndarray] = None  # (2, S): [no change, change]
        self.kernel_: Optional[np.ndarray] = None  # (h, h) projection onto the boundary normal
        self.offset_: float = 0.0

    def _difference(self, b: np.ndarray, a: np.ndarray, ok: np.ndarray) -> np.ndarray:
        d = self.cva.score(b, a, ok).astype(np.float64)
        d[~ok] = self.fill_
        return d

    def _features(self, d: np.ndarray) -> np.ndarray:
        """(S, H, W) projections of each pixel's neighbourhood onto the eigenvectors."""
        h = self.block
        feats = np.empty((self.n_components,) + d.shape, np.float64)
        for s in range(self.n_components):
            e = self.eigvecs_[:, s]
            feats[s] = ndimage.correlate(d, e.reshape(h, h), mode="reflect") - e @ self.mean_block_
        return feats

    def fit(self, before: np.ndarray, after: np.ndarray, valid: Optional[np.ndarray] = None) -> PCAKMeans:
        """PCA of the difference blocks, then 2-means on a sample of pixel feature vectors."""
        b, a, ok = _prepare(before, after, valid)
        self.cva.fit(b, a, ok)
        rng = np.random.default_rng(self.seed)
        d = self.cva.score(b, a, ok).astype(np.float64)
        self.fill_ = float(np.nanmean(d)) if ok.any() else 0.0
        h = self.block
        nby, nbx = d.shape[0] // h, d.shape[1] // h
        blocks = d[: nby * h, : nbx * h].reshape(nby, h, nbx, h).transpose(0, 2, 1, 3).reshape(-1, h * h)
        blocks = blocks[np.isfinite(blocks).all(axis=1)]
        if blocks.shape[0] < max(2, self.n_components):
            raise InputError(
                f"Only {blocks.shape[0]} fully valid {h}x{h} blocks to fit PCA-KMeans on; "
                "fit on a larger sample or use a smaller block."
            )
        if blocks.shape[0] > self.max_fit_blocks:
            blocks = blocks[rng.choice(blocks.shape[0], self.max_fit_blocks, replace=False)]
        self.mean_block_ = blocks.mean(axis=0)
        cov = np.cov(blocks - self.mean_block_, rowvar=False)
        _, vecs = linalg.eigh(cov)
        vecs = vecs[:, ::-1][:, : self.n_components]
        vecs *= np.where(vecs.sum(axis=0) < 0, -1.0, 1.0)  # deterministic signs
        self.eigvecs_ = vecs

        d[~ok] = self.fill_
        feats = self._features(d)[:, ok].T  # (n, S)
        diff = d[ok]
        if feats.shape[0] > self.max_fit_blocks:
            pick = rng.choice(feats.shape[0], self.max_fit_blocks, replace=False)
            feats, diff = feats[pick], diff[pick]
        labels, centres = _two_means(feats, diff)
        means = [diff[labels == k].mean() if (labels == k).any() else -np.inf for k in (0, 1)]
        if means[0] > means[1]:
            centres = centres[::-1]
        self.centres_ = centres
        normal = centres[1] - centres[0]
        norm = float(np.linalg.norm(normal))
        if norm == 0:
            log.warning("PCA-KMeans centres coincide; the scores carry no change information.")
            norm = 1.0
        u = normal / norm
        mid = 0.5 * (centres[0] + centres[1])
        # score = (features - mid) . u, features linear in d => one h x h correlation of d
        self.kernel_ = (self.eigvecs_ @ u).reshape(h, h)
        self.offset_ = float(-(self.eigvecs_ @ u) @ self.mean_block_ - mid @ u)
        return self

    def score(self, before: np.ndarray, after: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
        """Signed distance to the k-means boundary (> ``decision_threshold`` = change), NaN where invalid."""
        _require(self.kernel_ is not None, "PCAKMeans")
        b, a, ok = _prepare(before, after, valid)
        d = self._difference(b, a, ok)
        out = (ndimage.correlate(d, self.kernel_, mode="reflect") + self.offset_).astype(np.float32)
        out[~ok] = np.nan
        return out

    def labels(self, before: np.ndarray, after: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
        """k-means labels (True = change cluster; False where invalid)."""
        s = self.score(before, after, valid)
        return np.nan_to_num(s, nan=-np.inf) > self.decision_threshold


def _two_means(x: np.ndarray, diff: np.ndarray, max_iter: int = 100) -> Tuple[np.ndarray, np.ndarray]:
    """Lloyd's 2-means, initialised from the low and high difference pixels (deterministic)."""
    lo, hi = np.quantile(diff, [0.5, 0.9])
    low, high = diff <= lo, diff >= hi
    if not low.any() or not high.any() or hi <= lo:
        low, high = diff <= np.median(diff), diff > np.median(diff)
    centres = np.stack([x[low].mean(axis=0), x[high].mean(axis=0) if high.any() else x.max(axis=0)])
    labels = np.zeros(x.shape[0], np.int8)
    for it in range(max_iter):
        dist = ((x[:, None, :] - centres[None]) ** 2).sum(axis=2)
        new = np.argmin(dist, axis=1).astype(np.int8)
        if it and np.array_equal(new, labels):
            break
        labels = new
        for k in (0, 1):
            if (labels == k).any():
                centres[k] = x[labels == k].mean(axis=0)
    return labels, centres


class IRMAD(Baseline):
    """Iteratively reweighted multivariate alteration detection (Nielsen, IEEE TIP 2007).

    Weighted canonical correlation analysis between the dates gives MAD variates
    ``MAD_i = a_i'(x - mx) - b_i'(y - my)``; with ``sigma_i`` their robust deviation over all
    pixels (:func:`_no_change_variance`) the chi-square statistic
    ``Z = sum_i MAD_i**2 / sigma_i**2`` is ~chi2(C) for no-change pixels, and the
    weights ``1 - chi2.cdf(Z, C)`` are iterated until the canonical correlations change by less
    than ``tol``. The score is Z; ``probability(score)`` maps it to a change probability. Being
    based on CCA, the score is invariant to per-band affine radiometric changes of either date.

    Args:
        max_iter: Maximum reweighting iterations.
        tol: Convergence tolerance on the canonical correlations.
        max_samples: At most this many valid pixels are used to fit.
        seed: Seed of the subsampling.
    """

    name = "IR-MAD"

    def __init__(
        self, max_iter: int = 50, tol: float = 1e-6, max_samples: int = 2_000_000, seed: int = 0
    ) -> None:
        if max_iter < 1:
            raise InputError(f"max_iter must be >= 1, got {max_iter}.")
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.max_samples = int(max_samples)
        self.seed = seed
        self.rho_: Optional[np.ndarray] = None
        self.iterations_: int = 0
        self._mx: Optional[np.ndarray] = None
        self._my: Optional[np.ndarray] = None
        self._a: Optional[np.ndarray] = None
        self.identical_ = False
        self._b: Optional[np.ndarray] = None
        self._sigma2: Optional[np.ndarray] = None

    @property
    def n_bands(self) -> int:
        """Number of bands (degrees of freedom of the chi-square statistic)."""
        _require(self._a is not None, "IRMAD")
        return int(self._a.shape[0])

    def fit(self, before: np.ndarray, after: np.ndarray, valid: Optional[np.ndarray] = None) -> IRMAD:
        """Iterate weighted CCA on (a sample of) the valid pixels."""
        b, a, ok = _prepare(before, after, valid)
        c = b.shape[0]
        idx = np.flatnonzero(ok.ravel())
        # An identical pair: its variates are rounding noise over a near-zero deviation.
        self.identical_ = bool(np.array_equal(b[:, ok], a[:, ok]))
        if idx.size < 2 * c + 2:
            raise InputError(
                f"Only {idx.size} valid pixels to fit IR-MAD on {c} bands; fit on a larger sample."
            )
        if idx.size > self.max_samples:
            idx = np.sort(np.random.default_rng(self.seed).choice(idx, self.max_samples, replace=False))
        x = b.reshape(c, -1)[:, idx].T.astype(np.float64)
        y = a.reshape(c, -1)[:, idx].T.astype(np.float64)
        # pre-scaling for conditioning (CCA is invariant to it); folded into a, b below
        sx, sy = x.std(axis=0), y.std(axis=0)
        sx, sy = np.where(sx > 0, sx, 1.0), np.where(sy > 0, sy, 1.0)
        x /= sx
        y /= sy
        xy = np.hstack([x, y])  # one (N, 2C) array: each iteration is then a few matrix products
        del x, y
        w = np.ones(xy.shape[0])
        rho_old = None
        for it in range(1, self.max_iter + 1):
            mx, my, va, vb, rho = _weighted_cca(xy, w)
            mad = xy @ np.vstack([va, -vb]) - (mx @ va - my @ vb)
            sigma2 = _no_change_variance(mad, rho)
            z = (mad * mad) @ (1.0 / sigma2)
            w = _chi2_sf(z, c)
            self.iterations_ = it
            if rho_old is not None and np.max(np.abs(rho - rho_old)) < self.tol:
                break
            rho_old = rho
        else:
            log.info("IR-MAD stopped after %d iterations without reaching tol=%g.", self.max_iter, self.tol)
        self.rho_ = rho
        self._mx, self._my = mx * sx, my * sy
        self._a, self._b = va / sx[:, None], vb / sy[:, None]
        self._sigma2 = sigma2
        return self

    def mad_variates(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """(C, H, W) float32 MAD variates, ordered by increasing canonical correlation."""
        _require(self._a is not None, "IRMAD")
        b, a, _ = _prepare(before, after, None)
        c, hgt, wid = b.shape
        if c != self._a.shape[0]:
            raise InputError(f"Fitted on {self._a.shape[0]} bands but got {c}; use the same bands.")
        return self._mad(b, a).reshape(c, hgt, wid).astype(np.float32)

    def _mad(self, b: np.ndarray, a: np.ndarray) -> np.ndarray:
        """(C, pixels) float64 MAD variates of prepared (C, H, W) arrays: one matrix product."""
        c = b.shape[0]
        stacked = np.concatenate([b.reshape(c, -1), a.reshape(c, -1)]).astype(np.float64)
        weights = np.hstack([self._a.T, -self._b.T])
        return weights @ stacked - (self._mx @ self._a - self._my @ self._b)[:, None]

    def score(self, before: np.ndarray, after: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
        """Chi-square statistic Z (>= 0, ~chi2(C) without change), NaN where invalid."""
        b, a, ok = _prepare(before, after, valid)
        _require(self._a is not None, "IRMAD")
        if b.shape[0] != self._a.shape[0]:
            raise InputError(f"Fitted on {self._a.shape[0]} bands but got {b.shape[0]}; use the same bands.")
        mad = self._mad(b, a)
        z = ((1.0 / self._sigma2) @ (mad * mad)).reshape(b.shape[1:]).astype(np.float32)
        if self.identical_:  # no difference at all: not rounding noise over a tiny sigma
            z[(b == a).all(axis=0)] = 0.0
        z[~ok] = np.nan
        return z

    def probability(self, score: np.ndarray) -> np.ndarray:
        """Change probability ``chi2.cdf(Z, C)`` of scores from :meth:`score` (NaN stays NaN)."""
        return chi2.cdf(np.asarray(score, np.float64), self.n_bands).astype(np.float32)


def _no_change_variance(mad: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Each MAD variate's variance among unchanged pixels, from the (N, C) variates of every pixel:
    the square of 1.4826 times their median absolute deviation (a robust deviation, unmoved by
    up to half the pixels changing); ``2 (1 - rho)``, the weighted variance, where that is 0.

    The weighted variance ``2 (1 - rho)`` is not it: weighting by ``chi2.sf(Z)`` leaves out the
    unchanged pixels' own tail, so the variance shrinks, the next weights shrink with it, and the
    iteration runs away (on the shared pairs the mean weight fell from 0.7 to 0.04, and on 13
    Sentinel-2 bands to 15 effective pixels, every correlation 1). With the robust variance the
    mean weight stays near 0.5, as a p-value's does among unchanged pixels.
    """
    sample = mad[:: max(1, mad.shape[0] // _ROBUST_SAMPLE)]  # a deviation to about 0.5 %
    deviation = 1.4826 * np.median(np.abs(sample - np.median(sample, axis=0)), axis=0)
    return np.maximum(np.where(deviation > 0, deviation**2, 2.0 * (1.0 - rho)), _EPS)


def _chi2_sf(z: np.ndarray, dof: int) -> np.ndarray:
    """``chi2.sf(z, dof)``; for an even ``dof`` in closed form, ``exp(-z/2) sum_{i<dof/2}
    (z/2)^i / i!`` (the same values to float rounding, 2M values: 0.02 s instead of 0.13 s)."""
    if dof % 2:
        return special.chdtrc(dof, z)
    t = 0.5 * np.maximum(z, 0.0)
    term = np.ones_like(t)
    total = np.ones_like(t)
    with np.errstate(over="ignore", invalid="ignore"):  # far tails: 0, whatever the sum
        for i in range(1, dof // 2):
            term *= t / i
            total += term
        return np.where(t < 1e4, np.exp(-t) * total, 0.0)


def _weighted_cca(
    xy: np.ndarray, w: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted CCA of the (N, 2C) pixels ``[x, y]``: means, unit-variance canonical vectors
    (columns) and correlations, ascending."""
    c = xy.shape[1] // 2
    sw = w.sum()
    if sw <= 0:
        raise InputError("IR-MAD weights vanished (every pixel looks changed); check the inputs' alignment.")
    mean = w @ xy / sw
    mx, my = mean[:c], mean[c:]
    xy = xy - mean
    cov = (xy * w[:, None]).T @ xy / sw
    ridge = 1e-10 * max(float(np.trace(cov)) / (2 * c), _EPS) * np.eye(c)
    sxx, syy, sxy = cov[:c, :c] + ridge, cov[c:, c:] + ridge, cov[:c, c:]
    syy_inv_syx = linalg.solve(syy, sxy.T, assume_a="pos")
    rho2, va = linalg.eigh(sxy @ syy_inv_syx, sxx)  # ascending; va' sxx va = I
    rho = np.sqrt(np.clip(rho2, 0.0, 1.0))
    vb = syy_inv_syx @ va
    vb /= np.sqrt(np.maximum(np.einsum("ij,ik,kj->j", vb, syy, vb), _EPS))
    sign = np.where((sxx @ va).sum(axis=0) < 0, -1.0, 1.0)  # positive correlation with the bands
    return mx, my, va * sign, vb * sign, rho


BASELINES: Dict[str, Type[Baseline]] = {"cva": CVA, "pca-kmeans": PCAKMeans, "irmad": IRMAD}
