"""D-CPG (change-probability generator) and D-FE (frozen ImageNet feature extractor)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import torch
from torch import nn

from .errors import InputError, MissingDependency, WeightsError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# File names torchvision's weights API downloads into <torch hub dir>/checkpoints/.
WEIGHT_FILES = {"vgg16": "vgg16-397923af.pth", "mobilenet_v2": "mobilenet_v2-b0353104.pth"}


def _conv(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3, groups=groups))


class ResidualBlock(nn.Module):
    """conv3x3-BN-LeakyReLU-conv3x3-BN plus the identity (``groups`` independent groups)."""

    def __init__(self, width: int, groups: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(width, width, groups),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
            _conv(width, width, groups),
            nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DCPG(nn.Module):
    """Fully convolutional, full-resolution change-probability generator.

    Input: |before - after| (N, C, H, W). Output: change probability Pc (N, 1, H, W); the
    no-change probability is 1 - Pc. ``members`` > 1 holds that many independently initialised
    generators side by side (grouped convolutions: no weight is shared); each is trained on its
    own map and the score is the mean of their logits.
    """

    def __init__(self, in_channels: int, width: int = 32, depth: int = 32, members: int = 1):
        super().__init__()
        w = width * members
        self.head = nn.Sequential(_conv(in_channels, w), nn.LeakyReLU(0.2, inplace=True))
        self.blocks = nn.Sequential(*(ResidualBlock(w, members) for _ in range(depth)))
        self.tail = nn.Sequential(
            _conv(w, w, members), nn.BatchNorm2d(w), _conv(w, 2 * members, members)
        )
        self.receptive_field = 2 * (2 + 2 * depth + 1) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid change score of every member, (N, members, H, W)."""
        return self.tail(self.blocks(self.head(x)))[:, 0::2]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid change score (for calibration), the members' mean, (N, 1, H, W)."""
        return self.member_logits(x).mean(dim=1, keepdim=True)


class ReflectPad1(nn.Module):
    """``nn.ReflectionPad2d(1)`` for inference: the same values, written into one new buffer in
    the input's memory format (PyTorch's reflection padding of a channels-last tensor measured
    six times slower: a quarter of D-CPG's inference time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if h < 2 or w < 2:
            raise InputError(f"Reflection padding needs at least 2 x 2 pixels, got {h} x {w}.")
        last = x.is_contiguous(memory_format=torch.channels_last)
        out = torch.empty((n, c, h + 2, w + 2), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last if last else torch.contiguous_format)
        out[:, :, 1:-1, 1:-1] = x
        out[:, :, 0, 1:-1] = x[:, :, 1]
        out[:, :, -1, 1:-1] = x[:, :, -2]
        out[:, :, :, 0] = out[:, :, :, 2]
        out[:, :, :, -1] = out[:, :, :, -3]
        return out


def in_blocks(fn, x: torch.Tensor, block: int, halo: int) -> torch.Tensor:
    """``fn(x)`` computed on ``block`` x ``block`` pieces of ``x``, each with ``halo`` pixels of
    context: the same map for a fully convolutional ``fn`` whose receptive field reaches at most
    ``halo`` pixels (its padding at the edges of ``x`` is kept, as every piece at an edge ends
    there), with each piece's activations small enough to stay in the CPU's cache."""
    n, _, h, w = x.shape
    if h <= block + 2 * halo and w <= block + 2 * halo:
        return fn(x)
    out = None
    for r in range(0, h, block):
        for q in range(0, w, block):
            r0, q0 = max(0, r - halo), max(0, q - halo)
            piece = x[:, :, r0:min(h, r + block + halo), q0:min(w, q + block + halo)]
            y = fn(piece.contiguous(memory_format=torch.channels_last))
            if out is None:
                out = y.new_empty((n, y.shape[1], h, w))
            rows, cols = min(block, h - r), min(block, w - q)
            out[:, :, r:r + rows, q:q + cols] = y[:, :, r - r0:r - r0 + rows, q - q0:q - q0 + cols]
    return out


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """``conv`` followed by ``norm`` (running statistics) as one convolution."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True)
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    fused.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    return fused.to(conv.weight.device)


@torch.no_grad()
def fold_batchnorm(net: nn.Module) -> nn.Module:
    """An eval-mode copy of ``net`` with every BatchNorm2d that follows a convolution (directly,
    or as the convolution's padded ``_conv`` pair) folded into it, and every one-pixel
    reflection padding a :class:`ReflectPad1`: the same map up to float rounding, without a
    pass over the activations per normalisation."""
    import copy

    net = copy.deepcopy(net).eval()
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module)
        for i in range(1, len(children)):
            norm, before = children[i], children[i - 1]
            if not isinstance(norm, nn.BatchNorm2d) or not norm.track_running_stats:
                continue
            target = before[-1] if isinstance(before, nn.Sequential) and len(before) else before
            if not isinstance(target, nn.Conv2d):
                continue
            fused = _fold(target, norm)
            if target is before:
                module[i - 1] = fused
            else:
                before[len(before) - 1] = fused
            module[i] = nn.Identity()
        for i, child in enumerate(module):
            if isinstance(child, nn.ReflectionPad2d) and tuple(child.padding) == (1, 1, 1, 1):
                module[i] = ReflectPad1()
    return net.to(memory_format=torch.channels_last)


