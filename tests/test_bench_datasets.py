"""The shared labelled datasets load on one grid with plausible labels (skipped without the data)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import datasets  # noqa: E402

# (min, max) changed fraction of the labelled pixels
EXPECTED = {
    "oscd/lasvegas": (0.05, 0.10),
    "oscd/bercy-13band": (0.003, 0.02),
    "oscd/bercy-rgb": (0.003, 0.02),
    "oscd/abudhabi": (0.01, 0.05),
    "oscd/beihai": (0.01, 0.05),
    "oscd/hongkong": (0.01, 0.05),
    "oscd/mumbai": (0.01, 0.05),
    "oscd/pisa": (0.01, 0.05),
    "oscd/nantes": (0.005, 0.02),
    "oscd/nantes-13band": (0.005, 0.02),
    "sztaki/Szada_1": (0.02, 0.06),
    "sztaki/Szada_2": (0.02, 0.10),
    "sztaki/Szada_3": (0.01, 0.05),
    "sztaki/Szada_4": (0.02, 0.10),
    "sztaki/Tiszadob_1": (0.0005, 0.01),
    "sztaki/Tiszadob_2": (0.02, 0.10),
    "sar_ottawa": (0.10, 0.20),
    "sar_yellowriver": (0.10, 0.25),
    "sar_sanfrancisco": (0.03, 0.12),
    "landsat_taizhou": (0.10, 0.30),
    "levircd/test_2_0000_0000": (0.15, 0.35),
    "levircd/test_7_0256_0512": (0.08, 0.20),
    "levircd/train_386_0512_0768": (0.0, 0.0),
    "levircd/test_102_0512_0000": (0.1, 0.3),
    "levircd/test_121_0768_0256": (0.1, 0.3),
    "levircd/test_55_0256_0000": (0.05, 0.2),
    "dsifn/0_2": (0.05, 0.15),
    "dsifn/1_1": (0.05, 0.2),
    "dsifn/2_4": (0.15, 0.3),
    "dsifn/4_4": (0.55, 0.75),
}


def test_names_cover_expected():
    assert set(datasets.NAMES) == set(EXPECTED)


@pytest.mark.parametrize("name", datasets.NAMES)
def test_dataset_loads(name):
    if not datasets.available(name):
        pytest.skip(f"shared data for {name} not found under {datasets.data_root()}")
    ds = datasets.load(name)
    assert ds.name == name
    assert ds.before.dtype == np.float32 and ds.after.dtype == np.float32
    assert ds.before.ndim == 3 and ds.before.shape == ds.after.shape
    assert ds.change.dtype == bool and ds.labelled.dtype == bool
    assert ds.change.shape == ds.labelled.shape == ds.before.shape[1:]
    assert np.isfinite(ds.before).all() and np.isfinite(ds.after).all()
    assert not (ds.change & ~ds.labelled).any()
    lo, hi = EXPECTED[name]
    assert lo <= ds.changed_fraction <= hi
    bands = 13 if name.endswith("-13band") else 6 if name == "landsat_taizhou" else (
        1 if datasets.group(name) == "SAR" else 3)
    assert ds.before.shape[0] == bands
    if name == "landsat_taizhou":
        assert 0.05 < ds.labelled.mean() < 0.5  # sparse labels
    else:
        assert ds.labelled.all()
    # centre wavelengths (micrometres) where the product records them: ENVI header, Sentinel-2
    red = (3, 0.665) if name.endswith("-13band") else {"landsat_taizhou": (2, 0.66)}.get(name)
    if red is None:
        assert ds.wavelengths is None
    else:
        assert len(ds.wavelengths) == bands and ds.wavelengths[red[0]] == red[1]


def test_bercy_13band_matches_rgb_grid():
    if not (datasets.available("oscd/bercy-13band") and datasets.available("oscd/bercy-rgb")):
        pytest.skip("bercy data not found")
    full, rgb = datasets.load("oscd/bercy-13band"), datasets.load("oscd/bercy-rgb")
    assert full.change.shape == rgb.change.shape
    np.testing.assert_array_equal(full.change, rgb.change)
    red = datasets.S2_BANDS.index("B04")
    r = np.corrcoef(full.before[red].ravel(), rgb.before[0].ravel())[0, 1]
    assert r > 0.95  # same orientation as the RGB png
    b05 = full.before[datasets.S2_BANDS.index("B05")]  # 20 m band resampled onto the 10 m grid
    assert np.corrcoef(b05.ravel(), full.before[red].ravel())[0, 1] > 0.5


def test_groups_cover_every_kind():
    assert {datasets.group(n) for n in datasets.NAMES} == set(datasets.GROUPS)
    assert datasets.group("oscd/nantes-13band") == "OSCD 13-band"
    assert datasets.group("sar_yellowriver") == "SAR"


@pytest.mark.parametrize("kind", datasets.NO_CHANGE_KINDS)
def test_pairs_without_change_are_made_from_the_before_image(kind):
    source = "sar_ottawa"
    if not datasets.available(source):
        pytest.skip(f"shared data for {source} not found under {datasets.data_root()}")
    pair, original = datasets.load(f"nochange/{kind}/{source}"), datasets.load(source)
    np.testing.assert_array_equal(pair.before, original.before)
    assert not pair.change.any() and pair.labelled.all()
    difference = np.abs(pair.after - pair.before)
    assert (difference.max() == 0) == (kind == "identical")
    if kind == "shift-noise":  # 0.9 x + 12 + N(0, 4)
        residual = pair.after - (0.9 * pair.before + 12)
        assert abs(residual.mean()) < 0.5 and 3.5 < residual.std() < 4.5


def test_unknown_name():
    with pytest.raises(ValueError, match="Unknown dataset"):
        datasets.load("nope")
