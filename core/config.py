"""Frozen, validated configuration of the Metric-CD engine and of the raster pipeline."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple, Union

from .band_roles import RULES as FE_BAND_RULES
from .errors import InputError

BACKBONES = ("vgg16", "mobilenet_v2")
DEVICES = ("auto", "cpu", "cuda", "mps")
AUGMENTATIONS = ("intended", "published", "off")
CALIBRATIONS = ("none", "null")
MODES = ("scene", "per-tile")
RESAMPLINGS = ("nearest", "bilinear", "cubic", "average")
THRESHOLD_RULES = ("auto", "otsu")
#: Default false-alarm rate of the automatic decision (:mod:`.decision`): the expected share of
#: unchanged pixels marked changed. Measured over the shared labelled pairs (docs/DECISION.md):
#: mean F1 rises from 1e-2 to 1e-4 and the generated no-change pairs mark less, while below
#: 1e-4 the groups with much change (DSIFN, SAR, LEVIR) lose what OSCD gains.
ALPHA = 1e-4
#: Default minimum change area of the CLI and the plugin, in pixels of the input (so it suits
#: any resolution): 8-connected change regions of fewer pixels are removed from the mask and the
#: polygons. Measured by bench/bench_min_area.py (Metric-CD default, 29 shared labelled pairs):
#: the largest area lowering no group's mean F1 by more than 0.005; it removes 56 % of the
#: polygons (mean F1 0.285 -> 0.288); 16 costs Landsat and DSIFN 0.009. Its cost: labelled
#: change regions more than half marked 45.3 -> 44.0 % (OSCD 13-band -5.3, Landsat -3.1
#: points; 4 pixels cost 0.1 but leave 59 % of the polygons). The library's PipelineOptions
#: keep 0 (the mask is exactly the test).
MIN_AREA_PIXELS = 8
#: The blur (Gaussian sigma, pixels) by which two acquisitions of unchanged ground may differ
#: (optics, resampling, sub-pixel misregistration). Every method's decision allows for it where
#: the pair supports it (one date measurably sharper, :func:`.decision.admitted_views`): a
#: blurred, noisier copy of an image was marked 4.7-9 % by Metric-CD and 6-39 % by the classics
#: without it (docs/DECISION.md).
SHARPNESS = 1.0


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


MAX_ITERATIONS = 100_000  # beyond this a run takes days; the presets use 20 to 50
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit here


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_seed(seed: Any) -> None:
    """InputError unless ``seed`` is a whole number from 0 to :data:`MAX_SEED`."""
    _require(
        _whole(seed) and 0 <= seed <= MAX_SEED,
        f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}; e.g. 0.",
    )


def check_sharpness(value: Any, name: str = "sharpness") -> float:
    """``value`` as the blur (pixels) a decision allows between the dates; InputError unless it
    is a number from 0 to 5."""
    try:
        sigma = float(value)
    except (TypeError, ValueError):
        sigma = math.nan
    _require(
        math.isfinite(sigma) and 0.0 <= sigma <= 5.0,
        f"{name} must be between 0 (the plain difference) and 5 pixels (the blur either date "
        f"may differ by), got {value!r}.",
    )
    return sigma


@dataclass(frozen=True)
class MetricCDConfig:
    """Settings of one Metric-CD optimisation. Field defaults reproduce the paper's demo.

    Use :meth:`preset` for the recommended settings (``"default"``), the faster ones
    (``"fast"``) or the paper's (``"paper"``); keyword overrides win over the preset.
    """

    iterations: int = 50
    learning_rate: float = 1e-4
    width: int = 32
    depth: int = 32
    ensemble: int = 1
    backbone: str = "vgg16"
    weights: str = "imagenet"
    fe_levels: int = 3
    fe_band_rule: str = "first"
    imagenet_normalise: bool = True
    clip_percentiles: Tuple[float, float] = (0.0, 100.0)
    shared_scaling: bool = False
    radiometric_normalisation: bool = True
    w_image: float = 1.0
    w_feature: float = 1.0
    w_augmented: float = 1.0
    w_consistency: float = 1.0
    w_infonce: float = 1.0
    temperature: float = 1.0
    augmentation: str = "published"
    jitter: float = 0.2
    augmentation_bank: int = 0
    train_fe: bool = False
    train_scale: float = 1.0
    # Predict the map at ``train_scale`` too (bilinear to full size), instead of at full
    # resolution: the network then sees the pair at the scale it was optimised at.
    predict_at_train_scale: bool = False
    calibration: str = "none"
    gate: float = 0.0
    # The gate's sharpness hypotheses: the difference must also be significant with the sharper
    # date blurred by a Gaussian of this many pixels (0: the plain difference only).
    gate_sharpness: float = SHARPNESS
    feature_fusion: float = 0.0
    device: str = "auto"
    amp: bool = False
    threads: Optional[int] = None
    seed: int = 0

    def __post_init__(self) -> None:
        _require(
            _whole(self.iterations) and 1 <= self.iterations <= MAX_ITERATIONS,
            f"iterations must be a whole number from 1 to {MAX_ITERATIONS}, got "
            f"{self.iterations!r}; the presets use 20 to 50.",
        )
        _require(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            f"learning_rate must be a positive number, got {self.learning_rate}.",
        )
        _require(self.width >= 2, f"width (D-CPG channels) must be at least 2, got {self.width}.")
        _require(self.depth >= 0, f"depth (residual blocks) must be 0 or more, got {self.depth}.")
        _require(
            1 <= self.ensemble <= 8,
            f"ensemble (D-CPGs trained side by side) must be 1 to 8, got {self.ensemble}.",
        )
        _require(
            self.backbone in BACKBONES,
            f"Unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}.",
        )
        _require(bool(self.weights), "weights must be 'imagenet', 'random' or a file path.")
        _require(1 <= self.fe_levels <= 4, f"fe_levels must be 1 to 4, got {self.fe_levels}.")
        _require(
            self.fe_band_rule in FE_BAND_RULES,
            f"fe_band_rule must be one of {', '.join(FE_BAND_RULES)}, got {self.fe_band_rule!r}.",
        )
        lo, hi = self.clip_percentiles
        _require(
            0.0 <= lo < hi <= 100.0,
            f"clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}.",
        )
        for name in ("w_image", "w_feature", "w_augmented", "w_consistency", "w_infonce"):
            value = getattr(self, name)
            _require(math.isfinite(value), f"{name} must be a finite number, got {value}.")
        _require(self.temperature > 0, f"temperature must be positive, got {self.temperature}.")
        _require(
            self.augmentation in AUGMENTATIONS,
            f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {self.augmentation!r}.",
        )
        _require(0.0 <= self.jitter < 1.0, f"jitter must be in [0, 1), got {self.jitter}.")
        _require(self.augmentation_bank >= 0, "augmentation_bank must be 0 (fresh) or more.")
        _require(0.1 <= self.train_scale <= 1.0, "train_scale must be in [0.1, 1].")
        _require(
            self.calibration in CALIBRATIONS,
            f"calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}.",
        )
        _require(
            self.gate in (0.0, 1.0),
            f"gate must be 0 (off) or 1 (on: the difference itself must be significant too), "
            f"got {self.gate}.",
        )
        check_sharpness(self.gate_sharpness, "gate_sharpness")
        _require(
            0.0 <= self.feature_fusion <= 10.0,
            f"feature_fusion must be between 0 (off) and 10 (the weight of D-FE's feature "
            f"change next to D-CPG's score), got {self.feature_fusion}.",
        )
        _require(
            self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}."
        )
        _require(self.threads is None or self.threads >= 1, "threads must be at least 1.")
        check_seed(self.seed)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MetricCDConfig:
        """Return the named preset with ``overrides`` applied (``None`` values are ignored)."""
        if name not in PRESETS:
            raise InputError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        values = dict(PRESETS[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        _require(not unknown, f"Unknown setting(s): {', '.join(sorted(unknown))}.")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary (for metadata and reports)."""
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # The published demo, term for term (augmented term inert, min-max scaling per date); its
    # map goes through the same decision as every method (``calibration="none"``: the raw map).
    "paper": {"calibration": "null", "gate": 1.0},
    # Recommended (measured on the shared labelled data, see README): a light D-FE, a shallow
    # D-CPG, a strong no-change prior, D-CPG's score fused with D-FE's feature change, the map
    # tested against an empirical null and gated by the change-vector magnitude (no change marked
    # without spectral evidence).
    "default": {
        "backbone": "mobilenet_v2",
        # Four D-FE levels (down to 1/16): the deepest ranks change with more context; over
        # three seeds mean ROC-AUC 0.827 vs 0.817 with three levels, F1 the same.
        "fe_levels": 4,
        # D-FE's bands, where the user names none, by the bands' recorded wavelengths
        # (SWIR1-NIR-red, else red-green-blue; see band_roles): Taizhou over five seeds
        # F1 0.916 -> 0.939, Bercy 13-band the same.
        "fe_band_rule": "wavelength",
        "clip_percentiles": (1.0, 99.0),
        "shared_scaling": True,
        "temperature": 0.03,
        "augmentation": "off",
        "calibration": "null",
        "gate": 1.0,
        "feature_fusion": 0.5,
        # 20 iterations: over five seeds mean F1 0.402 vs 0.394 at 30 and 0.353 at 60 (longer
        # optimisation shrinks the change mode); 15 measured the same as 20.
        "iterations": 20,
        "learning_rate": 1e-3,
        "depth": 4,
        "width": 16,
    },
}
# Interactive on a laptop CPU: as "default", optimised and predicted at half resolution (a
# quarter of the pixels through D-CPG; the map is brought back to full size). Predicting at the
# scale it was optimised at measured better than at full resolution on the shared pairs: mean
# F1 0.295 vs 0.281 (every group but Landsat, 0.899 vs 0.924, and LEVIR, 0.014 vs 0.019).
PRESETS["fast"] = {**PRESETS["default"], "train_scale": 0.5, "predict_at_train_scale": True}


