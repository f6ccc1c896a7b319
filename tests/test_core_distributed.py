"""Tiles on a Dask cluster (2 local worker processes): the same output as one machine."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pytest
from metric_change_detection.core.config import MetricCDConfig, PipelineOptions
from metric_change_detection.core.errors import Cancelled, InputError, MissingDependency
from metric_change_detection.core.pipeline import detect_change
from osgeo import gdal

needs_dask = pytest.mark.skipif(
    importlib.util.find_spec("distributed") is None, reason="dask[distributed] is not installed"
)
TILE = {"scene": 64, "per-tile": 96}  # 9 tiles in scene mode, 4 optimised tiles per tile


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from metric_change_detection.core.demo_data import write_demo_pair

    return write_demo_pair(tmp_path_factory.mktemp("dask-pair"), size=160)


@pytest.fixture(scope="module")
def config() -> Iterator[MetricCDConfig]:
    """Tiny settings; one torch thread as on the workers (Dask sets OMP_NUM_THREADS=1 there).

    A per-tile optimisation on 1 vs 2 CPU threads differs by ~1e-3 on one machine already
    (reduction order); with equal thread counts the cluster's result is bit-identical.
    """
    import torch

    threads = torch.get_num_threads()
    yield MetricCDConfig.preset(
        "fast", weights="random", width=8, depth=2, iterations=3, device="cpu", threads=1
    )
    torch.set_num_threads(threads)


def run(pair, config, out: Path, mode: str, **kwargs):
    """Run the pipeline into ``out``.tif (+ a mask); returns the result."""
    progress = kwargs.pop("progress", None)
    is_cancelled = kwargs.pop("is_cancelled", None)
    options = PipelineOptions(
        mode=mode, tile_size=TILE[mode], mask_path=str(out.with_suffix(".mask.tif")), **kwargs
    )
    return detect_change(
        pair.before, pair.after, str(out), config=config, options=options, progress=progress,
        is_cancelled=is_cancelled,
    )


def read(path) -> np.ndarray:
    dataset = gdal.Open(str(path))  # keep the dataset alive while its band is read
    return dataset.GetRasterBand(1).ReadAsArray()


@pytest.fixture(scope="module")
def reference(pair, config, tmp_path_factory) -> Dict[str, Tuple[np.ndarray, np.ndarray, dict]]:
    """Single-machine results per mode, computed once."""
    folder = tmp_path_factory.mktemp("reference")
    cache: Dict[str, Tuple[np.ndarray, np.ndarray, dict]] = {}

    def get(mode: str):
        if mode not in cache:
            out = folder / f"{mode}.tif"
            result = run(pair, config, out, mode)
            cache[mode] = (read(out), read(out.with_suffix(".mask.tif")), result.history)
        return cache[mode]

    return get


def assert_same(reference, out: Path, result) -> None:
    probability, mask, history = reference
    np.testing.assert_allclose(read(out), probability, atol=1e-4, equal_nan=True)
    np.testing.assert_array_equal(read(out.with_suffix(".mask.tif")), mask)
    assert result.history.keys() == history.keys()
    for key, values in history.items():
        np.testing.assert_allclose(result.history[key], values, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def cluster():
    """A running local cluster that runs are pointed at by address (as a remote one would be)."""
    from distributed import Client, LocalCluster

    environ = dict(os.environ)  # the nanny writes OMP_NUM_THREADS=1 & co. into ours
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0", scheduler_kwargs={"dashboard": False}) as local:
        with Client(local, set_as_default=False) as client:
            yield local, client
    os.environ.clear()
    os.environ.update(environ)


def spawned() -> List[int]:
    """Worker processes (multiprocessing spawn children) of this test process."""
    import psutil

    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != "zombie":
                pids.append(child.pid)
        except psutil.Error:
            pass
    return pids


@needs_dask
def test_scene_mode_on_a_scheduler_matches_one_machine(pair, config, reference, cluster, tmp_path):
    local, _ = cluster
    out = tmp_path / "scene.tif"
    messages: List[str] = []
    result = run(pair, config, out, "scene", dask_scheduler=local.scheduler_address,
                 progress=lambda pct, msg: messages.append(msg))
    assert_same(reference("scene"), out, result)
    tiles = [m for m in messages if m.startswith("Tile ")]
    count = len(tiles)
    assert count > 1 and tiles == [f"Tile {i}/{count}" for i in range(1, count + 1)]


@needs_dask
def test_per_tile_mode_on_local_workers_matches_one_machine(pair, config, reference, tmp_path):
    out = tmp_path / "per-tile.tif"
    result = run(pair, config, out, "per-tile", dask_workers=2)
    assert_same(reference("per-tile"), out, result)


@needs_dask
def test_a_killed_worker_is_recovered_and_the_output_is_identical(
    pair, config, reference, cluster, tmp_path
):
    local, client = cluster
    expected = reference("per-tile")
    pids = client.run(os.getpid)
    state = {"armed": False, "killed": 0}

    def progress(pct: float, message: str) -> None:
        state["armed"] |= message.startswith("Computing the change probability")

    def is_cancelled() -> bool:
        """Once the tiles are submitted: kill a worker while it is computing one."""
        if state["armed"] and not state["killed"]:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                busy = [w for w, keys in client.processing().items()
                        if w in pids and any(str(k).startswith("metric-cd-") for k in keys)]
                if busy:
                    state["killed"] = pids[busy[0]]
                    os.kill(state["killed"], signal.SIGKILL)
                    break
                time.sleep(0.01)
        return False

    out = tmp_path / "killed.tif"
    result = run(pair, config, out, "per-tile", dask_scheduler=local.scheduler_address,
                 progress=progress, is_cancelled=is_cancelled)
    assert state["killed"], "no worker was computing a tile"
    assert_same(expected, out, result)
    client.wait_for_workers(2, timeout=120)  # the nanny restarted the killed worker
    assert state["killed"] not in client.run(os.getpid).values()


@needs_dask
def test_a_failing_tile_names_the_worker_side(cluster):
    from metric_change_detection.core.distributed import cluster_client, compute_tiles
    from metric_change_detection.core.errors import MetricCDError
    from metric_change_detection.core.tiling import Window

    local, _ = cluster
    options = PipelineOptions(dask_scheduler=local.scheduler_address)
    with pytest.raises(MetricCDError, match="AttributeError.*on a Dask worker.*same path"):
        with cluster_client(options) as client:
            list(compute_tiles("not a TileTask", [Window(0, 0, 64, 64)], client))


@needs_dask
@pytest.mark.parametrize("user_value", [None, "64"])
def test_local_workers_get_a_small_gdal_cache_and_the_client_keeps_its_environment(
    user_value, monkeypatch
):
    from metric_change_detection.core.distributed import WORKER_GDAL_CACHE_MB, cluster_client

    if user_value is None:
        monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    else:
        monkeypatch.setenv("GDAL_CACHEMAX", user_value)
    saved = dict(os.environ)
    with cluster_client(PipelineOptions(dask_workers=1)) as client:
        assert dict(os.environ) == saved  # restored as soon as the workers are spawned
        seen = client.run(lambda: (os.environ.get("GDAL_CACHEMAX"), os.environ.get("OMP_NUM_THREADS")))
    assert list(seen.values()) == [(user_value or WORKER_GDAL_CACHE_MB, "1")]
    assert dict(os.environ) == saved


@needs_dask
def test_cancel_leaves_no_output_and_stops_the_local_cluster(pair, config, tmp_path):
    before = set(spawned())
    state = {"cancel": False}

    def progress(pct: float, message: str) -> None:
        if message.startswith("Tile 1/"):
            state["cancel"] = True

    out = tmp_path / "cancelled.tif"
    with pytest.raises(Cancelled):
        run(pair, config, out, "scene", dask_workers=2, progress=progress,
            is_cancelled=lambda: state["cancel"])
    assert not out.exists() and not out.with_suffix(".mask.tif").exists()
    assert list(tmp_path.iterdir()) == []
    deadline = time.monotonic() + 30
    while set(spawned()) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(spawned()) - before, "the local cluster's workers outlived the run"


@needs_dask
def test_an_unreachable_scheduler_fails_fast_with_a_clear_error(pair, config, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "unreachable.tif"
    messages = []
    start = time.monotonic()
    with pytest.raises(InputError) as error:
        run(pair, config, out, "scene", dask_scheduler=address,
            progress=lambda pct, message: messages.append(message))
    assert time.monotonic() - start < 30
    assert not any(m.startswith("Iteration") for m in messages), "optimised before connecting"
    message = str(error.value)
    assert address in message and "dask scheduler" in message
    assert list(tmp_path.iterdir()) == []


def test_missing_dask_names_the_install_command(pair, config, tmp_path, monkeypatch):
    from metric_change_detection.core.distributed import DASK_VERSION

    monkeypatch.setitem(sys.modules, "distributed", None)
    out = tmp_path / "no-dask.tif"
    with pytest.raises(MissingDependency) as error:
        run(pair, config, out, "scene", dask_workers=2)
    assert f'python -m pip install "dask[distributed]=={DASK_VERSION}"' in str(error.value)
    assert error.value.name == "distributed"
    assert list(tmp_path.iterdir()) == []


def test_dask_is_not_imported_without_dask_options(pair, tmp_path):
    script = f"""
import json, sys
from metric_change_detection.core.config import MetricCDConfig, PipelineOptions
from metric_change_detection.core.pipeline import detect_change
cfg = MetricCDConfig.preset("fast", weights="random", width=8, depth=2, iterations=1, device="cpu")
detect_change({pair.before!r}, {pair.after!r}, {str(tmp_path / "plain.tif")!r}, config=cfg,
              options=PipelineOptions(tile_size=96))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "plain.tif").exists()


def test_cli_maps_the_dask_options():
    from metric_change_detection.core.cli import build_parser, config_from_args

    args = build_parser().parse_args(["a.tif", "b.tif", "-o", "c.tif", "--dask-workers", "3"])
    assert config_from_args(args)[1].dask_workers == 3
    args = build_parser().parse_args(
        ["a.tif", "b.tif", "-o", "c.tif", "--dask-scheduler", "tcp://10.0.0.5:8786"]
    )
    _, options = config_from_args(args)
    assert (options.dask_scheduler, options.dask_workers) == ("tcp://10.0.0.5:8786", 0)
    _, options = config_from_args(build_parser().parse_args(["a.tif", "b.tif", "-o", "c.tif"]))
    assert (options.dask_scheduler, options.dask_workers) == (None, 0)
