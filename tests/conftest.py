"""Shared fixtures: a small GeoTIFF pair, fast algorithm parameters, the provider, qgis_process."""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path
from typing import Dict, List, Optional

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "metric_change_detection"
QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # Debian's /usr/bin/qgis_process wrapper is broken on 3.22
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
_KEEP: Dict[str, object] = {}


def offline_weights() -> Optional[str]:
    """ImageNet MobileNetV2 weights shipped by a test-only package (None when not installed)."""
    from metric_change_detection.core.demo import offline_weights as find

    return find()


@pytest.fixture()
def isolated_pip(monkeypatch):
    """pip sees no user configuration (indexes, find-links) of the machine running the tests."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def demo_pair(tmp_path_factory):
    """A seeded 96 x 96 three-band GeoTIFF pair with planted changes (and its truth)."""
    from metric_change_detection.core.demo_data import write_demo_pair

    return write_demo_pair(tmp_path_factory.mktemp("pair"), size=96)


@pytest.fixture()
def landsat_like_pair(tmp_path) -> List[str]:
    """A 96 x 96 six-band GeoTIFF pair whose bands record Landsat TM's wavelengths (ENVI style)."""
    import numpy as np
    from metric_change_detection.core.demo_data import synthetic_pair
    from osgeo import gdal, gdal_array

    paths = [str(tmp_path / "tm_before.tif"), str(tmp_path / "tm_after.tif")]
    for path, image in zip(paths, synthetic_pair(size=96, bands=6, seed=2)[:2]):
        gdal_array.SaveArray(np.asarray(image), path, "GTiff")
        ds = gdal.Open(path, gdal.GA_Update)
        for i, microns in enumerate((0.4825, 0.565, 0.66, 0.825, 1.65, 2.22), 1):
            ds.GetRasterBand(i).SetMetadata({"wavelength": str(microns), "wavelength_units": "Micrometers"})
        ds = None
    return paths


@pytest.fixture()
def fast_params(demo_pair) -> Dict[str, object]:
    """Parameters of a quick run: 3 iterations, MobileNetV2, a narrow and shallow D-CPG."""
    weights = offline_weights()
    params: Dict[str, object] = {
        "BEFORE": demo_pair.before,
        "AFTER": demo_pair.after,
        "PRESET": 1,  # fast
        "ITERATIONS": 3,
        "BACKBONE": 1,  # MobileNetV2
        "WEIGHTS": 2 if weights else 1,  # the offline file, else random
        "SETTINGS": "width=8; depth=2",
        "DEVICE": 1,  # CPU
        "SEED": 0,
    }
    if weights:
        params["WEIGHTS_FILE"] = weights
    return params


@pytest.fixture()
def provider(qgis_processing):
    """The ``metriccd`` provider, registered in the Processing registry."""
    from metric_change_detection.processing_provider.provider import MetricChangeDetectionProvider
    from qgis.core import QgsApplication

    registry = QgsApplication.processingRegistry()
    if registry.providerById("metriccd") is None:
        # Keep a Python reference: sip drops the subclass otherwise and the registry breaks.
        _KEEP["provider"] = MetricChangeDetectionProvider()
        registry.addProvider(_KEEP["provider"])
    return registry.providerById("metriccd")


def link_plugin(plugin_dir: Path, source: Path = ROOT) -> Path:
    """Make ``plugin_dir/metric_change_detection`` point at ``source`` (the checkout by default)."""
    plugin_dir.mkdir(parents=True, exist_ok=True)
    link = plugin_dir / PLUGIN
    if not link.exists():
        link.symlink_to(source, target_is_directory=True)
    return plugin_dir


def qgis_process_env(plugin_dir: Path, profile: Path, venv: bool = True) -> Dict[str, str]:
    """Environment of qgis_process.bin: the plugin path, a throwaway profile, optionally the venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QGIS_PREFIX_PATH")}
    profile.mkdir(parents=True, exist_ok=True)
    runtime = profile / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(
        QGIS_PLUGINPATH=str(plugin_dir),
        QGIS_CUSTOM_CONFIG_PATH=str(profile),
        QT_QPA_PLATFORM="offscreen",
        XDG_RUNTIME_DIR=str(runtime),
        HOME=str(profile),
    )
    if venv:
        env["PYTHONPATH"] = SITE_PACKAGES
    return env


class QgisProcess:
    """Runs ``qgis_process.bin`` with the plugin enabled in a throwaway profile."""

    def __init__(self, plugin_dir: Path, profile: Path, venv: bool = True) -> None:
        self.env = qgis_process_env(plugin_dir, profile, venv)

    def __call__(self, args: List[str], timeout: float = 600) -> subprocess.CompletedProcess:
        """Run ``qgis_process.bin ARGS`` and return the completed process (text output)."""
        return subprocess.run([QGIS_PROCESS, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def enable(self) -> subprocess.CompletedProcess:
        """Enable the plugin in the profile; fail with qgis_process's output when it is not found."""
        done = self(["plugins", "enable", PLUGIN], timeout=300)
        assert done.returncode == 0 and "No matching plugins" not in done.stdout, (
            done.stdout + done.stderr
        )
        return done


@pytest.fixture(scope="session")
def qgis_process_class():
    """The :class:`QgisProcess` runner class (for custom plugin folders and environments)."""
    return QgisProcess


@pytest.fixture()
def qgis_process(tmp_path) -> QgisProcess:
    """qgis_process.bin with this checkout linked as the plugin and enabled."""
    runner = QgisProcess(link_plugin(tmp_path / "plugins"), tmp_path / "profile")
    runner.enable()
    return runner
