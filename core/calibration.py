"""Label-free calibration of D-CPG's change score.

The published loss ranks pixels well but its sigmoid output is mis-calibrated: far more than
half of the pixels can sit above 0.5, and the best threshold (found only with labels) sits
near 0.99. Measured on the shared labelled data (see README), Otsu's threshold computed on the
*logit* of the score separates the two populations far better than Otsu on the probability.
:class:`Calibrator` re-centres the map there, ``p = sigmoid((z - z_otsu) / s)`` with ``s``
half the logits' standard deviation, so the ranking is unchanged and 0.5 is the decision
boundary.

The optimisation marks a change mode of roughly a tenth of the pixels whatever the true
fraction, so where change is rare it also marks pixels whose spectra barely differ. The
*evidence gate* caps the probability below 0.5 where the magnitude ``m`` of the pixel's
difference vector (what CVA thresholds) is under ``g``, a fraction of Otsu's threshold on
``m``: ``p = sigmoid(min(z', (m - g) / (g * GATE_SOFTNESS)))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .threshold import otsu_threshold

_CLIP = 30.0
GATE_SOFTNESS = 0.25  # the gate's sigmoid goes from 0.02 at m = 0 to 0.5 at m = g


@dataclass(frozen=True)
class Calibrator:
    """Maps logits (and difference magnitudes, with a gate) to change probabilities.

    ``centre``/``scale`` re-centre the logits (0 and 1 leave them as they are); ``gate`` is
    the magnitude below which a pixel cannot reach 0.5 (None: no gate). NaN stays NaN.
    """

    centre: float = 0.0
    scale: float = 1.0
    gate: Optional[float] = None

    def __call__(self, logits: np.ndarray, magnitude: Optional[np.ndarray] = None) -> np.ndarray:
        z = (np.clip(logits.astype(np.float64), -_CLIP, _CLIP) - self.centre) / self.scale
        if self.gate is not None:
            if magnitude is None:
                raise ValueError("This calibrator gates on the difference magnitude; pass it.")
            z = np.minimum(z, (magnitude - self.gate) / (self.gate * GATE_SOFTNESS))
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def _otsu(values: np.ndarray) -> float:
    return otsu_threshold(values, bins=1024, value_range=(float(values.min()), float(values.max())))


def fit_calibrator(
    logits: np.ndarray,
    magnitude: Optional[np.ndarray] = None,
    gate: float = 0.0,
    centre_on_otsu: bool = True,
) -> Calibrator:
    """Fit on sample ``logits`` (and the same pixels' difference ``magnitude``).

    ``centre_on_otsu`` centres on Otsu's threshold of the finite, clipped logits; ``gate`` > 0
    sets the gate at that fraction of Otsu's threshold on ``magnitude``.
    """
    centre, scale = 0.0, 1.0
    z = np.clip(logits[np.isfinite(logits)].astype(np.float64), -_CLIP, _CLIP)
    if centre_on_otsu and z.size:
        centre = float(z.mean())
        if np.ptp(z) > 0:
            centre, scale = _otsu(z), max(float(z.std()) / 2.0, 1e-3)
    threshold = None
    if gate > 0:
        if magnitude is None:
            raise ValueError("A gate needs the difference magnitude of the sample pixels.")
        m = magnitude[np.isfinite(logits) & np.isfinite(magnitude)].astype(np.float64)
        if m.size and np.ptp(m) > 0:
            threshold = max(gate * _otsu(m), 1e-6)
    return Calibrator(float(centre), float(scale), threshold)
