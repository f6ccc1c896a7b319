"""processing_provider.installer: pip into the plugin's profile folder, no network (issue 18).

pip really runs (``python -m pip install --target``) against wheels made here, an index that
refuses connections (offline) and one that never answers (cancel). The packages are fakes with
their own names, so the torch of this test process is never shadowed.
"""

from __future__ import annotations

import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from fake_wheels import closed_port, make_wheel, stuck_index
from metric_change_detection.processing_provider import installer
from metric_change_detection.processing_provider.installer import (
    CPU_INDEX,
    CUDA_INDEX,
    InstallCancelled,
    InstallerError,
    PipInstaller,
    plan_install,
)

FAKE = "mcd-fake-torch"


pytestmark = pytest.mark.usefixtures("isolated_pip")


@pytest.fixture()
def wheels(tmp_path) -> Path:
    """A folder of wheels: the fake torch (needs a helper and numpy), its helper, a numpy."""
    folder = tmp_path / "wheels"
    make_wheel(folder, FAKE, "1.0", requires=["mcd-fake-helper", "numpy"])
    make_wheel(folder, FAKE, "2.0", requires=["mcd-fake-helper", "numpy"])
    make_wheel(folder, "mcd-fake-helper", "0.1")
    make_wheel(folder, "numpy", "99.0")  # what pip would bring along: must not shadow QGIS's
    return folder


def local_plan(target: Path, wheels: Path, spec: str = FAKE, **fields) -> installer.InstallPlan:
    return plan_install(target, python=sys.executable, platform="linux", environ={},
                        packages=(spec,), no_index=True, find_links=(str(wheels),), retries=0,
                        **fields)