class FeatureExtractor(nn.Module):
    """Multi-level features of a torchvision backbone (VGG16 or MobileNetV2).

    VGG16 levels end at relu1_2 (1/1), relu2_2 (1/2), relu3_3 (1/4) and relu4_3 (1/8);
    MobileNetV2 levels end with its inverted-residual stages at 1/2, 1/4, 1/8 and 1/16.
    ``levels`` keeps the first ones.
    """

    SPLITS = {"vgg16": (4, 9, 16, 23), "mobilenet_v2": (2, 4, 7, 14)}

    def __init__(self, backbone: str, weights: str, levels: int = 3, normalise: bool = True):
        super().__init__()
        features = load_backbone(backbone, weights)
        splits = self.SPLITS[backbone][:levels]
        starts = (0,) + splits[:-1]
        self.stages = nn.ModuleList(features[a:b] for a, b in zip(starts, splits))
        self.normalise = normalise
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Features of a (N, 3, H, W) image in [0, 1], one tensor per level."""
        if self.normalise:
            x = (x - self.mean) / self.std
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


def _torchvision():
    try:
        import torchvision
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MissingDependency(
            "torchvision is not installed; install it next to torch, e.g. "
            "'python -m pip install torchvision'."
        ) from exc
    return torchvision


def hub_checkpoint(backbone: str) -> Path:
    """Where torchvision's weights API caches the ImageNet file of ``backbone``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHT_FILES[backbone]


def load_backbone(backbone: str, weights: str) -> nn.Sequential:
    """The backbone's ``features`` module with ``weights``: 'imagenet', 'random' or a file path.

    'random' uses torch's current random state (seed it before calling).
    """
    models = _torchvision().models
    net = models.vgg16() if backbone == "vgg16" else models.mobilenet_v2()
    if weights == "random":
        return net.features
    if weights == "imagenet":
        state = _imagenet_state(backbone)
    else:
        state = _file_state(Path(weights))
    features_state = {
        k[len("features."):]: v for k, v in state.items() if k.startswith("features.")
    } or state
    try:
        net.features.load_state_dict(features_state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"The weights {weights!r} do not match the {backbone} backbone "
            f"({str(exc).splitlines()[0]}); choose the backbone these weights belong to, or a "
            f"{backbone} weights file such as {WEIGHT_FILES[backbone]}."
        ) from None
    return net.features


def _file_state(path: Path) -> dict:
    if path.is_dir():
        raise WeightsError(
            f"Weights path {str(path)!r} is a folder, not a file; give the path of the .pth "
            f"state-dict file inside it (e.g. {WEIGHT_FILES['mobilenet_v2']}), or use weights "
            "'imagenet' or 'random'."
        )
    if not path.is_file():
        raise WeightsError(
            f"Weights file {str(path)!r} does not exist; give the path of a torchvision "
            "state-dict file (.pth), or use weights 'imagenet' or 'random'."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise WeightsError(
            f"Cannot read weights file {str(path)!r} ({exc.__class__.__name__}); give a "
            "torchvision state-dict file saved with torch.save(model.state_dict(), path)."
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"Weights file {str(path)!r} holds no state dict; save one with "
                           "torch.save(model.state_dict(), path).")
    return state


def _imagenet_state(backbone: str) -> dict:
    cached = hub_checkpoint(backbone)
    if cached.is_file():
        try:
            return _file_state(cached)
        except WeightsError:
            raise WeightsError(
                f"The cached ImageNet {backbone} weights file '{cached}' is damaged (most likely "
                "an interrupted download); delete that file so it is downloaded again, or "
                "replace it with a complete copy."
            ) from None
    models = _torchvision().models
    enum = models.VGG16_Weights if backbone == "vgg16" else models.MobileNet_V2_Weights
    try:
        return enum.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise WeightsError(
            f"Cannot download the ImageNet {backbone} weights ({exc.__class__.__name__}: {exc}). "
            f"Offline, put the file {WEIGHT_FILES[backbone]} (from {enum.IMAGENET1K_V1.url}) "
            f"into {cached.parent}, or pass its path as the weights file, or use weights 'random'."
        ) from None


def select_device(name: str) -> torch.device:
    """Resolve 'auto' to cuda, then mps, then cpu; check an explicit choice is available."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if (name == "cuda" and not torch.cuda.is_available()) or (name == "mps" and not has_mps):
        raise InputError(
            f"Device {name!r} was requested but torch cannot use it on this machine; choose "
            f"device 'auto' or 'cpu' (or install a torch build with {name.upper()} support)."
        )
    return torch.device(name)
