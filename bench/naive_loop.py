"""A straightforward implementation of the Metric-CD loop, kept only for comparison.

Like the published demo it runs D-FE on both dates (and on both jittered dates) at every
iteration and evaluates every term on full feature tensors. The engine computes the same
loss from distance maps cached once per tile; ``bench/bench_speed.py`` times both and
``tests/test_bench_naive_loop.py`` checks they give the same map.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from metric_change_detection.core import losses
from metric_change_detection.core.config import MetricCDConfig
from metric_change_detection.core.engine import Engine, as_fe_input


def _l1_masked(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(mask * a, mask * b)


def _term(sc, sn, a, b) -> torch.Tensor:
    if sc.shape[-2:] != a.shape[-2:]:
        sc = F.interpolate(sc, size=a.shape[-2:], mode="nearest")
        sn = F.interpolate(sn, size=a.shape[-2:], mode="nearest")
    return _l1_masked(sn, a, b) - _l1_masked(sc, a, b)


def naive_fit_predict(
    before01: np.ndarray,
    after01: np.ndarray,
    config: MetricCDConfig,
    progress: Optional[Callable[[float, str], None]] = None,
):
    """Run the loop on [0, 1]-scaled (C, H, W) arrays; returns (probability, history).

    ``progress(percent, message)`` is called after every iteration, as the engine does.
    """
    engine = Engine(config, before01.shape[0])
    dcpg = engine.dcpg.to(memory_format=torch.contiguous_format)  # plain NCHW, as a direct port
    t1 = torch.from_numpy(before01)[None].to(engine.device)
    t2 = torch.from_numpy(after01)[None].to(engine.device)
    f1_in = torch.from_numpy(as_fe_input(before01).copy())[None].to(engine.device)
    f2_in = torch.from_numpy(as_fe_input(after01).copy())[None].to(engine.device)
    diff = (t1 - t2).abs()
    optimiser = torch.optim.Adam(dcpg.parameters(), lr=config.learning_rate)
    history: Dict[str, List[float]] = {"total": []}
    dcpg.train()
    for it in range(config.iterations):
        pc = dcpg(diff)
        sc, sn = losses.soft_masks(pc)
        feats1 = [losses.standardise(f) for f in engine.fe(f1_in)]
        feats2 = [losses.standardise(f) for f in engine.fe(f2_in)]
        total = config.w_image * _term(sc, sn, t1, t2)
        total = total + config.w_feature * sum(_term(sc, sn, a, b) for a, b in zip(feats1, feats2))
        if config.augmentation != "off":
            j1 = [losses.standardise(f) for f in engine.fe(engine.jitter(f1_in))]
            j2 = [losses.standardise(f) for f in engine.fe(engine.jitter(f2_in))]
            if config.augmentation == "intended":
                total = total + config.w_augmented * sum(_term(sc, sn, a, b) for a, b in zip(j1, j2))
        total = total + config.w_infonce * losses.infonce(sc, sn, config.temperature)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        history["total"].append(float(total.detach()))
        if progress:
            progress(100.0 * (it + 1) / config.iterations, f"Iteration {it + 1}")
    with torch.no_grad():
        for m in dcpg.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.0
        probability = dcpg(diff)[0, 0].cpu().numpy()
    return probability, history
