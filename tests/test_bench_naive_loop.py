"""The engine's cached-distance loop computes the same map as the straightforward loop."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from metric_change_detection.core.config import MetricCDConfig
from metric_change_detection.core.demo_data import synthetic_pair
from metric_change_detection.core.engine import Engine
from metric_change_detection.core.preprocess import fit_scaling

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.naive_loop import naive_fit_predict  # noqa: E402


def test_cached_loop_matches_naive_loop():
    before, after, _ = synthetic_pair(size=64, bands=3, seed=5)
    b, a = fit_scaling(before, after).apply(before, after)
    config = MetricCDConfig(weights="random", width=8, depth=2, iterations=4, augmentation="off")
    naive, _ = naive_fit_predict(b, a, config)
    engine = Engine(config, 3)
    tile = engine.prepare(b, a, b, a, np.ones(b.shape[1:], bool))
    engine.fit([tile])
    fast = engine.predict(tile, batch_stats=True)
    # Channels-last vs NCHW convolutions sum in another order: float noise, amplified by Adam.
    np.testing.assert_allclose(fast, naive, atol=5e-4)
