"""The U-Net generator (2D / 2.5D / 3D) of the unet, pix2pix and CycleGAN families.

A plain U-Net written for speed on CPUs and GPUs alike: every block is ``conv 3x3 -> norm -> LeakyReLU``
(an ``nn.Sequential``, so :mod:`MedTranslateLib.inference.optimize` can fold a batch norm into the convolution
before it), two blocks per level, max-pooling down, and "resize-convolution" up (nearest-neighbour upsampling
followed by a 3x3 block: no transposed convolutions, hence no checkerboard artefacts), skip connections by
concatenation and a 1x1 output convolution.

``features`` lists the channels of each level, finest first (default ``(32, 64, 128, 256)``: four levels). The
network sees inputs padded (replicate) to a multiple of :attr:`UNetGenerator.size_divisor` (``2 ** (levels - 1)``)
and crops its output back, so any size works. It imports only torch (not MONAI), which keeps
``medtranslate translate`` quick to start.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from MedTranslateLib.errors import ModelError

DEFAULT_FEATURES = (32, 64, 128, 256)
NORMS = ("batch", "instance", "group", "none")
_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_POOL = {2: F.max_pool2d, 3: F.max_pool3d}


def pad_amounts(shape: tuple[int, ...], divisor: int) -> list[int]:
    """``F.pad`` amounts (last axis first) growing each axis to a multiple of ``divisor``; when that leaves a
    single voxel at the bottom of the U-Net (instance norm needs more than one) the first axis doubles."""
    target = [max(divisor, -(-size // divisor) * divisor) for size in shape]
    if all(t == divisor for t in target):
        target[0] *= 2
    pads: list[int] = []
    for size, wanted in zip(reversed(shape), reversed(target)):
        pads += [0, wanted - size]
    return pads


def _norm(kind: str, channels: int, dims: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    return nn.GroupNorm(min(8, channels), channels)


def conv_block(in_channels: int, out_channels: int, dims: int, norm: str) -> nn.Sequential:
    """``conv 3x3 -> norm -> LeakyReLU(0.01)``; the convolution has a bias only when there is no norm."""
    layers: list[nn.Module] = [_CONV[dims](in_channels, out_channels, 3, padding=1, bias=norm == "none")]
    if norm != "none":
        layers.append(_norm(norm, out_channels, dims))
    layers.append(nn.LeakyReLU(0.01, inplace=True))
    return nn.Sequential(*layers)


def _level(in_channels: int, out_channels: int, dims: int, norm: str, dropout: float) -> nn.Sequential:
    """Two blocks, then a dropout layer (regularisation in training) when ``dropout > 0``."""
    layers = [conv_block(in_channels, out_channels, dims, norm), conv_block(out_channels, out_channels, dims, norm)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class UNetGenerator(nn.Module):
    """U-Net with an optional residual output and a ``tanh`` option.

    ``residual``: the network predicts a correction added to the centre input channel (useful when the
    target looks like the source, e.g. CBCT -> CT). ``output_activation="tanh"`` bounds the output to
    [-1, 1] (the normalised range); ``"none"`` leaves it linear.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 features: Sequence[int] = DEFAULT_FEATURES, norm: str = "batch", dropout: float = 0.0,
                 residual: bool = False, output_activation: str = "none") -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        self.residual = bool(residual)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.output_activation = output_activation
        self.spatial_dims = int(spatial_dims)
        self.size_divisor = 2 ** (len(features) - 1)
        dims = self.spatial_dims
        self.encoder = nn.ModuleList(
            _level(c_in, c_out, dims, norm, dropout)
            for c_in, c_out in zip((self.in_channels,) + features[:-1], features))
        coarse_to_fine = list(zip(features[:0:-1], features[-2::-1]))  # (coarser, finer) level pairs
        self.up = nn.ModuleList(conv_block(coarser, finer, dims, norm) for coarser, finer in coarse_to_fine)
        self.decoder = nn.ModuleList(_level(2 * finer, finer, dims, norm, dropout) for _, finer in coarse_to_fine)
        self.head = _CONV[dims](features[0], self.out_channels, 1)

    def _unet(self, x: torch.Tensor) -> torch.Tensor:
        pool = _POOL[self.spatial_dims]
        skips = []
        for index, level in enumerate(self.encoder):
            x = level(pool(x, 2) if index else x)
            skips.append(x)
        skips.pop()  # the coarsest level feeds the decoder directly
        for up, level in zip(self.up, self.decoder):
            x = up(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = level(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[2:])
        pads = pad_amounts(shape, self.size_divisor)
        if any(pads):
            out = self._unet(F.pad(x, pads, mode="replicate"))
            out = out[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape)]
        else:
            out = self._unet(x)
        if self.residual:
            centre = self.in_channels // 2
            out = out + x[:, centre:centre + 1]
        if self.output_activation == "tanh":
            out = torch.tanh(out)
        return out


def _features(value: Any) -> tuple[int, ...]:
    """Channels per level, finest first: two to seven positive counts."""
    if value is None:
        return DEFAULT_FEATURES
    feats = tuple(int(v) for v in value)
    if not 2 <= len(feats) <= 7 or min(feats) < 1:
        raise ModelError(f"architecture.features must list 2 to 7 positive channel counts (one per U-Net level), "
                         f"not {list(value)}.", "For example features = [32, 64, 128, 256].")
    return feats


#: The card ``architecture`` keys :func:`build_generator` reads.
GENERATOR_KEYS = frozenset({"in_channels", "out_channels", "features", "norm", "dropout", "residual",
                            "output_activation"})


def build_generator(architecture: Mapping[str, Any], spatial_dims: int, *, in_channels: int | None = None,
                    out_channels: int | None = None) -> UNetGenerator:
    """A U-Net generator from a card's ``architecture`` (in_channels, out_channels, features, norm,
    dropout, residual, output_activation); ``in_channels`` / ``out_channels`` override the card's."""
    if spatial_dims not in (2, 3):
        raise ModelError(f"Networks are 2D or 3D, not {spatial_dims}D.", "Use dimensionality 2d, 2.5d or 3d.")
    norm = str(architecture.get("norm", "batch")).lower()
    if norm not in NORMS:
        raise ModelError(f"Unknown architecture.norm '{norm}'.", f"Use one of {', '.join(NORMS)}.")
    activation = str(architecture.get("output_activation", "none")).lower()
    if activation not in ("none", "tanh"):
        raise ModelError(f"Unknown architecture.output_activation '{activation}'.", "Use 'none' or 'tanh'.")
    dropout = float(architecture.get("dropout", 0.0))
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"architecture.dropout must be in [0, 1), not {dropout}.", "For example dropout = 0.1.")
    c_in = int(in_channels if in_channels is not None else architecture["in_channels"])
    c_out = int(out_channels if out_channels is not None else architecture["out_channels"])
    return UNetGenerator(spatial_dims, c_in, c_out, _features(architecture.get("features")), norm, dropout,
                         bool(architecture.get("residual", False)), activation)