@pytest.fixture()
def cleanup_imports():
    """Forget the fake modules and sys.path entries a test added."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [n for n in sys.modules if n.startswith("mcd_fake")]:
        del sys.modules[name]


def test_packages_dir_is_the_plugins_folder_of_the_profile(tmp_path):
    folder = tmp_path / "python" / "dependencies" / "metric_change_detection"
    assert installer.packages_dir(tmp_path) == folder


def test_cpu_build_by_default(tmp_path):
    plan = plan_install(tmp_path / "t", python="/usr/bin/python3.11", platform="linux", environ={})
    assert plan.variant == "cpu" and plan.index_url == CPU_INDEX
    command = plan.command()
    assert command[:4] == ["/usr/bin/python3.11", "-m", "pip", "install"]
    assert command[command.index("--target") + 1] == str(plan.staging)  # pip never writes the target
    assert command[-2:] == ["torch", "torchvision"] and "--user" not in command
    text = plan.command_text()
    assert f"--target {tmp_path / 't'}" in text and f"--index-url {CPU_INDEX}" in text
    assert "--break-system-packages" not in text


@pytest.mark.parametrize(("platform", "index"), [("linux", None), ("win32", CUDA_INDEX), ("darwin", None)])
def test_cuda_build_when_a_gpu_is_found_and_chosen(tmp_path, platform, index):
    plan = plan_install(tmp_path, "cuda", gpu="NVIDIA H200", python="python", platform=platform,
                        environ={})
    assert plan.variant == "cuda" and plan.index_url == index


def test_cuda_without_a_gpu_is_refused(tmp_path):
    with pytest.raises(InstallerError, match="No NVIDIA GPU"):
        plan_install(tmp_path, "cuda", gpu=None, python="python", environ={})
    with pytest.raises(InstallerError, match="Unknown"):
        plan_install(tmp_path, "rocm", python="python", environ={})


def test_users_own_index_setting_wins(tmp_path):
    plan = plan_install(tmp_path, python="python", platform="linux",
                        environ={"PIP_INDEX_URL": "https://mirror.example/simple"})
    assert plan.index_url is None and "PIP_INDEX_URL" in plan.note


def test_detect_nvidia_gpu():
    def run(args, **kwargs):
        return subprocess.CompletedProcess(args, 0, "GPU 0: NVIDIA H200 (UUID: GPU-1234)\n", "")

    assert installer.detect_nvidia_gpu(run, lambda exe: "/usr/bin/nvidia-smi") == "NVIDIA H200"
    if not sys.platform.startswith("win"):  # Windows also looks in System32
        assert installer.detect_nvidia_gpu(run, lambda exe: None) is None

    def failing(args, **kwargs):
        return subprocess.CompletedProcess(args, 9, "", "NVIDIA-SMI has failed")

    assert installer.detect_nvidia_gpu(failing, lambda exe: "/usr/bin/nvidia-smi") is None


def test_install_from_local_wheels_then_import_without_restart(tmp_path, wheels, cleanup_imports):
    target = tmp_path / "profile" / "python" / "dependencies" / "metric_change_detection"
    lines, steps = [], []
    result = PipInstaller(local_plan(target, wheels, f"{FAKE}==1.0"), lines.append,
                          lambda p, m: steps.append((p, m))).run()
    assert (target / "mcd_fake_torch" / "__init__.py").is_file()
    assert (target / "mcd_fake_helper").is_dir()
    assert not (target / "numpy").exists() and result.kept_from_qgis == ["numpy"]
    assert not list(target.glob("numpy-*.dist-info"))
    assert not (target.parent / f".{target.name}.staging").exists()
    assert "mcd-fake-torch-1.0" in result.installed and "numpy-99.0" not in result.installed
    assert installer.installed_info(target)["variant"] == "cpu"
    assert any("Successfully installed" in line for line in lines)
    percents = [p for p, _ in steps]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert any(m.startswith("Resolving") for _, m in steps)

    assert not installer.restart_needed(("mcd_fake_torch",))
    assert installer.activate(target)
    assert sys.path.index(str(target)) < min(
        i for i, p in enumerate(sys.path) if p.endswith(("site-packages", "dist-packages")))
    import mcd_fake_torch
    import numpy

    assert mcd_fake_torch.__version__ == "1.0"
    assert Path(mcd_fake_torch.__file__).parent.parent == target
    assert str(target) not in numpy.__file__  # QGIS's numpy is still the one in use
    assert installer.restart_needed(("mcd_fake_torch",))
    assert installer.activate(target) and sys.path.count(str(target)) == 1


def test_reinstall_replaces_and_remove_deletes(tmp_path, wheels, cleanup_imports):
    target = tmp_path / "deps"
    PipInstaller(local_plan(target, wheels, f"{FAKE}==1.0")).run()
    PipInstaller(local_plan(target, wheels, f"{FAKE}==2.0")).run()
    assert (target / "mcd_fake_torch" / "__init__.py").read_text().strip() == "__version__ = '2.0'"
    assert [p.name for p in target.glob("mcd_fake_torch-*.dist-info")] == ["mcd_fake_torch-2.0.dist-info"]
    assert not list(tmp_path.glob(".deps.*"))
    installer.activate(target)
    assert installer.remove(target) and not target.exists() and str(target) not in sys.path


def test_remove_of_files_in_use_finishes_at_next_start(tmp_path, wheels, monkeypatch):
    target = tmp_path / "deps"
    PipInstaller(local_plan(target, wheels)).run()
    real = installer.shutil.rmtree

    def in_use(path, *args, **kwargs):
        if Path(path) == target and not kwargs.get("ignore_errors"):
            raise PermissionError("in use")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(installer.shutil, "rmtree", in_use)
    assert not installer.remove(target)
    assert (target / installer.PENDING_REMOVAL).exists()
    monkeypatch.setattr(installer.shutil, "rmtree", real)
    assert not installer.activate(target) and not target.exists()


def test_failure_keeps_the_previous_install_and_names_the_fix(tmp_path, wheels):
    target = tmp_path / "deps"
    PipInstaller(local_plan(target, wheels, f"{FAKE}==1.0")).run()
    with pytest.raises(InstallerError, match="found no PyTorch build") as info:
        PipInstaller(local_plan(target, wheels, f"{FAKE}==7.0")).run()
    assert not isinstance(info.value, InstallCancelled)
    assert (target / "mcd_fake_torch" / "__init__.py").read_text().strip() == "__version__ = '1.0'"
    assert not (tmp_path / ".deps.staging").exists()


def test_offline_says_so(tmp_path):
    plan = plan_install(tmp_path / "deps", python=sys.executable, platform="linux", environ={},
                        index_url=f"http://127.0.0.1:{closed_port()}/simple", retries=0, timeout=5)
    lines = []
    with pytest.raises(InstallerError, match="offline") as info:
        PipInstaller(plan, lines.append).run()
    assert "127.0.0.1" in str(info.value) and lines
    assert not (tmp_path / "deps").exists()


def test_cancel_stops_pip_and_changes_nothing(tmp_path, wheels):
    target = tmp_path / "deps"
    PipInstaller(local_plan(target, wheels, f"{FAKE}==1.0")).run()
    with stuck_index() as url:
        plan = plan_install(target, python=sys.executable, platform="linux", environ={},
                            index_url=url, retries=0, timeout=60)
        start = time.monotonic()
        runner = PipInstaller(plan, is_cancelled=lambda: time.monotonic() - start > 3)
        with pytest.raises(InstallCancelled, match="nothing was changed"):
            runner.run()
    assert time.monotonic() - start < 30
    assert any("$ " in line or "Collecting" in line for line in [*runner.log, "$ "])
    assert (target / "mcd_fake_torch" / "__init__.py").read_text().strip() == "__version__ = '1.0'"
    assert not (tmp_path / ".deps.staging").exists()


def _fake_python(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "python"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return str(exe)


@pytest.mark.skipif(sys.platform.startswith("win"), reason="shell-script stand-in for Python")
def test_missing_pip_and_a_foreign_python_are_explained(tmp_path):
    no_pip = plan_install(tmp_path / "d", python=_fake_python(tmp_path, "exit 1"), environ={})
    with pytest.raises(InstallerError, match="pip is not available"):
        PipInstaller(no_pip).run()
    other = plan_install(tmp_path / "d", python=_fake_python(tmp_path, "echo 3 99 24.0"), environ={})
    with pytest.raises(InstallerError, match="3.99"):
        PipInstaller(other).run()


def test_a_manual_install_with_numpy_keeps_qgis_numpy(tmp_path, cleanup_imports):
    target = tmp_path / "deps"
    (target / "numpy").mkdir(parents=True)
    (target / "numpy" / "__init__.py").write_text("raise ImportError('the wrong numpy')\n")
    (target / "numpy-2.3.0.dist-info").mkdir()
    (target / "mcd_fake_manual").mkdir()
    (target / "mcd_fake_manual" / "__init__.py").write_text("")
    assert installer.activate(target)
    assert not (target / "numpy").exists() and not (target / "numpy-2.3.0.dist-info").exists()
    import mcd_fake_manual  # noqa: F401


def test_restart_needed_sees_an_imported_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "mcd_fake_loaded", types.ModuleType("mcd_fake_loaded"))
    assert installer.restart_needed(("mcd_fake_loaded",))
    monkeypatch.setitem(sys.modules, "mcd_fake_loaded", None)  # a blocked import is not loaded
    assert not installer.restart_needed(("mcd_fake_loaded",))


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (["ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device"],
         "disk is full"),
        (["WARNING: Retrying ... Failed to establish a new connection: [Errno -2] Name or service not known",
          "ERROR: No matching distribution found for torch"], "offline"),
        (["ERROR: Could not find a version that satisfies the requirement torch (from versions: none)"],
         "found no PyTorch build"),
        (["ERROR: something else"], "exit code 1"),
    ],
)
def test_failure_messages(tmp_path, log, expected):
    plan = plan_install(tmp_path, python="python", platform="linux", environ={})
    assert expected in installer.explain_failure(1, log, plan, reachable=lambda url: True)


def test_an_unreachable_index_is_offline_even_when_pip_only_says_not_found(tmp_path):
    plan = plan_install(tmp_path, python="python", platform="linux", environ={})
    log = ["ERROR: No matching distribution found for torch"]
    assert "offline" in installer.explain_failure(1, log, plan, reachable=lambda url: False)
    assert installer.index_reachable(f"http://127.0.0.1:{closed_port()}/simple") is False
    assert installer.index_reachable(tmp_path.as_uri()) is True
