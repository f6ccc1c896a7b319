"""The evidence gate's sharpness hypotheses (``Scaling.evidence``, ``fit_calibrator``)."""

from __future__ import annotations

import numpy as np
import pytest
from metric_change_detection.core.calibration import fit_calibrator
from metric_change_detection.core.config import MetricCDConfig
from metric_change_detection.core.decision import admitted_views
from metric_change_detection.core.errors import InputError
from metric_change_detection.core.preprocess import fit_scaling
from scipy.ndimage import gaussian_filter


def _scene(seed: int = 0, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((3, size, size), np.float32)
    for _ in range(40):  # sharp-edged blocks: a texture with many edges
        r, c = rng.integers(0, size - 8, 2)
        x[:, r:r + 8, c:c + 8] += rng.uniform(20, 80, (3, 1, 1))
    return x + rng.normal(0, 1, x.shape).astype(np.float32)


def test_evidence_has_one_view_per_hypothesis():
    before = _scene()
    valid = np.ones(before.shape[1:], bool)
    scaling = fit_scaling(before, before)
    assert scaling.evidence(before, before, valid).shape == (1, 96, 96)
    views = scaling.evidence(before, before + 1, valid, sharpness=1.0)
    assert views.shape == (3, 96, 96)
    np.testing.assert_array_equal(views[0], scaling.magnitude(before, before + 1))


def test_blurring_the_sharper_date_explains_a_softer_acquisition():
    before = _scene()
    after = np.stack([gaussian_filter(b, 1.0) for b in before])
    valid = np.ones(before.shape[1:], bool)
    views = fit_scaling(before, after).evidence(before, after, valid, sharpness=1.0)
    plain, before_blurred, after_blurred = (float(np.percentile(v, 95)) for v in views)  # edges
    assert before_blurred < 0.5 * plain and after_blurred > plain
    assert admitted_views(views.reshape(3, -1)) == (0, 1)  # the before-image is the sharper
    assert admitted_views(views[[0, 2, 1]].reshape(3, -1)) == (0, 2)


def test_no_sharpness_hypothesis_is_admitted_between_equally_sharp_dates():
    rng = np.random.default_rng(5)
    texture = rng.uniform(0, 100, (3, 96, 96)).astype(np.float32)  # fine detail everywhere
    before, after = (texture + rng.normal(0, 1, texture.shape) for _ in range(2))
    valid = np.ones(before.shape[1:], bool)
    views = fit_scaling(before, after).evidence(before, after, valid, sharpness=1.0)
    assert admitted_views(views.reshape(3, -1)) == (0,)
    calibrator = fit_calibrator(np.zeros(96 * 96), views.reshape(3, -1), gate=True)
    assert calibrator.views == (0,) and len(calibrator.evidence) == 1


def test_invalid_pixels_do_not_leak_into_the_blur():
    before = _scene()
    valid = np.ones(before.shape[1:], bool)
    valid[:, :48] = False
    garbage = before.copy()
    garbage[:, :, :48] = 1e6  # nodata values on the invalid half
    scaling = fit_scaling(before, before)
    clean = scaling.evidence(before, before, valid, sharpness=1.0)[:, :, 52:]
    dirty = scaling.evidence(garbage, garbage, valid, sharpness=1.0)[:, :, 52:]
    np.testing.assert_allclose(dirty, clean, atol=1e-4)


def test_the_gate_takes_the_least_significant_hypothesis():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, 20000)
    logits[:200] += 8  # the network calls these changed
    plain = np.abs(rng.normal(0, 1, 20000))
    plain[:200] += 10  # the plain difference agrees
    explained = plain.copy()
    explained[:100] = np.abs(rng.normal(0, 1, 100))  # a sharpness hypothesis explains half
    one = fit_calibrator(logits, plain, gate=True)
    both = fit_calibrator(logits, np.stack([plain, explained]), gate=True)
    assert len(one.evidence) == 1 and both.views == (0, 1)
    critical = 3.719  # z at alpha 1e-4
    assert (one.z(logits, plain)[:200] > critical).mean() > 0.95
    marked = both.z(logits, np.stack([plain, explained])) > critical
    assert marked[:100].mean() < 0.05 and marked[100:200].mean() > 0.95


@pytest.mark.parametrize("value", [-1.0, 5.5, float("nan")])
def test_gate_sharpness_is_validated(value):
    with pytest.raises(InputError, match="gate_sharpness"):
        MetricCDConfig(gate_sharpness=value)


def test_only_the_admitted_hypotheses_need_computing_once_calibrated():
    before = _scene()
    after = np.stack([gaussian_filter(b, 1.0) for b in before])
    after[:, 40:60, 40:60] += 60  # a change
    valid = np.ones(before.shape[1:], bool)
    scaling = fit_scaling(before, after)
    family = scaling.evidence(before, after, valid, sharpness=1.0)
    logits = family[0].ravel() * 3
    calibrator = fit_calibrator(logits, family.reshape(3, -1), gate=True)
    assert calibrator.views == (0, 1)
    admitted = scaling.evidence(before, after, valid, 1.0, rows=calibrator.views)
    np.testing.assert_array_equal(admitted, family[[0, 1]])
    np.testing.assert_array_equal(calibrator.z(logits, admitted.reshape(2, -1)),
                                  calibrator.z(logits, family.reshape(3, -1)))
    note = calibrator.describe_sharpness(1.0)
    assert note.startswith("The before image is sharper than the after image")
    assert fit_calibrator(logits, family[:1].reshape(1, -1), gate=True).describe_sharpness(1.0) is None