@dataclass(frozen=True)
class PipelineOptions:
    """How the raster pipeline reads, tiles and writes (band indices are 1-based)."""

    bands_before: Optional[Tuple[int, ...]] = None
    bands_after: Optional[Tuple[int, ...]] = None
    fe_bands: Optional[Tuple[int, ...]] = None
    mode: str = "scene"
    tile_size: int = 512
    train_crop: int = 256
    resampling: str = "bilinear"
    threshold: Union[str, float] = "auto"
    alpha: float = ALPHA
    min_area: float = 0.0
    min_area_unit: str = "pixels"
    mask_path: Optional[str] = None
    polygons_path: Optional[str] = None
    dask_scheduler: Optional[str] = None
    dask_workers: int = 0
    extra_metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        _require(self.tile_size >= 64, f"tile_size must be at least 64 pixels, got {self.tile_size}.")
        _require(self.train_crop >= 32, f"train_crop must be at least 32, got {self.train_crop}.")
        _require(
            self.resampling in RESAMPLINGS,
            f"resampling must be one of {', '.join(RESAMPLINGS)}, got {self.resampling!r}.",
        )
        if isinstance(self.threshold, str):
            _require(
                self.threshold in THRESHOLD_RULES,
                f"threshold must be a number in (0, 1) or one of {', '.join(THRESHOLD_RULES)},"
                f" got {self.threshold!r}.",
            )
        else:
            _require(
                0.0 < float(self.threshold) < 1.0,
                f"threshold must be between 0 and 1 (exclusive), got {self.threshold}.",
            )
        _require(
            0.0 < self.alpha < 0.5,
            f"alpha (the false-alarm rate) must be between 0 and 0.5, got {self.alpha}; "
            f"e.g. 0.001.",
        )
        _require(self.min_area >= 0, f"min_area must be 0 or more, got {self.min_area}.")
        _require(
            self.min_area_unit in ("pixels", "map"),
            f"min_area_unit must be 'pixels' or 'map', got {self.min_area_unit!r}.",
        )
        _require(self.dask_workers >= 0, "dask_workers must be 0 (no local cluster) or more.")
        if self.fe_bands is not None:
            _require(
                len(self.fe_bands) in (1, 3),
                f"fe_bands must list 1 or 3 bands, got {len(self.fe_bands)}.",
            )
