"""Similarity-dissimilarity loss terms of Metric-CD (see ``shared/METHOD.md``).

Every domain term compares the two dates through a per-pixel *distance map*
``d = mean_c |A - B|``: since the soft masks are non-negative,
``L1(S*A, S*B) = mean(S * d)``, so a term is ``mean(Sn*d) - mean(Sc*d)``. When D-FE is frozen
the distance maps are constant, which lets the engine compute them once per tile.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

EPS = 1e-5


def standardise(features: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per channel over space (N, C, H, W)."""
    mean = features.mean(dim=(2, 3), keepdim=True)
    std = features.std(dim=(2, 3), keepdim=True)
    return (features - mean) / (std + EPS)


def distance_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over channels, (N, 1, H, W)."""
    return (a - b).abs().mean(dim=1, keepdim=True)


def feature_distances(
    features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Distance maps between standardised features, one per level."""
    return [distance_map(standardise(a), standardise(b)) for a, b in zip(features_a, features_b)]


def soft_masks(pc: torch.Tensor, valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
    """Hard-masked change / no-change maps ``Sc = Pc*[Pc>Pnc]``, ``Sn = Pnc*[Pc<Pnc]``.

    The hard masks come from the detached map (gradient flows through Pc only where a mask is
    on); invalid pixels are zero in both.
    """
    hard = pc.detach()
    mc = (hard > 0.5).to(pc.dtype)
    mn = (hard < 0.5).to(pc.dtype)
    if valid is not None:
        mc, mn = mc * valid, mn * valid
    return pc * mc, (1.0 - pc) * mn


def similarity_dissimilarity(
    sc: torch.Tensor, sn: torch.Tensor, distance: torch.Tensor
) -> torch.Tensor:
    """``L1(Sn*A, Sn*B) - L1(Sc*A, Sc*B)``, masks resized (nearest) to the distance map."""
    if sc.shape[-2:] != distance.shape[-2:]:
        sc = F.interpolate(sc, size=distance.shape[-2:], mode="nearest")
        sn = F.interpolate(sn, size=distance.shape[-2:], mode="nearest")
    return (sn * distance).mean() - (sc * distance).mean()


def infonce(sc: torch.Tensor, sn: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The demo's InfoNCE-style term ``log softmax(a) - log softmax(b) = (a - b) / tau``.

    ``a = mean(Sc^2)``, ``b = mean(Sn^2)``: a prior favouring no-change mass over change mass.
    """
    return (sc.pow(2).mean() - sn.pow(2).mean()) / temperature


def consistency(
    features: Sequence[torch.Tensor], jittered: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Augmentation consistency: sum over levels of L1(f(T), f(jitter(T)))."""
    return sum((a - b).abs().mean() for a, b in zip(features, jittered))
