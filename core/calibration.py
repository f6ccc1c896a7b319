"""Label-free calibration of D-CPG's change score.

The published loss ranks pixels well but its sigmoid output is mis-calibrated: far more than
half of the pixels can sit above 0.5, and the best threshold (found only with labels) sits
near 0.99. Measured on the shared labelled data (see README), Otsu's threshold computed on the
*logit* of the score separates the two populations far better than Otsu on the probability.
:class:`Calibrator` re-centres the map there, ``p = sigmoid((z - z_otsu) / s)`` with ``s``
half the logits' standard deviation, so the ranking is unchanged and 0.5 is the decision
boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .threshold import otsu_threshold

_CLIP = 30.0


@dataclass(frozen=True)
class Calibrator:
    """Maps logits to calibrated change probabilities (NaN stays NaN)."""

    centre: float
    scale: float

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        z = (np.clip(logits.astype(np.float64), -_CLIP, _CLIP) - self.centre) / self.scale
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def fit_calibrator(logits: np.ndarray) -> Calibrator:
    """Centre on Otsu's threshold of the finite, clipped ``logits``."""
    z = np.clip(logits[np.isfinite(logits)].astype(np.float64), -_CLIP, _CLIP)
    if z.size == 0 or np.ptp(z) == 0:
        return Calibrator(float(z.mean()) if z.size else 0.0, 1.0)
    centre = otsu_threshold(z, bins=1024, value_range=(float(z.min()), float(z.max())))
    return Calibrator(float(centre), max(float(z.std()) / 2.0, 1e-3))
