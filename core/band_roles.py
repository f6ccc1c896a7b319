"""Which three bands the feature extractor sees when the user names none, chosen by wavelength.

D-FE is an ImageNet network: it wants a colour composite, not whatever the first three bands of
a multispectral file are (Landsat TM's 1-2-3 is blue-green-red, backwards; Sentinel-2's B1-B2-B3
starts with the 60 m aerosol band). When the bands carry their centre wavelengths, the
composite is picked by role: short-wave infrared, near infrared and red first (Landsat TM
5-4-3, Sentinel-2 B11-B8-B4: it separates vegetation, soil, water and built-up land), else
natural colour red-green-blue. Measured in docs/EXPERIMENTS.md.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

#: How the feature extractor's bands are chosen when the user names none: the first three, or
#: by wavelength (falling back to the first three).
RULES = ("first", "wavelength")

#: Centre-wavelength window of each band role, in micrometres (Landsat TM/ETM+/OLI and
#: Sentinel-2 MSI bands all fall inside the window of their role).
ROLES = {
    "blue": (0.43, 0.52),
    "green": (0.52, 0.60),
    "red": (0.62, 0.70),
    "nir": (0.76, 0.90),
    "swir1": (1.55, 1.75),
}

#: Composites in order of preference, each as the roles of the (R, G, B) inputs of D-FE.
COMPOSITES: Tuple[Tuple[str, str, str], ...] = (("swir1", "nir", "red"), ("red", "green", "blue"))


def to_micrometres(value: str, unit: str = "") -> Optional[float]:
    """A wavelength from metadata text in micrometres (nanometres converted), or None.

    Without a unit, values above 100 are taken as nanometres.
    """
    try:
        wavelength = float(value)
    except (TypeError, ValueError):
        return None
    unit = unit.strip().lower()
    if unit.startswith("nano") or unit == "nm" or (not unit and wavelength > 100):
        wavelength /= 1000.0
    return wavelength if wavelength > 0 else None


def composite(wavelengths: Sequence[Optional[float]]) -> Optional[Tuple[Tuple[int, ...], str]]:
    """The preferred composite the bands can form.

    Args:
        wavelengths: Centre wavelength of each band in micrometres (None where unknown).

    Returns:
        0-based positions of the three bands and the composite's name (``"swir1-nir-red"``),
        or None when no composite has a band for each of its roles. Where several bands fit a
        role, the one nearest the middle of its window is taken.
    """
    for roles in COMPOSITES:
        picked = []
        for role in roles:
            low, high = ROLES[role]
            fits = [(abs(w - (low + high) / 2), i) for i, w in enumerate(wavelengths)
                    if w is not None and low <= w <= high]
            if not fits:
                break
            picked.append(min(fits)[1])
        else:
            return tuple(picked), "-".join(roles)
    return None
