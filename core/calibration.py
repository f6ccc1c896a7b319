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

*Feature fusion* adds D-FE's view of change to D-CPG's: the score re-centred is
``z = std(logit) + w * std(log f)``, where ``f`` is the distance between the two dates'
standardised D-FE features (what the loss's feature term measures, averaged over levels) and
``std`` standardises with the sample's mean and deviation. The two rank pixels differently
enough that their sum ranks better than either (see README).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import numpy as np

from .threshold import otsu_threshold

_CLIP = 30.0
_LOG_EPS = 1e-3
# The gate's sigmoid goes from 0.12 at m = 0 to 0.5 at m = g. Any softness gives the same
# mask; 0.25 (0.02 at m = 0) measured 0.01-0.02 lower mean ROC-AUC: it ranks a capped pixel by
# its magnitude alone, while at 0.5 it stays above pixels the score itself calls unchanged.
GATE_SOFTNESS = 0.5


@dataclass(frozen=True)
class Calibrator:
    """Maps logits (and difference magnitudes, with a gate) to change probabilities.

    ``centre``/``scale`` re-centre the score (0 and 1 leave it as it is); ``gate`` is the
    magnitude below which a pixel cannot reach 0.5 (None: no gate); ``fusion`` weighs the
    feature change ``f`` into the score, the logit and ``log f`` first standardised with
    ``logit_stats`` and ``feature_stats`` (mean, deviation). NaN stays NaN.
    """

    centre: float = 0.0
    scale: float = 1.0
    gate: Optional[float] = None
    fusion: float = 0.0
    logit_stats: Tuple[float, float] = (0.0, 1.0)
    feature_stats: Tuple[float, float] = (0.0, 1.0)

    def score(self, logits: np.ndarray, feature_change: Optional[np.ndarray] = None) -> np.ndarray:
        """The score before re-centring: the logit, or its fusion with the feature change."""
        z = (np.clip(logits.astype(np.float64), -_CLIP, _CLIP) - self.logit_stats[0]) / (
            self.logit_stats[1]
        )
        if self.fusion:
            if feature_change is None:
                raise ValueError("This calibrator fuses the feature change; pass it.")
            f = np.log(feature_change.astype(np.float64) + _LOG_EPS)
            z = z + self.fusion * (f - self.feature_stats[0]) / self.feature_stats[1]
        return z

    def __call__(
        self,
        logits: np.ndarray,
        magnitude: Optional[np.ndarray] = None,
        feature_change: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        z = (self.score(logits, feature_change) - self.centre) / self.scale
        if self.gate is not None:
            if magnitude is None:
                raise ValueError("This calibrator gates on the difference magnitude; pass it.")
            z = np.minimum(z, (magnitude - self.gate) / (self.gate * GATE_SOFTNESS))
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def _otsu(values: np.ndarray) -> float:
    return otsu_threshold(values, bins=1024, value_range=(float(values.min()), float(values.max())))


def _stats(values: np.ndarray) -> Tuple[float, float]:
    return float(values.mean()), max(float(values.std()), 1e-6)


def fit_calibrator(
    logits: np.ndarray,
    magnitude: Optional[np.ndarray] = None,
    gate: float = 0.0,
    centre_on_otsu: bool = True,
    feature_change: Optional[np.ndarray] = None,
    fusion: float = 0.0,
) -> Calibrator:
    """Fit on sample ``logits`` (and the same pixels' ``magnitude`` and ``feature_change``).

    ``fusion`` > 0 adds that weight of the standardised log feature change to the standardised
    logit; ``centre_on_otsu`` centres on Otsu's threshold of the finite score; ``gate`` > 0
    sets the gate at that fraction of Otsu's threshold on ``magnitude``.
    """
    fused = Calibrator()
    if fusion > 0:
        if feature_change is None:
            raise ValueError("Feature fusion needs the feature change of the sample pixels.")
        ok = np.isfinite(logits) & np.isfinite(feature_change)
        fused = Calibrator(
            fusion=fusion,
            logit_stats=_stats(np.clip(logits[ok].astype(np.float64), -_CLIP, _CLIP)),
            feature_stats=_stats(np.log(feature_change[ok].astype(np.float64) + _LOG_EPS)),
        )
    centre, scale = 0.0, 1.0
    z = fused.score(logits, feature_change)
    z = z[np.isfinite(z)]
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
    return replace(fused, centre=float(centre), scale=float(scale), gate=threshold)
