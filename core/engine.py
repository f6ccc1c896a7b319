"""Per-pair Metric-CD optimisation: D-CPG trained at test time with no labels.

:class:`Engine` is the reusable piece (prepare tiles, fit on some, predict any);
:func:`fit_predict` runs the whole method on one pair of arrays.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import losses, timing
from .calibration import Calibrator, fit_calibrator
from .config import MetricCDConfig
from .errors import Cancelled, InputError
from .models import DCPG, FeatureExtractor, fold_batchnorm, in_blocks, select_device
from .preprocess import fit_scaling

log = logging.getLogger(__name__)
#: Side of the pieces D-CPG's inference runs on, on a CPU (:func:`.models.in_blocks`): a
#: 536-pixel tile (512 + overlap) took 142 ms in 256-pixel pieces against 189 ms whole (192:
#: 139 ms, 128: 175 ms); the activations of a whole tile do not stay in the cache.
CPU_BLOCK = 256

Progress = Callable[[float, str], None]
IsCancelled = Callable[[], bool]
TERMS = ("image", "feature", "augmented", "consistency", "infonce", "total")
LOSS_EVERY = 5  # iterations between loss values in the progress text
MIN_SIZE = 32


@dataclass
class Tile:
    """One prepared pair on the engine's device (batch dimension 1)."""

    diff: torch.Tensor  # |T1 - T2|, (1, C, H, W)
    valid: torch.Tensor  # (1, 1, H, W) float
    image_distance: torch.Tensor  # (1, 1, H, W)
    fe_before: torch.Tensor  # (1, 3, H, W) in [0, 1]
    fe_after: torch.Tensor
    magnitude: Optional[np.ndarray] = None  # (K, H, W) change-vector magnitudes, for the gate
    feature_change: Optional[np.ndarray] = None  # (H, W) D-FE's change, for feature fusion
    feature_distances: List[torch.Tensor] = field(default_factory=list)
    augmented_bank: List[List[torch.Tensor]] = field(default_factory=list)
    consistency_bank: List[float] = field(default_factory=list)
    # A prediction tile at a reduced scale: the (H, W) of the map and its invalid pixels there
    size: Optional[Tuple[int, int]] = None
    invalid: Optional[np.ndarray] = None


@dataclass
class EngineResult:
    """Output of :func:`fit_predict`."""

    probability: np.ndarray  # (H, W) float32, NaN where invalid
    history: Dict[str, List[float]]
    seconds: float
    device: str
    calibrator: Optional[Calibrator] = None


def _check_callbacks(progress: Optional[Progress], is_cancelled: Optional[IsCancelled]):
    return progress or (lambda pct, msg: None), is_cancelled or (lambda: False)


def as_fe_input(x: np.ndarray) -> np.ndarray:
    """Three bands for D-FE: the first three, or the only one replicated."""
    if x.shape[0] >= 3:
        return x[:3]
    return np.repeat(x[:1], 3, axis=0)


