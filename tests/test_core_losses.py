"""Loss terms on hand-made tensors: a perfect change map scores lower than an inverted one."""

from __future__ import annotations

import pytest
import torch
from metric_change_detection.core import losses


@pytest.fixture
def pair():
    """Two 1-channel 8x8 'dates' that differ by 1.0 in the left half only."""
    t1 = torch.zeros(1, 1, 8, 8)
    t2 = torch.zeros(1, 1, 8, 8)
    t2[..., :4] = 1.0
    truth = torch.zeros(1, 1, 8, 8)
    truth[..., :4] = 1.0
    return t1, t2, truth


def test_soft_masks_follow_the_hard_decision():
    pc = torch.tensor([[[[0.9, 0.2], [0.5, 0.7]]]])
    sc, sn = losses.soft_masks(pc)
    assert torch.allclose(sc, torch.tensor([[[[0.9, 0.0], [0.0, 0.7]]]]))
    assert torch.allclose(sn, torch.tensor([[[[0.0, 0.8], [0.0, 0.0]]]]))
    valid = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    sc, sn = losses.soft_masks(pc, valid)
    assert sn.sum() == 0


def test_image_term_value_and_sign(pair):
    t1, t2, truth = pair
    d = losses.distance_map(t1, t2)
    perfect = truth * 0.9 + (1 - truth) * 0.1  # Pc
    inverted = 1 - perfect
    good = losses.similarity_dissimilarity(*losses.soft_masks(perfect), d)
    bad = losses.similarity_dissimilarity(*losses.soft_masks(inverted), d)
    # perfect: Sn = 0.9 on unchanged half (d=0), Sc = 0.9 on changed half (d=1) -> 0 - 0.45
    assert good.item() == pytest.approx(-0.45)
    # inverted: Sn = 0.9 on changed half -> 0.45 - 0
    assert bad.item() == pytest.approx(0.45)


def test_feature_term_resizes_masks_and_standardises(pair):
    truth = torch.zeros(1, 1, 8, 8)
    truth[..., :2] = 1.0  # a minority changes, so standardisation keeps the contrast
    torch.manual_seed(0)
    base = torch.randn(1, 4, 8, 8)
    changed = torch.where(truth > 0, -base, base)  # new texture, same statistics
    f1 = [base, torch.nn.functional.avg_pool2d(base, 2)]
    f2 = [changed, torch.nn.functional.avg_pool2d(changed, 2)]
    distances = losses.feature_distances(f1, f2)
    assert [d.shape[-1] for d in distances] == [8, 4]
    perfect = truth * 0.9 + (1 - truth) * 0.1
    good = sum(losses.similarity_dissimilarity(*losses.soft_masks(perfect), d) for d in distances)
    bad = sum(losses.similarity_dissimilarity(*losses.soft_masks(1 - perfect), d) for d in distances)
    assert good < 0 < bad


def test_standardise_is_zero_mean_unit_std():
    f = torch.randn(1, 3, 16, 16) * 5 + 2
    s = losses.standardise(f)
    assert torch.allclose(s.mean(dim=(2, 3)), torch.zeros(1, 3), atol=1e-5)
    assert torch.allclose(s.std(dim=(2, 3)), torch.ones(1, 3), atol=1e-3)


def test_infonce_is_a_no_change_prior():
    pc_change = torch.full((1, 1, 4, 4), 0.9)
    pc_none = torch.full((1, 1, 4, 4), 0.1)
    # all change: a = 0.81, b = 0 -> 0.81 / tau ; all no change -> -0.81 / tau
    assert losses.infonce(*losses.soft_masks(pc_change), 0.5).item() == pytest.approx(1.62)
    assert losses.infonce(*losses.soft_masks(pc_none), 1.0).item() == pytest.approx(-0.81)


def test_consistency_is_zero_for_identical_features():
    f = [torch.randn(1, 2, 4, 4)]
    assert losses.consistency(f, f).item() == 0
    assert losses.consistency(f, [f[0] + 1]).item() == pytest.approx(1.0)


def test_gradient_flows_only_through_masked_pixels(pair):
    t1, t2, _ = pair
    d = losses.distance_map(t1, t2)
    pc = torch.full((1, 1, 8, 8), 0.7, requires_grad=True)
    losses.similarity_dissimilarity(*losses.soft_masks(pc), d).backward()
    # every pixel is 'change': d(-mean(Pc*d))/dPc = -d/64
    assert torch.allclose(pc.grad, -d / 64)
