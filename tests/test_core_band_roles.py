"""Choosing the feature extractor's composite from band wavelengths."""

from __future__ import annotations

import pytest
from metric_change_detection.core.band_roles import composite, to_micrometres

TM = (0.4825, 0.565, 0.66, 0.825, 1.65, 2.22)
OLI = (0.443, 0.482, 0.561, 0.655, 0.865, 1.609, 2.201)  # Landsat 8 bands 1-7
S2 = (0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.375, 1.610, 2.190)


def test_short_wave_infrared_composite_first():
    assert composite(TM) == ((4, 3, 2), "swir1-nir-red")  # Landsat TM 5-4-3
    assert composite(S2) == ((11, 7, 3), "swir1-nir-red")  # B11-B8-B4: B8 nearer the NIR centre
    assert composite(OLI) == ((5, 4, 3), "swir1-nir-red")  # Landsat 8 6-5-4


def test_natural_colour_without_infrared():
    assert composite(TM[:3]) == ((2, 1, 0), "red-green-blue")
    assert composite(OLI[:5]) == ((3, 2, 1), "red-green-blue")  # the blue band, not the coastal one
    assert composite((0.66, None, 0.565, 0.4825)) == ((0, 2, 3), "red-green-blue")


@pytest.mark.parametrize("wavelengths", [(), (None, None, None), (0.66, 0.565), (0.825, 1.65, 2.22)])
def test_no_composite(wavelengths):
    assert composite(wavelengths) is None


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [("0.66", "Micrometers", 0.66), ("665", "nm", 0.665), ("665", "Nanometers", 0.665),
     ("1.61", "um", 1.61), ("842", "", 0.842), ("0.842", "", 0.842)],
)
def test_units(value, unit, expected):
    assert to_micrometres(value, unit) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["", "n/a", "-1", "0"])
def test_unreadable_wavelength(value):
    assert to_micrometres(value) is None
