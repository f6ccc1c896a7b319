"""`make package` builds an installable plugin zip; qgis_process loads it from a plugin folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "metric_change_detection"

pytestmark = [pytest.mark.qgis, pytest.mark.slow]

VERSION = re.search(r"^version=(\S+)", (ROOT / "metadata.txt").read_text(), re.M).group(1)
EXCLUDED = ("tests/", "bench/", ".ci/", "docs/", "Makefile", "setup.sh", "pyproject.toml",
            ".gitattributes", ".gitignore", "requirements.txt", "requirements-dev.txt")
REQUIRED = ("metadata.txt", "__init__.py", "plugin.py", "processing_provider/provider.py",
            "processing_provider/metric_cd_algorithm.py", "ui/dependencies_dialog.py", "core/pipeline.py",
            "resources/icon.png", "resources/icon.svg", "resources/styles/probability.qml",
            "resources/models/metric_cd_example.model3")


def worktree_tree() -> str:
    """Git tree of the working tree as it is now (tracked and untracked, not ignored files).

    Uses a throwaway index, so neither the real index nor any ref changes; on a clean clone this
    is HEAD's tree.
    """
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        subprocess.run(["git", "add", "-A", "."], cwd=ROOT, env=env, check=True, capture_output=True)
        done = subprocess.run(["git", "write-tree"], cwd=ROOT, env=env, check=True,
                              capture_output=True, text=True)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("packaging needs a git checkout")
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(["make", "-s", "package", f"REF={worktree_tree()}", f"DIST={dist}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    path = dist / f"metric_change_detection-{VERSION}.zip"
    assert path.is_file() and done.stdout.strip().endswith(path.name)
    return path


def test_zip_holds_the_plugin_without_tests_and_tooling(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert all(n.startswith(f"{PLUGIN}/") for n in names)
    inner = {n[len(PLUGIN) + 1:] for n in names}
    for required in REQUIRED:
        assert required in inner, required
    for excluded in EXCLUDED:
        assert not any(n == excluded or n.startswith(excluded) for n in inner), excluded
    assert not any(n.endswith((".pyc", ".pth")) or "__pycache__" in n for n in inner)


def test_metadata_is_complete(plugin_zip):
    text = zipfile.ZipFile(plugin_zip).read(f"{PLUGIN}/metadata.txt").decode()
    fields = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                "tags", "icon", "category", "experimental"):
        assert fields.get(key), key
    assert fields["qgisMinimumVersion"] == "3.22" and fields["version"] == VERSION
    assert fields["hasProcessingProvider"] == "yes" and fields["category"] == "Raster"
    assert fields["icon"] == "resources/icon.png" and fields["experimental"] == "True"
    # No public repository, tracker or homepage exists yet: no invented addresses.
    assert not {"repository", "tracker", "homepage"} & set(fields)


def test_qgis_process_loads_the_unzipped_plugin_without_torch(plugin_zip, tmp_path, demo_pair,
                                                             qgis_process_class):
    """Installed from the zip, in a QGIS whose Python has no torch (Debian's, without the venv)."""
    plugins = tmp_path / "plugins"
    zipfile.ZipFile(plugin_zip).extractall(plugins)
    runner = qgis_process_class(plugins, tmp_path / "profile", venv=False)
    runner.enable()
    listed = runner(["list"])
    assert listed.returncode == 0, listed.stderr
    assert "metriccd:metricchangedetection" in listed.stdout
    done = runner(["run", "metriccd:metricchangedetection", "--", f"BEFORE={demo_pair.before}",
                   f"AFTER={demo_pair.after}", f"OUTPUT={tmp_path / 'p.tif'}"])
    if done.returncode == 0:
        pytest.skip("Debian's Python has torch here; the missing-torch branch is tested in-process")
    output = done.stdout + done.stderr
    assert "'torch'" in output and "-m pip install" in output and "torchvision" in output
    assert not (tmp_path / "p.tif").exists()
