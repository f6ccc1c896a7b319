"""The ``metric-cd`` command: a real run, and every bad input with a one-line error and no output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_change_detection.core import cli
from metric_change_detection.core.demo_data import write_demo_pair
from osgeo import gdal

FAST = ["--preset", "fast", "--weights", "random", "--iterations", "2", "--quiet"]
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CONSOLE = str(Path(sys.executable).parent / "metric-cd")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_demo_pair(tmp_path_factory.mktemp("cli"), size=96, seed=2)


def raster(path: Path, array: np.ndarray, dtype=gdal.GDT_Float32, nodata=None) -> str:
    bands, rows, cols = array.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), cols, rows, bands, dtype)
    ds.SetGeoTransform((0, 1, 0, 0, 0, -1))
    for i in range(bands):
        if nodata is not None:
            ds.GetRasterBand(i + 1).SetNoDataValue(nodata)
        ds.GetRasterBand(i + 1).WriteArray(array[i])
    ds = None
    return str(path)


def test_console_script_runs_and_prints_one_json_line(pair, tmp_path):
    out = tmp_path / "p.tif"
    done = subprocess.run(
        [CONSOLE, pair.before, pair.after, "-o", str(out), "--mask", str(tmp_path / "m.tif"),
         "--bands", "1,2,3", "--fe-bands", "3,2,1", "--threshold", "otsu", "--alpha", "0.01",
         "--preset", "paper", "--backbone", "mobilenet_v2", "--weights", "random",
         "--iterations", "2", "--seed", "1", "--device", "cpu", "--threads", "1",
         "--mode", "per-tile", "--tile-size", "64", "--resampling", "nearest",
         "--min-area", "4", "--min-area-unit", "pixels"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["output_path"] == str(out) and summary["mode"] == "per-tile"
    assert 0 < summary["threshold"] < 1 and summary["device"] == "cpu"
    assert "%" in done.stderr  # the progress bar
    assert summary["verdict"] in done.stderr and "with Otsu's threshold" in summary["verdict"]
    assert gdal.Open(str(out)).RasterXSize == 96


def test_console_script_error_is_one_line_without_traceback(tmp_path):
    done = subprocess.run([CONSOLE, str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "-o",
                           str(tmp_path / "p.tif")], capture_output=True, timeout=300)
    assert done.returncode == 1
    stderr = done.stderr.decode()  # bytes: text mode would turn the bar's \r into \n
    assert "Traceback" not in stderr and done.stdout == b""
    lines = [line for line in stderr.split("\r") if line.strip()]
    assert lines[-1].startswith("metric-cd: error:") and lines[-1].count("\n") == 1


def _bad_cases(pair, tmp: Path):
    good = raster(tmp / "good.tif", np.random.default_rng(0).random((3, 64, 64)))
    corrupt = tmp / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00 this is not a tiff")
    gdal.Translate(str(tmp / "far.tif"), good, outputBounds=[1000, 0, 1064, -64]).FlushCache()
    one = raster(tmp / "one.tif", np.random.default_rng(1).random((1, 64, 64)))
    nodata = raster(tmp / "nodata.tif", np.zeros((3, 64, 64)), nodata=0)
    small = raster(tmp / "small.tif", np.random.default_rng(2).random((3, 16, 16)))
    cplx = raster(tmp / "complex.tif", np.ones((3, 64, 64)), dtype=gdal.GDT_CFloat32)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp / "wrong.pth")
    out = str(tmp / "out.tif")
    return {
        "missing file": ([str(tmp / "missing.tif"), good, "-o", out], "does not exist"),
        "corrupt file": ([str(corrupt), good, "-o", out], "read"),
        "no overlap": ([good, str(tmp / "far.tif"), "-o", out], "overlap"),
        "band-count mismatch": ([good, one, "-o", out], "band"),
        "band index out of range": ([good, good, "-o", out, "--bands", "1,5"], "5"),
        "all nodata": ([nodata, good, "-o", out], "valid"),
        "too small": ([small, small, "-o", out], "at least 32x32"),
        "complex data": ([cplx, cplx, "-o", out], "complex"),
        "output is an input": ([good, good, "-o", good], "input"),
        "output folder missing": ([good, good, "-o", str(tmp / "nowhere" / "o.tif")], "folder"),
        "weights do not match": ([pair.before, pair.after, "-o", out, "--backbone", "vgg16",
                                  "--weights", str(tmp / "wrong.pth")], "do not match"),
    }


def test_every_bad_input_gives_a_clear_error_and_no_output(pair, tmp_path, capsys):
    for name, (args, needle) in _bad_cases(pair, tmp_path).items():
        before = sorted(p.name for p in tmp_path.iterdir())
        code = cli.main([*args, *FAST[:-1], "--quiet"] if "--weights" not in args
                        else [*args, "--iterations", "2", "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 1, name
        assert "\n" not in err and needle.lower() in err.lower(), (name, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, name


def test_read_only_output_folder(pair, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    real_access = __import__("os").access
    # root ignores permission bits: pretend the folder is read-only as it is for a user
    monkeypatch.setattr("os.access", lambda p, m, **k: False if Path(p) == folder else real_access(p, m))
    code = cli.main([pair.before, pair.after, "-o", str(folder / "p.tif"), *FAST])
    assert code == 1 and "writ" in capsys.readouterr().err
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(not (SHARED / "geo_samples_rasterio").is_dir(), reason="../shared/data absent")
def test_georeferenced_sample_with_mask_runs(tmp_path):
    sample = SHARED / "geo_samples_rasterio"
    out = tmp_path / "p.tif"
    code = cli.main([str(sample / "RGB.byte.tif"), str(sample / "RGB2.byte.tif"), "-o", str(out),
                     *FAST, "--tile-size", "256"])
    assert code == 0
    ds = gdal.Open(str(out))
    src = gdal.Open(str(sample / "RGB.byte.tif"))
    assert ds.GetGeoTransform() == src.GetGeoTransform()
    p = ds.ReadAsArray()
    assert (p == -9999).any() and (p != -9999).any()  # the nodata collar stays nodata


def test_gate_and_fusion_flags_override_the_preset():
    def config(*extra):
        args = cli.build_parser().parse_args(["a.tif", "b.tif", "-o", "c.tif", *extra])
        return cli.config_from_args(args)[0]

    assert config().gate == 1.0 and config("--preset", "paper").gate == 1.0
    assert config("--gate", "0").gate == 0.0 and config("--preset", "paper", "--gate", "0").gate == 0.0
    args = cli.build_parser().parse_args(["a.tif", "b.tif", "-o", "c.tif", "--alpha", "0.01"])
    assert cli.config_from_args(args)[1].alpha == 0.01
    assert config().feature_fusion == 0.5 and config("--preset", "paper").feature_fusion == 0.0
    assert config("--feature-fusion", "0").feature_fusion == 0.0


def test_min_area_defaults_to_the_measured_pixels_and_zero_keeps_all():
    from metric_change_detection.core.config import MIN_AREA_PIXELS

    def options(*extra):
        args = cli.build_parser().parse_args(["a.tif", "b.tif", "-o", "c.tif", *extra])
        return cli.config_from_args(args)[1], cli.baseline_options_from_args(args)[0]

    for opts in options():
        assert (opts.min_area, opts.min_area_unit) == (MIN_AREA_PIXELS, "pixels") and MIN_AREA_PIXELS > 1
    for opts in options("--min-area", "0"):
        assert opts.min_area == 0
    # the unit applies to a given area only; the default stays in pixels
    for opts in options("--min-area-unit", "map"):
        assert (opts.min_area, opts.min_area_unit) == (MIN_AREA_PIXELS, "pixels")
    for opts in options("--min-area", "500", "--min-area-unit", "map"):
        assert (opts.min_area, opts.min_area_unit) == (500, "map")
    assert f"default: {MIN_AREA_PIXELS} pixels" in cli.build_parser().format_help()
    # --alpha reaches the classics too (it was dropped for --method cva / pcakmeans / irmad)
    assert options("--alpha", "0.01")[1].alpha == 0.01


def test_cli_default_min_area_removes_single_pixels_from_the_mask(tmp_path):
    from metric_change_detection.core.config import MIN_AREA_PIXELS
    from scipy import ndimage

    rng = np.random.default_rng(0)
    before = 100 + rng.normal(0, 2, (3, 64, 64))
    after = before + rng.normal(0, 2, before.shape)
    after[:, 10:22, 10:22] += 60  # a change of 144 pixels
    for row, col in ((40, 40), (50, 12), (12, 50), (55, 55)):
        after[:, row, col] += 60  # single changed pixels
    paths = [raster(tmp_path / "a.tif", before), raster(tmp_path / "b.tif", after)]
    masks = {}
    for name, extra in (("default", []), ("zero", ["--min-area", "0"])):
        mask = tmp_path / f"{name}.tif"
        code = cli.main([*paths, "-o", str(tmp_path / f"{name}_p.tif"), "--mask", str(mask),
                         "--method", "cva", "--quiet", *extra])
        assert code == 0
        masks[name] = gdal.Open(str(mask)).ReadAsArray() == 1
    sizes = {name: np.bincount(ndimage.label(m, structure=np.ones((3, 3)))[0].ravel())[1:]
             for name, m in masks.items()}
    assert all(masks["zero"][r, c] for r, c in ((40, 40), (50, 12), (12, 50), (55, 55)))
    assert sizes["zero"].min() < MIN_AREA_PIXELS
    assert sizes["default"].size and sizes["default"].min() >= MIN_AREA_PIXELS
    assert masks["default"][10:22, 10:22].all() and (masks["default"] <= masks["zero"]).all()


def test_the_cli_bounds_gdal_block_cache_unless_the_user_sets_it(monkeypatch):
    from metric_change_detection.core.cli import GDAL_CACHE_MB, limit_gdal_cache
    from osgeo import gdal

    before = gdal.GetCacheMax()
    try:
        gdal.SetCacheMax(1024 * 1024 * 1024)
        monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
        limit_gdal_cache()
        assert gdal.GetCacheMax() == GDAL_CACHE_MB * 1024 * 1024
        gdal.SetCacheMax(1024 * 1024 * 1024)
        monkeypatch.setenv("GDAL_CACHEMAX", "1024")
        limit_gdal_cache()
        assert gdal.GetCacheMax() == 1024 * 1024 * 1024
    finally:
        gdal.SetCacheMax(before)


_ARENA_PROBE = """
import ctypes, os, sys, tempfile, threading
import numpy as np
from metric_change_detection.core.cli import limit_malloc_arenas
applied = limit_malloc_arenas()

def work():
    for _ in range(20):
        a = np.ones(1_000_000)  # 8 MB, freed at once: glibc then serves them from its pools
        del a

threads = [threading.Thread(target=work) for _ in range(6)]
[t.start() for t in threads]
[t.join() for t in threads]
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
path = tempfile.mktemp()
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
print(applied, open(path).read().count("<heap nr="))
os.remove(path)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_the_cli_keeps_two_memory_pools_for_its_threads_unless_the_user_sets_it():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", _ARENA_PROBE], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out[0] == "True" and int(out[1]) <= 2
    env["MALLOC_ARENA_MAX"] = "8"
    out = subprocess.run([sys.executable, "-c", _ARENA_PROBE], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out[0] == "False" and int(out[1]) > 2  # the user's setting wins
