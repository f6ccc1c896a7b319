"""Issue 19: no input is ever overwritten, every failure is one clear line, nothing is left behind.

Tiny rasters and the cheapest settings (CVA where the case is not about Metric-CD).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
from metric_change_detection.core import cli
from metric_change_detection.core.config import MetricCDConfig
from metric_change_detection.core.errors import InputError, WeightsError
from metric_change_detection.core.raster_io import check_output_path, input_files, open_pair
from osgeo import gdal

gdal.UseExceptions()

CONSOLE = str(Path(sys.executable).parent / "metric-cd")
CVA = ["--method", "cva", "--quiet"]
METRIC_FAST = ["--preset", "fast", "--weights", "random", "--iterations", "1", "--device", "cpu",
               "--quiet"]


def raster(path: Path, array: np.ndarray, dtype=gdal.GDT_Float32, nodata=None,
           gt=(500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0), options=()) -> str:
    """Write a (bands, h, w) array as a GeoTIFF (geotransform ``gt``); its path."""
    array = np.asarray(array)
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), array.shape[2], array.shape[1], array.shape[0], dtype, options=list(options)
    )
    ds.SetGeoTransform(gt)
    for i, band in enumerate(array, 1):
        if nodata is not None:
            ds.GetRasterBand(i).SetNoDataValue(nodata)
        ds.GetRasterBand(i).WriteArray(band)
    ds = None
    return str(path)


@pytest.fixture()
def pair(tmp_path) -> List[str]:
    """A 32 x 32 three-band float32 pair in ``tmp_path``."""
    rng = np.random.default_rng(0)
    return [raster(tmp_path / f"{name}.tif", rng.random((3, 32, 32))) for name in ("a", "b")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> List[str]:
    """A seeded 32 x 32 pair with planted changes (for the cases that run Metric-CD)."""
    from metric_change_detection.core.demo_data import write_demo_pair

    made = write_demo_pair(tmp_path_factory.mktemp("demo"), size=32, seed=1)
    return [made.before, made.after]


def listing(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir())


def one_line_error(err: str, needle: str) -> None:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("metric-cd:") and "Traceback" not in err, err
    assert needle.lower() in lines[0].lower(), err


def run_cli(args: List[str], capsys, code: int = 1, needle: str = "") -> str:
    """``cli.main(args)`` must return ``code`` with one stderr line holding ``needle``."""
    assert cli.main(args) == code
    captured = capsys.readouterr()
    if code:
        assert captured.out == ""
        one_line_error(captured.err, needle)
    return captured.err


# --------------------------------------------------------------- 1. inputs never overwritten


def test_output_onto_an_external_mask_of_an_input_is_refused(pair, tmp_path, capsys):
    ds = gdal.Open(pair[1], gdal.GA_Update)
    ds.CreateMaskBand(gdal.GMF_PER_DATASET)
    ds.GetRasterBand(1).GetMaskBand().Fill(255)
    ds = None
    msk = Path(f"{pair[1]}.msk")
    content = msk.read_bytes()
    with pytest.raises(InputError, match="would overwrite .*b.tif.msk"):
        check_output_path(msk, pair)
    run_cli([*pair, "-o", str(msk), *CVA], capsys)
    assert msk.read_bytes() == content


def test_output_onto_a_source_of_a_vrt_input_is_refused(pair, tmp_path, capsys):
    inner = tmp_path / "inner.vrt"
    gdal.BuildVRT(str(inner), [pair[0]]).FlushCache()
    outer = tmp_path / "outer.vrt"
    gdal.BuildVRT(str(outer), [str(inner)]).FlushCache()
    assert Path(pair[0]) in input_files(outer) and inner in input_files(outer)
    content = Path(pair[0]).read_bytes()
    for target in (pair[0], str(inner)):
        with pytest.raises(InputError, match="would overwrite"):
            check_output_path(target, [str(outer), pair[1]])
    run_cli([str(outer), pair[1], "-o", pair[0], *CVA], capsys, needle="overwrite")
    assert Path(pair[0]).read_bytes() == content


def test_output_style_onto_an_input_style_is_refused(pair, tmp_path, capsys):
    style = tmp_path / "a.qml"
    style.write_text("<qgis>the user's own style</qgis>")
    run_cli([*pair, "-o", str(tmp_path / "a.tiff"), *CVA], capsys, needle="a.qml")
    run_cli([*pair, "-o", str(tmp_path / "p.tif"), "--mask", str(tmp_path / "a.tiff"), *CVA],
            capsys, needle="a.qml")
    assert style.read_text() == "<qgis>the user's own style</qgis>"
    assert listing(tmp_path) == ["a.qml", "a.tif", "b.tif"]


def test_side_files_of_inputs_are_listed(pair, tmp_path):
    for name in ("a.tif.aux.xml", "a.tif.ovr", "a.tfw", "a.wld", "a.qml"):
        (tmp_path / name).write_text("x")
    files = {p.name for p in input_files(pair[0])}
    assert files == {"a.tif", "a.tif.aux.xml", "a.tif.ovr", "a.tfw", "a.wld", "a.qml"}
    os.link(pair[0], tmp_path / "hard.tif")
    with pytest.raises(InputError, match="also an input"):
        check_output_path(tmp_path / "hard.tif", pair)


# --------------------------------------------------------------- 2. non-regular outputs


def test_output_that_exists_and_is_not_a_regular_file_is_refused(pair, tmp_path, capsys):
    fifo = tmp_path / "out.tif"
    os.mkfifo(fifo)
    run_cli([*pair, "-o", str(fifo), *CVA], capsys, needle="not a regular file")
    assert fifo.is_fifo()
    os.mkfifo(tmp_path / "mask.qml")  # the style written beside the mask
    run_cli([*pair, "-o", str(tmp_path / "p.tif"), "--mask", str(tmp_path / "mask.tif"), *CVA],
            capsys, needle="not a regular file")
    assert listing(tmp_path) == ["a.tif", "b.tif", "mask.qml", "out.tif"]


# --------------------------------------------------------------- 3. values beyond float32


def test_float64_values_beyond_float32_fail_with_one_line(tmp_path, capsys):
    rng = np.random.default_rng(1)
    before = raster(tmp_path / "a.tif", rng.random((1, 32, 32)) * 1e302, gdal.GDT_Float64)
    after = raster(tmp_path / "b.tif", rng.random((1, 32, 32)) * 1e302, gdal.GDT_Float64)
    run_cli([before, after, "-o", str(tmp_path / "p.tif"), *CVA], capsys, needle="divide them by 1e")
    coarse = raster(tmp_path / "c.tif", rng.random((1, 16, 16)) * 1e302, gdal.GDT_Float64,
                    gt=(500000.0, 20.0, 0.0, 4000000.0, 0.0, -20.0))  # warped onto the grid
    run_cli([before.replace("a.tif", "b.tif"), coarse, "-o", str(tmp_path / "p.tif"), *CVA],
            capsys, needle="beyond")
    assert listing(tmp_path) == ["a.tif", "b.tif", "c.tif"]


def test_float64_nodata_beyond_float32_is_still_nodata(tmp_path, capsys):
    rng = np.random.default_rng(2)
    lowest = float(np.finfo(np.float64).min)
    paths = []
    for name in ("a", "b"):
        values = rng.random((1, 32, 32))
        values[:, :4] = lowest
        paths.append(raster(tmp_path / f"{name}.tif", values, gdal.GDT_Float64, nodata=lowest))
    out = tmp_path / "p.tif"
    assert cli.main([*paths, "-o", str(out), *CVA]) == 0
    assert json.loads(capsys.readouterr().out)["output_path"] == str(out)
    ds = gdal.Open(str(out))
    band = ds.GetRasterBand(1)
    assert (band.ReadAsArray()[:4] == band.GetNoDataValue()).all()  # the nodata rows


# --------------------------------------------------------------- 4. SIGTERM / SIGHUP

STOP_IN_POLYGONS = textwrap.dedent("""
    import os, signal, sys
    from metric_change_detection.core import cli, outputs
    original = outputs.write_polygons

    def write_polygons(*args, **kwargs):  # the probability and the mask are written by now
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return original(*args, **kwargs)

    outputs.write_polygons = write_polygons
    sys.exit(cli.main(sys.argv[2:]))
