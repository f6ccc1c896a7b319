"""The one decision layer: an empirical null, its false-alarm rate and posterior probability."""

from __future__ import annotations

import numpy as np
import pytest
from metric_change_detection.core.decision import (
    ALPHA,
    fit_null,
    posterior_of_z,
    verdict,
    z_critical,
)


def _magnitude(rng, bands=3, size=300, sigma=2.0):
    d = rng.normal(0, sigma, (bands, size, size))
    return d, np.sqrt((d**2).sum(0))


@pytest.mark.parametrize("bands", [3, 13])
def test_noise_alone_marks_about_alpha(bands):
    _, m = _magnitude(np.random.default_rng(bands), bands)
    null = fit_null(m, "magnitude")
    for alpha in (1e-2, 1e-3):
        marked = (m > null.score_threshold(alpha)).mean()
        assert marked < 2.5 * alpha
    assert (null.probability(m) > 0.5).mean() < 1e-3


def test_change_is_found_and_its_share_estimated():
    rng = np.random.default_rng(0)
    d, _ = _magnitude(rng)
    d[:, :, :30] += 6.0  # a tenth of the pixels changed
    m = np.sqrt((d**2).sum(0))
    null = fit_null(m, "magnitude")
    marked = m > null.score_threshold(1e-3)
    assert marked[:, :30].mean() > 0.9 and marked[:, 30:].mean() < 2e-3
    assert 0.85 < null.null_share < 0.95
    p = null.probability(m)
    assert p[:, :30].mean() > 0.9 and p[:, 30:].mean() < 0.05


def test_probability_rises_with_the_score_and_nan_stays_nan():
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.normal(0, 1, 9000), rng.normal(6, 1, 1000)])
    null = fit_null(scores, "real")
    grid = np.linspace(-5, 12, 200)
    p = null.probability(grid)
    assert (np.diff(p) >= 0).all()
    rising = p[:-1] < 0.999  # strictly, below float32's 1: a probability threshold is a score one
    assert (np.diff(p)[rising] > 0).all()
    assert np.isnan(null.probability(np.array([np.nan])))[0]
    assert null.p_value(np.array([null.score_threshold(1e-3)]))[0] == pytest.approx(1e-3, rel=1e-6)


def test_a_score_without_spread_has_nothing_significant():
    null = fit_null(np.zeros((50, 50)), "magnitude")
    assert null.spread == 0
    assert not (np.zeros(10) > null.score_threshold(ALPHA)).any()
    assert (null.probability(np.zeros(10)) == 0).all()
    assert (posterior_of_z(np.zeros(3), ()) == 0).all()


def test_an_exact_background_with_a_planted_change_marks_the_change():
    x = np.zeros((100, 100))
    x[:10, :10] = 5.0
    null = fit_null(x, "magnitude")
    marked = x > null.score_threshold(ALPHA)
    assert marked[:10, :10].all() and marked.sum() == 100


def test_chi_square_scores_use_the_cube_root():
    rng = np.random.default_rng(3)
    z = rng.chisquare(6, 200_000)
    null = fit_null(z, "chi2")
    assert (z > null.score_threshold(1e-3)).mean() < 3e-3


def test_unknown_kind_and_critical_values():
    with pytest.raises(ValueError, match="kind"):
        fit_null(np.ones(3), "weird")
    assert z_critical(0.5) == pytest.approx(0.0)
    assert z_critical(1e-3) == pytest.approx(3.0902, abs=1e-4)


def test_verdict_says_when_nothing_changed():
    assert verdict(0.0, "auto", 1e-3).startswith("No significant change")
    assert "12.50 %" in verdict(0.125, "auto", 1e-3)
    assert "Otsu" in verdict(0.1, "otsu", 1e-3) and "0.7" in verdict(0.1, 0.7, 1e-3)


@pytest.mark.parametrize("dof", [1, 3, 4, 6, 13])
def test_chi_square_null_limit_is_the_chi_square_quantile_or_slightly_above(dof):
    from metric_change_detection.core.decision import chi_square_null
    from scipy.stats import chi2

    null = chi_square_null(dof)
    for alpha in (1e-2, 1e-4, 1e-6):
        exact = chi2.isf(alpha, dof)
        assert exact * 0.99 <= null.score_threshold(alpha) <= exact * 1.16
    assert abs(float(null.p_value(np.array([chi2.median(dof)]))[0]) - 0.5) < 0.03
