"""Per-process caching of the opened pair and engine across copies of a tile task."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
from metric_change_detection.core import raster_io, tile_task
from metric_change_detection.core.config import MetricCDConfig
from metric_change_detection.core.demo_data import write_demo_pair
from metric_change_detection.core.engine import Engine
from metric_change_detection.core.preprocess import fit_scaling
from metric_change_detection.core.tiling import Window


def test_copies_of_a_task_reuse_the_opened_pair_and_engine(tmp_path, monkeypatch):
    pair = write_demo_pair(tmp_path, size=96, seed=0)
    with raster_io.open_pair(pair.before, pair.after) as opened:
        read = opened.read(Window(0, 0, 96, 96))
    config = MetricCDConfig(weights="random", width=8, depth=2, iterations=2)
    scaling = fit_scaling(read.before, read.after, read.valid)
    state = Engine(config, 3).dcpg.state_dict()
    task = tile_task.TileTask(pair.before, pair.after, None, None, None, "bilinear", config,
                              scaling, scaling, 3, state=state, token="run-1")
    calls = []
    real_open = raster_io.open_pair

    def counting_open(*args, **kwargs):
        calls.append(kwargs.get("check_valid", True))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(raster_io, "open_pair", counting_open)
    window = Window(16, 16, 64, 64)
    try:
        first, _ = tile_task.compute_tile(task, window)
        # Dask may hand a worker a fresh copy of the same task: nothing is re-opened.
        again, _ = tile_task.compute_tile(pickle.loads(pickle.dumps(task)), window)
        assert calls == [False]  # opened once, without re-scanning the rasters for validity
        np.testing.assert_array_equal(first, again)
        tile_task.compute_tile(dataclasses.replace(task, token="run-2"), window)
        assert len(calls) == 2  # another trained state: its own resources
    finally:
        tile_task.release()


def test_per_tile_fit_at_half_resolution_reuses_the_training_features(tmp_path, monkeypatch):
    pair = write_demo_pair(tmp_path, size=96, seed=0)
    with raster_io.open_pair(pair.before, pair.after) as opened:
        read = opened.read(Window(0, 0, 96, 96))
    config = MetricCDConfig.preset("fast", weights="random", width=8, depth=2, iterations=2)
    scaling = fit_scaling(read.before, read.after, read.valid)
    task = tile_task.TileTask(pair.before, pair.after, None, None, None, "bilinear", config,
                              scaling, scaling, 3, token="per-tile")
    calls = []
    real = Engine.feature_change
    monkeypatch.setattr(Engine, "feature_change", lambda *a, **k: calls.append(1) or real(*a, **k))
    try:
        probability, history = tile_task.compute_tile(task, Window(0, 0, 96, 96))
    finally:
        tile_task.release()
    assert probability.shape == (96, 96) and np.isfinite(probability).all()
    assert len(history["total"]) == 2 and calls == []  # D-FE ran once, for the training tile


def test_workers_choose_the_feature_bands_by_the_configs_rule(landsat_like_pair):
    before, after = landsat_like_pair
    config = MetricCDConfig(weights="random", width=8, depth=2, iterations=1,
                            fe_band_rule="wavelength")
    with raster_io.open_pair(before, after) as opened:
        read = opened.read(Window(0, 0, 64, 64))
    scaling = fit_scaling(read.before, read.after, read.valid)
    fe_scaling = fit_scaling(read.fe_before, read.fe_after, read.valid)
    task = tile_task.TileTask(before, after, None, None, None, "bilinear", config, scaling,
                              fe_scaling, 6, state=Engine(config, 6).dcpg.state_dict(), token="t")
    try:
        tile_task.compute_tile(task, Window(0, 0, 64, 64))
        opened = tile_task._cache["pair"]
        assert opened.fe_bands_before == (5, 4, 3) and opened.fe_choice.startswith("swir1")
    finally:
        tile_task.release()