class Engine:
    """D-CPG, D-FE and their optimisation for one configuration."""

    def __init__(self, config: MetricCDConfig, in_channels: int) -> None:
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = select_device(config.device)
        self.in_channels = in_channels
        torch.manual_seed(config.seed)
        self.fe = FeatureExtractor(
            config.backbone, config.weights, config.fe_levels, config.imagenet_normalise
        ).to(self.device)
        self.fe.requires_grad_(config.train_fe)
        self.fe.eval()
        self._fe_initial = (
            {k: v.clone() for k, v in self.fe.state_dict().items()} if config.train_fe else None
        )
        # A frozen D-FE runs with batch-norm folded in, channels-last: 1.6x faster on CPU.
        self._fe_frozen = None if config.train_fe else fold_batchnorm(self.fe)
        self.reset()

    def _features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """D-FE's levels of ``x`` without gradients (the folded net when D-FE is frozen)."""
        if self._fe_frozen is None:
            return self.fe(x)
        return self._fe_frozen(x.contiguous(memory_format=torch.channels_last))

    def reset(self) -> None:
        """A freshly initialised (seeded) D-CPG, and D-FE as loaded, for the next pair."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        # Channels-last: the same convolutions, about 15 % faster on CPU (oneDNN) and GPU.
        self.dcpg = DCPG(self.in_channels, cfg.width, cfg.depth, cfg.ensemble).to(
            self.device, memory_format=torch.channels_last
        )
        if self._fe_initial is not None:
            self.fe.load_state_dict(self._fe_initial)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.calibrator: Optional[Calibrator] = None
        self._folded: Tuple[Tuple[int, ...], Optional[torch.nn.Module]] = ((), None)

    def _inference_net(self) -> torch.nn.Module:
        """D-CPG with batch-norm folded into its convolutions (eval mode), rebuilt whenever its
        weights or statistics changed (training, or a state loaded into ``dcpg``)."""
        versions = tuple(t._version for t in self.dcpg.state_dict().values())
        if self._folded[0] != versions or self._folded[1] is None:
            self._folded = (versions, fold_batchnorm(self.dcpg))
        return self._folded[1]

    # ------------------------------------------------------------------ preparation
    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)

    def jitter(self, x: torch.Tensor) -> torch.Tensor:
        """Random brightness, contrast and saturation change of a (1, 3, H, W) image."""
        s = self.config.jitter
        b, c, sat = (1.0 + (torch.rand(3, generator=self.generator) * 2 - 1) * s).tolist()
        x = x * b
        gray = x.mean(dim=1, keepdim=True)
        x = (x - gray.mean()) * c + gray.mean()
        gray = x.mean(dim=1, keepdim=True)
        x = gray + (x - gray) * sat
        return x.clamp(0.0, 1.0)

    def prepare(
        self,
        before: np.ndarray,
        after: np.ndarray,
        fe_before: np.ndarray,
        fe_after: np.ndarray,
        valid: np.ndarray,
        scale: float = 1.0,
        training: bool = True,
        magnitude: Optional[np.ndarray] = None,
        reuse: Optional[Tile] = None,
    ) -> Tile:
        """Move a scaled pair (values in [0, 1]) to the device and pre-compute constant terms.

        ``training=False`` prepares a tile for prediction only (no D-FE features needed).
        ``magnitude`` (:meth:`Scaling.evidence` of the raw pair) is needed with a gate; with
        feature fusion the tile also gets D-FE's change map (:meth:`feature_change`), taken from
        ``reuse`` (this pair's training tile) when given.
        """
        if self.config.gate > 0 and magnitude is None:
            raise InputError(
                "The evidence gate needs the change-vector magnitude of the tile: pass "
                "magnitude=Scaling.evidence(raw before, raw after, valid), or set gate=0."
            )
        size = tuple(valid.shape[-2:])
        if not training and self.config.predict_at_train_scale:
            scale = self.config.train_scale
        t1, t2 = self._tensor(before), self._tensor(after)
        f1, f2 = self._tensor(as_fe_input(fe_before)), self._tensor(as_fe_input(fe_after))
        v = self._tensor(valid.astype(np.float32)[None])
        full = f1, f2
        if scale < 1.0:
            t1, t2, f1, f2 = (_shrink(t, scale) for t in (t1, t2, f1, f2))
            v = (_shrink(v, scale) > 0.999).float()
        if magnitude is not None and scale < 1.0 and training:
            m = _shrink(torch.from_numpy(magnitude)[None], scale)
            magnitude = m[0].numpy()
        diff = (t1 - t2).abs().contiguous(memory_format=torch.channels_last)
        tile = Tile(diff, v, diff.mean(dim=1, keepdim=True), f1, f2, magnitude)
        if not training and scale < 1.0:  # the map is predicted coarse, then brought to full size
            tile.size, tile.invalid = size, ~valid.astype(bool)
        if training and not self.config.train_fe:
            with torch.no_grad():
                feats1, feats2 = self._features(f1), self._features(f2)
                tile.feature_distances = losses.feature_distances(feats1, feats2)
                if self.config.augmentation != "off":
                    bank = max(self.config.augmentation_bank, 1)
                    for _ in range(bank):
                        j1, j2 = self._features(self.jitter(f1)), self._features(self.jitter(f2))
                        if self.config.augmentation == "intended":
                            tile.augmented_bank.append(losses.feature_distances(j1, j2))
                        tile.consistency_bank.append(
                            float(losses.consistency(feats1, j1) + losses.consistency(feats2, j2))
                        )
        if self.config.feature_fusion:
            size = tile.size or tuple(t1.shape[-2:])
            # D-FE has seen this pair at the training scale already: reuse its distance maps.
            own = tile.feature_distances if scale == self.config.train_scale else []
            distances = own or (reuse.feature_distances if reuse is not None else [])
            if distances:
                tile.feature_change = _level_mean(distances, size)
            else:
                tile.feature_change = self.feature_change(*full, size=size)
        return tile

    @torch.no_grad()
    def feature_change(
        self, fe_before: torch.Tensor, fe_after: torch.Tensor, size: Optional[Tuple[int, int]] = None
    ) -> np.ndarray:
        """D-FE's change map (H, W): the loss's feature distances averaged over levels.

        D-FE sees the pair at the training scale (so training and prediction tiles agree);
        each level is resized (bilinear) to ``size``, by default the input's.
        """
        size = size or tuple(fe_before.shape[-2:])
        s = self.config.train_scale
        if s < 1.0:
            fe_before, fe_after = (
                _shrink(t, s) for t in (fe_before, fe_after)
            )
        return _level_mean(
            losses.feature_distances(self._features(fe_before), self._features(fe_after)), size
        )

    # ------------------------------------------------------------------ optimisation
    def _domain_terms(self, tile: Tile, iteration: int) -> Dict[str, object]:
        """Distance maps (or constants) of the feature, augmented and consistency terms."""
        cfg = self.config
        if not cfg.train_fe:
            aug: List[torch.Tensor] = []
            if cfg.augmentation == "intended":
                if cfg.augmentation_bank:
                    aug = tile.augmented_bank[iteration % len(tile.augmented_bank)]
                else:
                    with torch.no_grad():
                        aug = losses.feature_distances(
                            self._features(self.jitter(tile.fe_before)),
                            self._features(self.jitter(tile.fe_after)),
                        )
            cons = tile.consistency_bank[iteration % len(tile.consistency_bank)] if (
                tile.consistency_bank
            ) else 0.0
            return {"feature": tile.feature_distances, "augmented": aug, "consistency": cons}
        f1, f2 = self.fe(tile.fe_before), self.fe(tile.fe_after)
        out: Dict[str, object] = {"feature": losses.feature_distances(f1, f2), "augmented": []}
        out["consistency"] = 0.0
        if cfg.augmentation != "off":
            j1, j2 = self.fe(self.jitter(tile.fe_before)), self.fe(self.jitter(tile.fe_after))
            if cfg.augmentation == "intended":
                out["augmented"] = losses.feature_distances(j1, j2)
            out["consistency"] = losses.consistency(f1, j1) + losses.consistency(f2, j2)
        return out

    def loss(self, tile: Tile, pc: torch.Tensor, iteration: int = 0) -> Dict[str, torch.Tensor]:
        """Every loss term and their weighted total for the change map ``pc`` (N, members, H, W;
        each term is the mean over the ensemble members)."""
        cfg = self.config
        sc, sn = losses.soft_masks(pc, tile.valid)
        domain = self._domain_terms(tile, iteration)
        zero = pc.new_zeros(())
        terms = {
            "image": losses.similarity_dissimilarity(sc, sn, tile.image_distance),
            "feature": sum(
                (losses.similarity_dissimilarity(sc, sn, d) for d in domain["feature"]), zero
            ),
            "augmented": sum(
                (losses.similarity_dissimilarity(sc, sn, d) for d in domain["augmented"]), zero
            ),
            "consistency": zero + domain["consistency"],
            "infonce": losses.infonce(sc, sn, cfg.temperature),
        }
        terms["total"] = (
            cfg.w_image * terms["image"]
            + cfg.w_feature * terms["feature"]
            + cfg.w_augmented * terms["augmented"]
            + cfg.w_consistency * terms["consistency"]
            + cfg.w_infonce * terms["infonce"]
        )
        return terms

    def _forward(
        self, diff: torch.Tensor, members: bool = False, folded: bool = False
    ) -> torch.Tensor:
        """D-CPG's logits: their mean, or (``members``) one map per ensemble member;
        ``folded``: the eval-mode net with batch-norm folded in (:meth:`_inference_net`)."""
        dcpg = self._inference_net() if folded else self.dcpg
        net = dcpg.member_logits if members else dcpg.logits
        if self.config.amp and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return net(diff).float()
        if folded and self.device.type == "cpu":  # the same map, a quarter faster at 512 px
            return in_blocks(net, diff, CPU_BLOCK, dcpg.receptive_field // 2)
        return net(diff)

    def fit(
        self,
        tiles: Sequence[Tile],
        progress: Optional[Progress] = None,
        is_cancelled: Optional[IsCancelled] = None,
    ) -> Dict[str, List[float]]:
        """Optimise D-CPG (and D-FE if configured) on ``tiles``, one tile per iteration."""
        progress, is_cancelled = _check_callbacks(progress, is_cancelled)
        cfg = self.config
        params = list(self.dcpg.parameters()) + (list(self.fe.parameters()) if cfg.train_fe else [])
        optimiser = torch.optim.Adam(params, lr=cfg.learning_rate)
        # Loss terms stay on the device; reading one back waits for the device, so the
        # progress text shows the loss only every LOSS_EVERY iterations (and at the end).
        records: List[torch.Tensor] = []
        self.dcpg.train()
        for it in range(cfg.iterations):
            if is_cancelled():
                raise Cancelled("Cancelled by the user; no output was written.")
            tile = tiles[it % len(tiles)]
            pc = torch.sigmoid(self._forward(tile.diff, members=True))  # each member's own loss
            terms = self.loss(tile, pc, it)
            optimiser.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimiser.step()
            records.append(torch.stack([terms[k].detach().float() for k in TERMS]))
            message = f"Iteration {it + 1}/{cfg.iterations}"
            if (it + 1) % LOSS_EVERY == 0 or it + 1 == cfg.iterations:
                message += f": loss {float(records[-1][-1]):.4f}"
            progress(100.0 * (it + 1) / cfg.iterations, message)
        values = torch.stack(records).cpu().numpy().T.tolist()
        history: Dict[str, List[float]] = dict(zip(TERMS, values))
        self._recompute_batchnorm(tiles)
        if cfg.train_scale == 1.0:
            self.calibrate(tiles, batch_stats=len(tiles) == 1)
        return history

    def calibrate(self, tiles: Sequence[Tile], batch_stats: bool = False) -> None:
        """Fit the decision's calibrator on full-resolution ``tiles`` (after :meth:`fit`).

        At a training scale below 1 the training tiles are averaged down, which hides part of
        the noise the full-resolution map has: the no-change laws must be fitted at the
        resolution the map is predicted at, or noise alone passes the test.
        """
        cfg = self.config
        if cfg.calibration == "none" and cfg.gate == 0 and cfg.feature_fusion == 0:
            return
        logits = [self.predict_logits(t, batch_stats=batch_stats).ravel() for t in tiles]

        def sample(name: str, used: bool) -> Optional[np.ndarray]:
            """The tiles' (..., H, W) maps side by side as (..., pixels); the magnitude keeps
            one row per sharpness hypothesis."""
            if not used:
                return None
            maps = [getattr(t, name) for t in tiles]
            return np.concatenate([m.reshape(*m.shape[:-2], -1) for m in maps], axis=-1)

        self.calibrator = fit_calibrator(
            np.concatenate(logits),
            sample("magnitude", cfg.gate > 0),
            gate=cfg.gate > 0,
            feature_change=sample("feature_change", cfg.feature_fusion > 0),
            fusion=cfg.feature_fusion,
        )

    @torch.no_grad()
    def _recompute_batchnorm(self, tiles: Sequence[Tile]) -> None:
        """Set BN running statistics to the average over ``tiles`` under the final weights.

        The running averages collected during training lag behind weights that keep moving;
        recomputing them makes eval-mode prediction of unseen tiles (scene mode) match
        training-mode behaviour on the tiles the network was fitted on.
        """
        norms = [m for m in self.dcpg.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        self.dcpg.train()
        for tile in tiles:
            self._forward(tile.diff)
        for m in norms:
            m.momentum = 0.1

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_logits(self, tile: Tile, batch_stats: bool = False) -> np.ndarray:
        """Pre-sigmoid change score (H, W), NaN where invalid.

        ``batch_stats`` normalises with the tile's own statistics (as during training, for the
        tile the network was fitted on) without touching the running statistics.
        """
        if batch_stats:
            saved = [(m, m.momentum) for m in self.dcpg.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            for m, _ in saved:
                m.momentum = 0.0
            self.dcpg.train()
        else:
            self.dcpg.eval()
        try:
            logits = self._forward(tile.diff, folded=not batch_stats)[0]
        finally:
            if batch_stats:
                for m, momentum in saved:
                    m.momentum = momentum
        return _invalid_to_nan(logits, tile)

    def _probability(self, logits: np.ndarray, tile: Tile) -> np.ndarray:
        with timing.stage("decision"):
            if self.calibrator is not None:
                return self.calibrator(logits, tile.magnitude, tile.feature_change)
            with np.errstate(over="ignore"):
                return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def predict(self, tile: Tile, batch_stats: bool = False) -> np.ndarray:
        """Change probability (H, W) float32, calibrated when configured, NaN where invalid."""
        return self._probability(self.predict_logits(tile, batch_stats), tile)

    @torch.no_grad()
    def predict_many(self, tiles: Sequence[Tile]) -> List[np.ndarray]:
        """:meth:`predict` of same-sized tiles in one batched forward (running BN statistics)."""
        self.dcpg.eval()
        diff = torch.cat([t.diff for t in tiles])
        logits = self._forward(diff, folded=True)
        return [self._probability(_invalid_to_nan(z, t), t) for z, t in zip(logits, tiles)]

    def tile_batch(self, tile_size: int) -> int:
        """Tiles per forward when predicting: 1 on CPU (a batch of 4 tiles measured 2x slower
        there); on CUDA as many as an eighth of the free memory holds (a few live D-CPG
        activations each), at most 64."""
        if self.device.type != "cuda":
            return 1
        free, _ = torch.cuda.mem_get_info(self.device)
        per_tile = 16 * self.config.width * self.config.ensemble * tile_size**2  # 4 float32 activations
        return int(max(1, min(64, free // 8 // per_tile)))

    def close(self) -> None:
        """Free accelerator memory."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _shrink(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` (N, C, H, W) averaged down by ``scale`` (area): a 2 x 2 mean when halving even
    sides (the same values, three times as fast as the general adaptive pooling)."""
    if scale == 0.5 and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0:
        return F.avg_pool2d(x, 2)
    return F.interpolate(x, scale_factor=scale, mode="area")


def _level_mean(maps: Sequence[torch.Tensor], size: Tuple[int, int]) -> np.ndarray:
    """Distance maps of the D-FE levels resized (bilinear) to ``size`` and averaged, (H, W)."""
    resized = [F.interpolate(d.float(), size=size, mode="bilinear", align_corners=False)
               for d in maps]
    return torch.stack(resized).mean(dim=0)[0, 0].cpu().numpy()


def _invalid_to_nan(logits: torch.Tensor, tile: Tile) -> np.ndarray:
    """One (1, H, W) logit map as (H, W) float32 numpy at the tile's full size (bilinear from a
    coarse prediction), NaN where invalid."""
    if tile.size is None:
        out = logits[0].float().cpu().numpy()
        out[tile.valid[0, 0].cpu().numpy() < 0.5] = np.nan
        return out
    full = F.interpolate(logits[None].float(), size=tile.size, mode="bilinear", align_corners=False)
    out = full[0, 0].cpu().numpy()
    out[tile.invalid] = np.nan
    return out


def validate_pair(
    before: np.ndarray, after: np.ndarray, valid: Optional[np.ndarray]
) -> np.ndarray:
    """Check shapes; return the validity mask with non-finite pixels removed."""
    if before.ndim != 3 or after.ndim != 3:
        raise InputError(
            f"Images must be arrays of shape (bands, rows, cols); got {before.shape} and "
            f"{after.shape}. Add a band axis to single-band images."
        )
    if before.shape[0] != after.shape[0]:
        raise InputError(
            f"The before-image has {before.shape[0]} bands and the after-image "
            f"{after.shape[0]}; select the same number of bands for both dates."
        )
    if before.shape != after.shape:
        raise InputError(
            f"The dates differ in size ({before.shape[1:]} vs {after.shape[1:]}); align them on "
            "one grid first (the raster pipeline does this)."
        )
    if min(before.shape[1:]) < MIN_SIZE:
        raise InputError(
            f"The images are {before.shape[1]}x{before.shape[2]} pixels; at least "
            f"{MIN_SIZE}x{MIN_SIZE} are needed. Use a larger area."
        )
    ok = np.isfinite(before).all(axis=0) & np.isfinite(after).all(axis=0)
    if valid is not None:
        if valid.shape != before.shape[1:]:
            raise InputError(
                f"The validity mask is {valid.shape} but the images are {before.shape[1:]}; "
                "give one mask value per pixel."
            )
        ok &= valid.astype(bool)
    if not ok.any():
        raise InputError("No pixel is valid in both dates; check nodata values and the overlap.")
    return ok


def fit_predict(
    before: np.ndarray,
    after: np.ndarray,
    valid: Optional[np.ndarray] = None,
    config: Optional[MetricCDConfig] = None,
    *,
    fe_before: Optional[np.ndarray] = None,
    fe_after: Optional[np.ndarray] = None,
    progress: Optional[Progress] = None,
    is_cancelled: Optional[IsCancelled] = None,
) -> EngineResult:
    """Run Metric-CD on one pair of (C, H, W) arrays and return the change probability.

    Non-finite values are treated as nodata. ``fe_before``/``fe_after`` (1 or 3 bands) feed
    D-FE; by default the first three bands (or the only one) of the images do.
    """
    start = time.perf_counter()
    progress, is_cancelled = _check_callbacks(progress, is_cancelled)
    ok = validate_pair(before, after, valid)
    b = np.where(ok, np.nan_to_num(before), 0.0).astype(np.float32)
    a = np.where(ok, np.nan_to_num(after), 0.0).astype(np.float32)
    fb = b if fe_before is None else np.where(ok, np.nan_to_num(fe_before), 0.0)
    fa = a if fe_after is None else np.where(ok, np.nan_to_num(fe_after), 0.0)
    cfg = config or MetricCDConfig()
    scaling = fit_scaling(
        b, a, ok, clip_percentiles=cfg.clip_percentiles, shared=cfg.shared_scaling,
        radiometric=cfg.radiometric_normalisation, seed=cfg.seed,
    )
    fe_scaling = scaling if fe_before is None else fit_scaling(
        fb, fa, ok, clip_percentiles=cfg.clip_percentiles, shared=cfg.shared_scaling,
        radiometric=cfg.radiometric_normalisation, seed=cfg.seed,
    )
    b01, a01 = scaling.apply(b, a)
    fb01, fa01 = (b01, a01) if fe_before is None else fe_scaling.apply(fb, fa)
    progress(0.0, "Building the networks")
    engine = Engine(cfg, b.shape[0])
    try:
        magnitude = scaling.evidence(b, a, ok, cfg.gate_sharpness) if cfg.gate > 0 else None
        train = engine.prepare(b01, a01, fb01, fa01, ok, cfg.train_scale, magnitude=magnitude)
        history = engine.fit([train], progress, is_cancelled)
        full = train
        if cfg.train_scale != 1.0:
            full = engine.prepare(b01, a01, fb01, fa01, ok, training=False, magnitude=magnitude,
                                  reuse=train)
            engine.calibrate([full], batch_stats=True)
        probability = engine.predict(full, batch_stats=True)
        return EngineResult(
            probability, history, time.perf_counter() - start, str(engine.device), engine.calibrator
        )
    finally:
        engine.close()
