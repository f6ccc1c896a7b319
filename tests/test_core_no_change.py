"""Nothing is marked where nothing changed; a planted change is still found; the run says so.

Pairs without change are made from shared images as the benchmark makes them
(``bench.datasets.no_change``): an identical copy and a radiometric shift plus noise, on RGB
(OSCD Las Vegas, SZTAKI Szada 1) and SAR (Ottawa) crops; every method goes through its real
raster pipeline with the automatic decision. A blurred, noisier copy (a softer acquisition) is
left unmarked by every method through the decision's sharpness hypotheses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, gdal_array

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metric_change_detection.core.baseline_pipeline import detect_change_baseline  # noqa: E402
from metric_change_detection.core.cli import main  # noqa: E402
from metric_change_detection.core.config import MetricCDConfig, PipelineOptions  # noqa: E402
from metric_change_detection.core.demo import offline_weights  # noqa: E402
from metric_change_detection.core.pipeline import detect_change  # noqa: E402

from bench import datasets  # noqa: E402

METHODS = ("metric-cd", "cva", "pcakmeans", "irmad")
CROP = 128


def _save(path: Path, array: np.ndarray) -> str:
    gdal_array.SaveArray(np.ascontiguousarray(array, np.float32), str(path), "GTiff")
    return str(path)


def _run(method: str, before: str, after: str, out: Path, progress=None, sharpness=None,
         **options):
    """One run with the automatic decision (``sharpness``: the blur it allows; None: default)."""
    opts = PipelineOptions(**options)
    allow = {} if sharpness is None else {"sharpness": sharpness}
    if method == "metric-cd":
        config = MetricCDConfig.preset("default", weights=offline_weights() or "random",
                                       iterations=10, **{f"gate_{k}": v for k, v in allow.items()})
        return detect_change(before, after, str(out), config=config, options=opts,
                             progress=progress)
    return detect_change_baseline(method, before, after, str(out), options=opts,
                                  method_options=allow, progress=progress)


def _crops(tmp_path: Path, name: str, size: int = CROP):
    source = name.split("/", 2)[2]
    if not datasets.available(source):
        pytest.skip(f"shared data for {source} not found under {datasets.data_root()}")
    pair = datasets.no_change(name)
    h, w = pair.change.shape
    window = np.s_[:, (h - size) // 2:(h + size) // 2, (w - size) // 2:(w + size) // 2]
    return _save(tmp_path / "b.tif", pair.before[window]), _save(tmp_path / "a.tif", pair.after[window])


@pytest.mark.parametrize("kind", ["identical", "shift-noise"])
@pytest.mark.parametrize("source", datasets.NO_CHANGE_SOURCES)
@pytest.mark.parametrize("method", METHODS)
def test_a_pair_without_change_is_left_unmarked(tmp_path, method, source, kind):
    before, after = _crops(tmp_path, f"nochange/{kind}/{source}")
    result = _run(method, before, after, tmp_path / "p.tif", mask_path=str(tmp_path / "m.tif"))
    limit = 0.0 if kind == "identical" else 0.01
    assert result.changed_fraction <= limit
    mask = gdal.Open(str(tmp_path / "m.tif")).ReadAsArray()
    assert (mask == 1).mean() == pytest.approx(result.changed_fraction)
    if kind == "identical":
        assert result.verdict.startswith("No significant change")


@pytest.mark.parametrize("source", datasets.NO_CHANGE_SOURCES)
@pytest.mark.parametrize("method", METHODS)
def test_a_blurred_noisier_copy_is_left_unmarked(tmp_path, method, source):
    """A softer acquisition reads as change along every edge unless the test allows for it."""
    before, after = _crops(tmp_path, f"nochange/blur-noise/{source}", size=192)
    log = []
    marked = [_run(method, before, after, tmp_path / f"p{sharpness}.tif", sharpness=sharpness,
                   progress=lambda pct, msg: log.append(msg)).changed_fraction
              for sharpness in (0.0, 1.0)]
    assert marked[1] <= 0.01 < marked[0]
    assert "The before image is sharper than the after image" in " ".join(log)


@pytest.mark.parametrize("method", METHODS)
def test_a_planted_change_is_still_found(demo_pair, tmp_path, method):
    result = _run(method, demo_pair.before, demo_pair.after, tmp_path / "p.tif",
                  mask_path=str(tmp_path / "m.tif"))
    mask = gdal.Open(str(tmp_path / "m.tif")).ReadAsArray() == 1
    truth = gdal.Open(demo_pair.truth).ReadAsArray() > 0
    f1 = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert mask[truth].mean() > 0.8 and f1 > 0.5
    assert "% of the valid pixels are marked changed" in result.verdict


@pytest.mark.parametrize("with_mask", [False, True])
def test_summary_and_mask_agree_on_an_identical_pair(demo_pair, tmp_path, capsys, with_mask):
    """PCA-KMeans once reported 1.0 without a mask and 0.0 with one."""
    args = [demo_pair.before, demo_pair.before, "-o", str(tmp_path / "s.tif"),
            "--method", "pcakmeans", "--quiet"]
    if with_mask:
        args += ["--mask", str(tmp_path / "m.tif")]
    assert main(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["changed_fraction"] == 0.0
    assert summary["verdict"].startswith("No significant change")
    assert "No significant change" in captured.err
