"""The U-Net generator (2D / 2.5D / 3D) built from MONAI's ``BasicUNet``.

The decoder uses ``upsample="nontrainable"``: MONAI then applies a 1x1 convolution, (bi/tri)linear
interpolation and two 3x3 convolutions per level - no transposed convolutions, hence no checkerboard
artefacts. Four pooling levels: inputs whose size is not a multiple of 16 (:attr:`UNetGenerator.size_divisor`)
are padded (replicate) inside ``forward`` and the output is cropped back, so any size works.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from MedTranslateLib.errors import ModelError

DEFAULT_FEATURES = (32, 32, 64, 128, 256, 32)


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


NORMS = {"instance": ("instance", {"affine": True}), "batch": "batch", "group": ("group", {"num_groups": 8}),
         "none": None}


class UNetGenerator(nn.Module):
    """MONAI ``BasicUNet`` with interpolation upsampling, an optional residual output and a ``tanh`` option.

    ``residual``: the network predicts a correction added to the centre input channel (useful when the
    target looks like the source, e.g. CBCT -> CT). ``output_activation="tanh"`` bounds the output to
    [-1, 1] (the normalised range); ``"none"`` leaves it linear.
    """

    size_divisor = 16

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 features: tuple[int, ...] = DEFAULT_FEATURES, norm: str = "instance", dropout: float = 0.0,
                 residual: bool = False, output_activation: str = "none") -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.residual = bool(residual)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.output_activation = output_activation
        self.net = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                             features=features, norm=NORMS[norm], dropout=float(dropout), upsample="nontrainable")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[2:])
        pads = pad_amounts(shape, self.size_divisor)
        if any(pads):
            out = self.net(F.pad(x, pads, mode="replicate"))
            out = out[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape)]
        else:
            out = self.net(x)
        if self.residual:
            centre = self.in_channels // 2
            out = out + x[:, centre:centre + 1]
        if self.output_activation == "tanh":
            out = torch.tanh(out)
        return out


def _features(value: Any) -> tuple[int, ...]:
    """Six feature counts (BasicUNet's five encoder levels + the last decoder level)."""
    if value is None:
        return DEFAULT_FEATURES
    feats = tuple(int(v) for v in value)
    if len(feats) == 5:  # encoder only given: last decoder level = first encoder level
        feats = feats + (feats[0],)
    if len(feats) != 6 or min(feats) < 1:
        raise ModelError(f"architecture.features must list 5 or 6 positive channel counts, not {list(value)}.",
                         "For example features = [32, 32, 64, 128, 256, 32].")
    return feats


def build_generator(architecture: Mapping[str, Any], spatial_dims: int, *, in_channels: int | None = None,
                    out_channels: int | None = None) -> UNetGenerator:
    """A U-Net generator from a card's ``architecture`` (in_channels, out_channels, features, norm,
    dropout, residual, output_activation); ``in_channels`` / ``out_channels`` override the card's."""
    if spatial_dims not in (2, 3):
        raise ModelError(f"Networks are 2D or 3D, not {spatial_dims}D.", "Use dimensionality 2d, 2.5d or 3d.")
    norm = str(architecture.get("norm", "instance")).lower()
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
