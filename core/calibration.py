"""Metric-CD's change probability: D-CPG's score, tested against an empirical null.

The published loss ranks pixels well, but its sigmoid output means little: the loss keeps a
change mode of roughly a tenth of the pixels whatever really changed, so its "probability" is
high on pairs where nothing changed. The map is therefore rebuilt from two scores, each
standardised against its own no-change law by :mod:`.decision`:

* the *network score* ``s = std(logit) + fusion * std(log f)``: D-CPG's logit fused with D-FE's
  feature change ``f`` (the distance between the dates' standardised features, what the loss's
  feature term measures), each standardised with the sample's mean and deviation; the two
  rank pixels differently enough that their sum ranks better than either (docs/HOW_IT_WORKS.md);
* the *spectral evidence*: the magnitude of the pixel's difference vector (what CVA tests),
  under the *sharpness hypotheses* the pair supports: as it is, and with the sharper date
  blurred by about a pixel (:meth:`.preprocess.Scaling.evidence`), admitted only where
  blurring that date brings the two dates closer (a smaller median magnitude) than leaving
  them as they are or blurring the other date. A pixel is evidence of change only if no
  admitted difference in sharpness between the acquisitions explains it: ``z_ev`` is the
  smallest of the admitted hypotheses' standardised scores, each against its own null (a
  composite null is tested by the least significant of its members). A blurred, noisier copy
  of an image marked 4.7-9 % with the plain difference alone (docs/DECISION.md).

With the evidence gate on, the pixel's standardised score is ``min(z_net, z_ev)``, so a pixel
passes the test at false-alarm rate ``alpha`` only where the network's score is significant
*and* the difference itself is: an intersection of two tests, whose false-alarm rate is at most
``alpha`` whatever the network does on a pair without change. The probability is the posterior
``1 - lfdr`` of that score (:func:`.decision.fit_posterior`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .decision import (
    NullModel,
    admitted_views,
    describe_sharpness,
    fit_null,
    fit_posterior,
    least_significant,
    posterior_of_z,
    z_critical,
)

_CLIP = 30.0
_LOG_EPS = 1e-3


@dataclass(frozen=True)
class Calibrator:
    """Maps logits (with the difference magnitude and the feature change) to probabilities.

    ``network`` is the null model of the network score, ``evidence`` those of the magnitude
    under each sharpness hypothesis (None: no gate); ``posterior`` is the probability of change
    on :data:`.decision._Z_GRID`.
    """

    network: NullModel = NullModel()
    evidence: Optional[Tuple[NullModel, ...]] = None
    posterior: Tuple[float, ...] = ()
    fusion: float = 0.0
    logit_stats: Tuple[float, float] = (0.0, 1.0)
    feature_stats: Tuple[float, float] = (0.0, 1.0)
    views: Tuple[int, ...] = (0,)  # the admitted hypotheses: rows of the magnitude, one per null

    def score(self, logits: np.ndarray, feature_change: Optional[np.ndarray] = None) -> np.ndarray:
        """The network score: the standardised logit, fused with the feature change."""
        z = (np.clip(logits.astype(np.float64), -_CLIP, _CLIP) - self.logit_stats[0]) / (
            self.logit_stats[1]
        )
        if self.fusion:
            if feature_change is None:
                raise ValueError("This calibrator fuses the feature change; pass it.")
            f = np.log(feature_change.astype(np.float64) + _LOG_EPS)
            z = z + self.fusion * (f - self.feature_stats[0]) / self.feature_stats[1]
        return z

    def z(
        self,
        logits: np.ndarray,
        magnitude: Optional[np.ndarray] = None,
        feature_change: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        """The pixel's standardised score under no change (the gate's minimum, when on).

        ``magnitude``: (K, ...) one magnitude per sharpness hypothesis (the whole family, or
        only the admitted ones, :attr:`views`, in order), or (...) for K = 1.
        """
        z = self.network.z(self.score(logits, feature_change))
        if self.evidence is not None:
            if magnitude is None:
                raise ValueError("This calibrator gates on the difference magnitude; pass it.")
            views = _views(magnitude, logits)
            if len(views) != len(self.views):
                views = views[list(self.views)]
            z = least_significant([z] + [null.z(m) for null, m in zip(self.evidence, views)],
                                  [0.0] * (1 + len(self.evidence)))
        return z

    def __call__(
        self,
        logits: np.ndarray,
        magnitude: Optional[np.ndarray] = None,
        feature_change: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        return posterior_of_z(self.z(logits, magnitude, feature_change), self.posterior)

    def describe_sharpness(self, sharpness: float) -> Optional[str]:
        """The admitted sharpness hypothesis in words, for the log (None: none admitted)."""
        return None if self.evidence is None else describe_sharpness(self.views, sharpness)

    def threshold(self, alpha: float) -> float:
        """The probability above which a pixel is changed at false-alarm rate ``alpha``."""
        return float(posterior_of_z(np.array([z_critical(alpha)]), self.posterior)[0])


def _views(magnitude: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``magnitude`` as (K, ...) beside arrays shaped like ``like``."""
    return magnitude if magnitude.ndim > like.ndim else magnitude[None]


def _stats(values: np.ndarray) -> Tuple[float, float]:
    return float(values.mean()), max(float(values.std()), 1e-6)


def fit_calibrator(
    logits: np.ndarray,
    magnitude: Optional[np.ndarray] = None,
    gate: bool = False,
    feature_change: Optional[np.ndarray] = None,
    fusion: float = 0.0,
) -> Calibrator:
    """Fit on sample ``logits`` (and the same pixels' ``magnitude`` and ``feature_change``).

    ``fusion`` > 0 adds that weight of the standardised log feature change to the standardised
    logit; ``gate`` requires the magnitude to be significant too, under every sharpness
    hypothesis (``magnitude`` (K, N): one row per hypothesis, or (N,)).
    """
    ok = np.isfinite(logits)
    stats = {}
    if fusion > 0:
        if feature_change is None:
            raise ValueError("Feature fusion needs the feature change of the sample pixels.")
        ok &= np.isfinite(feature_change)
        stats = {
            "fusion": fusion,
            "logit_stats": _stats(np.clip(logits[ok].astype(np.float64), -_CLIP, _CLIP)),
            "feature_stats": _stats(np.log(feature_change[ok].astype(np.float64) + _LOG_EPS)),
        }
    base = Calibrator(**stats)
    network = fit_null(base.score(logits, feature_change)[ok], "real")
    evidence = None
    if gate:
        if magnitude is None:
            raise ValueError("A gate needs the difference magnitude of the sample pixels.")
        views = _views(magnitude, logits)
        ok &= np.isfinite(views).all(axis=0)
        magnitude = views[:, ok]
        stats["views"] = admitted_views(magnitude)
        evidence = tuple(fit_null(magnitude[row], "magnitude") for row in stats["views"])
    fitted = Calibrator(network, evidence, (), **stats)
    z = fitted.z(logits[ok], magnitude, None if feature_change is None else feature_change[ok])
    spread = network.spread > 0 and (evidence is None or all(e.spread > 0 for e in evidence))
    posterior = fit_posterior(z, 1.0) if spread else ()
    return Calibrator(network, evidence, posterior, **stats)