""")


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_stop_signal_cleans_up_everything(pair, tmp_path, name):
    args = [*pair, "-o", str(tmp_path / "p.tif"), "--mask", str(tmp_path / "m.tif"),
            "--polygons", str(tmp_path / "poly.gpkg"), *CVA]
    done = subprocess.run([sys.executable, "-c", STOP_IN_POLYGONS, name, *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 128 + getattr(signal, name), done.stderr
    assert done.stdout == ""
    one_line_error(done.stderr, f"stopped by {name}; no output was written")
    assert listing(tmp_path) == ["a.tif", "b.tif"]


def test_sigterm_during_the_optimisation_stops_at_once(pair, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = [CONSOLE, *pair, "-o", str(out / "p.tif"), "--mask", str(out / "m.tif"),
            "--preset", "fast", "--weights", "random", "--iterations", "100000", "--threads", "1",
            "--device", "cpu"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 300
    while b"Optimising" not in seen and time.monotonic() < deadline:
        chunk = os.read(process.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
    assert b"Optimising" in seen, seen.decode(errors="replace")
    process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    stdout, stderr = process.communicate(timeout=60)
    assert time.monotonic() - stopped < 30
    assert process.returncode == 128 + signal.SIGTERM and stdout == b""
    assert "stopped by SIGTERM" in stderr.decode().split("\r")[-1]
    assert listing(out) == []


# --------------------------------------------------------------- 5. a full disk

FULL_DISK = 'mount -t tmpfs -o size="$0" tmpfs "$1" && shift 2 && "$@"; code=$?; ls -A "$OUT"; exit $code'


def _in_small_disk(size: str, folder: Path, command: List[str]) -> subprocess.CompletedProcess:
    """Run ``command`` with ``folder`` on a tmpfs of ``size`` (a private mount namespace)."""
    return subprocess.run(["unshare", "--mount", "sh", "-c", FULL_DISK, size, str(folder), "x",
                           *command], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OUT": str(folder)})


def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    done = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                          capture_output=True, timeout=60)
    return done.returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces (unshare)")
@pytest.mark.parametrize("size, failing", [("16k", "p.tif"), ("112k", "poly.gpkg")])
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, size, failing):
    rng = np.random.default_rng(3)
    pair = [raster(tmp_path / f"{n}.tif", rng.random((3, 128, 128))) for n in ("a", "b")]
    out = tmp_path / "out"
    out.mkdir()
    done = _in_small_disk(size, out, [
        CONSOLE, *pair, "-o", str(out / "p.tif"), "--mask", str(out / "m.tif"),
        "--polygons", str(out / "poly.gpkg"), *CVA,
    ])
    assert done.returncode == 1, done.stderr
    one_line_error(done.stderr, f"disk holding '{out}' is full (writing '{failing}')")
    assert done.stdout.strip() == ""  # no JSON, and `ls -A` of the tmpfs found nothing


# --------------------------------------------------------------- 6. seeds, 9. iterations


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
@pytest.mark.parametrize("method", [METRIC_FAST, ["--method", "pcakmeans", "--quiet"]])
def test_out_of_range_seed_is_one_line(pair, tmp_path, capsys, seed, method):
    run_cli([*pair, "-o", str(tmp_path / "p.tif"), "--seed", seed, *method], capsys,
            needle="seed must be a whole number from 0 to 4294967295")
    assert listing(tmp_path) == ["a.tif", "b.tif"]


def test_iterations_are_bounded(pair, tmp_path, capsys):
    run_cli([*pair, "-o", str(tmp_path / "p.tif"), *METRIC_FAST, "--iterations", str(10**20)],
            capsys, needle="iterations must be a whole number from 1 to 100000")
    for bad in (0, 100_001, 2.7, True):
        with pytest.raises(InputError, match="iterations"):
            MetricCDConfig.preset("fast", iterations=bad)
    for bad in (-1, 2**32, 1.5):
        with pytest.raises(InputError, match="seed"):
            MetricCDConfig(seed=bad)
    assert MetricCDConfig(seed=2**32 - 1, iterations=100_000).seed == 2**32 - 1


# --------------------------------------------------------------- 7. Dask address


def test_malformed_dask_address_fails_at_once_without_traceback(pair, tmp_path):
    pytest.importorskip("distributed")
    start = time.monotonic()
    done = subprocess.run([CONSOLE, *pair, "-o", str(tmp_path / "p.tif"), *METRIC_FAST,
                           "--dask-scheduler", "not a url"],
                          capture_output=True, text=True, timeout=300)
    assert time.monotonic() - start < 15  # a 20 s hang before
    assert done.returncode == 1 and done.stdout == ""
    one_line_error(done.stderr, "Dask scheduler address 'not a url' is not valid")
    assert listing(tmp_path) == ["a.tif", "b.tif"]


def test_dask_address_forms():
    from metric_change_detection.core.distributed import check_address

    for good in ("tcp://10.0.0.5:8786", "host.example:8786", "tls://a-b.c:1", "[::1]:8786"):
        assert check_address(f" {good} ") == good
    for bad in ("not a url", "tcp://:8786", "tcp://host", "http://host:8786", "tcp://h:0",
                "tcp://h:65536", "tcp://h:8786/path", "[zz]:1"):
        with pytest.raises(InputError, match="not valid"):
            check_address(bad)


# --------------------------------------------------------------- 8. named pipes as inputs

FIFO_RUN = textwrap.dedent("""
    import sys
    from metric_change_detection.core import cli
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_named_pipe_input_is_refused_without_hanging(pair, tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    vrt = tmp_path / "v.vrt"
    gdal.BuildVRT(str(vrt), [pair[0]]).FlushCache()
    text = vrt.read_text().replace("a.tif", "pipe.tif")
    vrt.write_text(text)
    for inputs in ([str(fifo), pair[1]], [pair[0], str(vrt)]):
        try:
            done = subprocess.run(
                [sys.executable, "-c", FIFO_RUN, *inputs, "-o", str(tmp_path / "p.tif"), *CVA],
                capture_output=True, text=True, timeout=120,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"reading {inputs} hung")
        assert done.returncode == 1
        one_line_error(done.stderr, "is a named pipe (FIFO), not a regular file")
    with pytest.raises(InputError, match="named pipe"):
        open_pair(str(fifo), pair[1])


# --------------------------------------------------------------- 10. output formats


@pytest.mark.parametrize("flag, name, needle", [
    ("-o", "p.png", "-o/--output '{path}' must be a GeoTIFF file ending in .tif or .tiff"),
    ("--mask", "m.jpg", "--mask '{path}' must be a GeoTIFF file"),
    ("--polygons", "poly.shp", "--polygons '{path}' must be a GeoPackage file ending in .gpkg"),
])
def test_output_extension_must_name_the_written_format(pair, tmp_path, capsys, flag, name, needle):
    path = str(tmp_path / name)
    args = {"-o": str(tmp_path / "p.tif"), flag: path}
    run_cli([*pair, *[v for kv in args.items() for v in kv], *CVA], capsys,
            needle=needle.format(path=path))
    assert listing(tmp_path) == ["a.tif", "b.tif"]


# --------------------------------------------------------------- 11, 14. weights messages


def test_weights_folder_is_named_a_folder(tmp_path):
    from metric_change_detection.core.models import load_backbone

    with pytest.raises(WeightsError, match="is a folder, not a file"):
        load_backbone("mobilenet_v2", str(tmp_path))


def test_truncated_cached_checkpoint_says_delete_it(tmp_path, monkeypatch):
    from metric_change_detection.core.models import hub_checkpoint, load_backbone

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = hub_checkpoint("mobilenet_v2")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04 a download cut short")
    with pytest.raises(WeightsError) as caught:
        load_backbone("mobilenet_v2", "imagenet")
    message = str(caught.value)
    assert f"'{cached}' is damaged" in message and "delete that file" in message


# --------------------------------------------------------------- 12. stdout holds only JSON


def _weights_file(tmp_path: Path) -> str:
    from metric_change_detection.core.demo import offline_weights

    found = offline_weights()
    if found:
        return found
    import torch
    import torchvision

    path = tmp_path / "mobilenet_v2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    return str(path)


def test_torch_download_line_stays_off_stdout(demo, tmp_path, monkeypatch, capfd):
    import torch
    from torchvision.models import _api

    source = _weights_file(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def download(self, *args, **kwargs):  # torchvision's own path, from a local URL
        return torch.hub.load_state_dict_from_url(
            Path(source).as_uri(), file_name="mobilenet_v2-b0353104.pth", progress=False,
            check_hash=False,
        )

    monkeypatch.setattr(_api.WeightsEnum, "get_state_dict", download)
    out = tmp_path / "p.tif"
    code = cli.main([*demo, "-o", str(out), "--preset", "fast", "--backbone", "mobilenet_v2",
                     "--weights", "imagenet", "--iterations", "1", "--device", "cpu", "--quiet"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "Downloading:" in captured.err
    lines = captured.out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["output_path"] == str(out)


# --------------------------------------------------------------- 13. truncated input


def test_truncated_input_names_rows_and_columns(pair, tmp_path, capsys):
    path = Path(raster(tmp_path / "cut.tif", np.random.default_rng(4).random((1, 64, 64))))
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    other = raster(tmp_path / "other.tif", np.random.default_rng(5).random((1, 64, 64)))
    err = run_cli([other, str(path), "-o", str(tmp_path / "p.tif"), *CVA], capsys,
                  needle="rows 0\u201363, columns 0\u201363 of 'cut.tif' failed")
    assert "Window(" not in err


def test_window_messages_name_rows_and_columns(pair):
    from metric_change_detection.core.tiling import Window

    with open_pair(*pair) as opened, pytest.raises(InputError) as caught:
        opened.read(Window(30, 0, 8, 8))
    assert "rows 0\u20137, columns 30\u201337" in str(caught.value)


# --------------------------------------------------------------- 16. thread count


@pytest.fixture()
def torch_threads():
    """Restore torch's thread count after a test that sets it."""
    import torch

    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


@pytest.mark.parametrize("kind", ["identical", "change"])
def test_scene_mode_mask_does_not_depend_on_the_thread_count(tmp_path, capsys, kind,
                                                             torch_threads):
    # 64 x 64 and 5 iterations: with Otsu's decision the identical pair's changed fraction
    # was 0.529 with one thread and 0.556 with two
    from metric_change_detection.core.demo_data import write_demo_pair

    made = write_demo_pair(tmp_path / "pair", size=64, seed=1)
    before, after = (made.before, made.after) if kind == "change" else (made.before, made.before)
    runs = []
    for threads in (1, 2):
        out, mask = tmp_path / f"p{threads}.tif", tmp_path / f"m{threads}.tif"
        assert cli.main([before, after, "-o", str(out), "--mask", str(mask), *METRIC_FAST,
                         "--iterations", "5", "--threads", str(threads)]) == 0
        summary = json.loads(capsys.readouterr().out)
        runs.append((summary["changed_fraction"], gdal.Open(str(mask)).ReadAsArray(),
                     gdal.Open(str(out)).ReadAsArray()))
    (fraction_1, mask_1, p_1), (fraction_2, mask_2, p_2) = runs
    assert fraction_1 == fraction_2 and np.array_equal(mask_1, mask_2)
    assert np.abs(p_1 - p_2).max() < 1e-2  # torch's summation order: rounding, amplified
