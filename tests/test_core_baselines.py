"""CVA, PCA-KMeans and IR-MAD on small synthetic pairs with planted changes."""

from __future__ import annotations

import numpy as np
import pytest
from metric_change_detection.core.baselines import CVA, IRMAD, PCAKMeans, otsu_score_threshold
from metric_change_detection.core.errors import InputError
from scipy import ndimage
from scipy.stats import chi2


def _pair(c: int = 4, size: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(size=(c, size, size)), (0, 2, 2)) * 4
    before = (base + rng.normal(scale=0.2, size=base.shape)).astype(np.float32)
    after = (0.9 * base + rng.normal(scale=0.2, size=base.shape)).astype(np.float32)
    truth = np.zeros((size, size), bool)
    truth[20:36, 24:44] = True
    after[:, truth] += (2.0 + rng.normal(size=(c, 1))).astype(np.float32)
    return before, after, truth


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = (pred & truth).sum()
    return 2 * tp / (pred.sum() + truth.sum())


def test_cva_hand_computed():
    before = np.array([[[0.0, 1.0]], [[2.0, 2.0]]], np.float32)  # (2, 1, 2)
    after = np.array([[[3.0, 1.0]], [[6.0, 2.0]]], np.float32)
    s = CVA(normalise=False).fit_score(before, after, np.array([[True, False]]))
    assert s[0, 0] == pytest.approx(5.0)
    assert np.isnan(s[0, 1])


def test_cva_normalise_removes_gain_offset():
    before, after, _ = _pair()
    s1 = CVA().fit_score(before, after)
    s2 = CVA().fit_score(before, after * 3.0 + 50.0)
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    with pytest.raises(InputError, match="fit"):
        CVA().score(before, after)


def test_cva_otsu_finds_planted_change():
    before, after, truth = _pair()
    s = CVA().fit_score(before, after)
    assert _f1(s > otsu_score_threshold(s), truth) > 0.9


def test_pca_kmeans_labels_planted_region():
    before, after, truth = _pair()
    m = PCAKMeans(block=4, n_components=3).fit(before, after)
    labels = m.labels(before, after)
    assert _f1(labels, truth) > 0.85
    s = m.score(before, after)
    assert s.dtype == np.float32 and s.shape == truth.shape
    np.testing.assert_array_equal(labels, s > m.decision_threshold)


def test_pca_kmeans_score_matches_kmeans_assignment():
    before, after, _ = _pair(seed=3)
    m = PCAKMeans(block=3, n_components=2).fit(before, after)
    d = m.cva.score(before, after).astype(np.float64)
    feats = m._features(d)  # (S, H, W)
    dist = ((feats[None] - m.centres_[:, :, None, None]) ** 2).sum(axis=1)
    nearest_change = dist[1] < dist[0]
    s = m.score(before, after)
    np.testing.assert_array_equal(s > m.decision_threshold, nearest_change)


def test_pca_kmeans_fit_then_score_other_tile_and_invalid():
    before, after, truth = _pair(size=80)
    m = PCAKMeans().fit(before[:, ::2, ::2], after[:, ::2, ::2])  # fit on a scene sample
    valid = np.ones(truth.shape, bool)
    valid[:5] = False
    s = m.score(before[:, :48], after[:, :48], valid[:48])
    assert np.isnan(s[:5]).all() and np.isfinite(s[5:]).all()
    assert _f1(s[5:] > 0, truth[5:48]) > 0.8


def test_irmad_finds_change_and_is_affine_invariant():
    before, after, truth = _pair()
    m = IRMAD().fit(before, after)
    z = m.score(before, after)
    p = m.probability(z)
    assert 0.0 <= np.nanmin(p) and np.nanmax(p) <= 1.0
    assert _f1(z > otsu_score_threshold(z), truth) > 0.9
    gain = np.array([2.0, 0.5, 3.0, 1.5], np.float32)[:, None, None]
    offset = np.array([10.0, -5.0, 3.0, 100.0], np.float32)[:, None, None]
    z2 = IRMAD().fit(before, after * gain + offset).score(before, after * gain + offset)
    np.testing.assert_allclose(z2, z, rtol=1e-3, atol=1e-3 * float(np.nanmax(z)))
    assert m.rho_.shape == (4,) and np.all(np.diff(m.rho_) >= -1e-12)


def test_mad_without_change_is_chi_square():
    rng = np.random.default_rng(1)
    before = rng.normal(size=(3, 128, 128)).astype(np.float32)
    after = (before + rng.normal(scale=0.5, size=before.shape)).astype(np.float32)
    m = IRMAD(max_iter=1).fit(before, after)  # first iteration = plain MAD
    z = m.score(before, after)
    assert abs(float(np.mean(z)) - 3.0) < 0.1  # sum of 3 unit-variance MADs (robust deviations)
    mad = m.mad_variates(before, after).reshape(3, -1)
    np.testing.assert_allclose(np.corrcoef(mad), np.eye(3), atol=1e-4)  # MADs are uncorrelated


def test_irmad_reweighting_does_not_run_away_without_change():
    """Iterated to convergence on a pair without change, the weights stay p-values (mean near
    0.5) and Z stays chi-square: the weighted variance alone shrank every iteration."""
    rng = np.random.default_rng(2)
    before = rng.normal(size=(6, 128, 128)).astype(np.float32)
    after = (before + rng.normal(scale=0.5, size=before.shape)).astype(np.float32)
    m = IRMAD().fit(before, after)
    z = m.score(before, after)
    assert abs(float(np.mean(chi2.sf(z, 6))) - 0.5) < 0.03
    assert abs(float(np.mean(z)) - 6.0) < 0.3
    assert float(np.mean(z > chi2.isf(0.01, 6))) < 0.02


def test_shape_errors():
    with pytest.raises(InputError):
        CVA().fit(np.zeros((3, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(InputError):
        IRMAD().fit(np.zeros((3, 4, 4)), np.zeros((3, 4, 4)), np.zeros((4, 4), bool))


@pytest.mark.parametrize("dof", [1, 3, 4, 6, 13])
def test_irmad_chi2_survival_equals_scipys(dof):
    from metric_change_detection.core.baselines import _chi2_sf
    from scipy.stats import chi2

    z = np.concatenate([np.linspace(0.0, 200.0, 2001), [1e3, 1e5, 1e300]])
    assert np.allclose(_chi2_sf(z, dof), chi2.sf(z, dof), rtol=1e-10, atol=1e-300)
