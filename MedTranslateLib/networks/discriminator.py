"""PatchGAN discriminator (MONAI ``PatchDiscriminator``) returning only the patch logits."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn


class PatchGAN(nn.Module):
    """Wraps MONAI's ``PatchDiscriminator`` (which returns every layer's output) to return the logits map.

    Inputs smaller than :attr:`min_size` voxels in an axis (too small for the strided layers) are
    replicate-padded up to it.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int = 64, layers: int = 3,
                 norm: str = "instance") -> None:
        super().__init__()
        from monai.networks.nets import PatchDiscriminator

        self.min_size = 3 * 2 ** int(layers)  # each stride-2 layer halves, the last two 4x4 layers take 2
        self.net = PatchDiscriminator(spatial_dims=spatial_dims, num_layers_d=layers, channels=channels,
                                      in_channels=in_channels, out_channels=1, norm=norm.upper())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size in reversed(x.shape[2:]):
            pads += [0, max(0, self.min_size - size)]
        if any(pads):
            x = F.pad(x, pads, mode="replicate")
        return self.net(x)[-1]


#: The card ``architecture`` keys :func:`build_discriminator` reads.
DISCRIMINATOR_KEYS = frozenset({"disc_channels", "disc_layers", "disc_norm"})


def build_discriminator(architecture: Mapping[str, Any], spatial_dims: int, in_channels: int) -> PatchGAN:
    """A PatchGAN from the card's ``architecture`` (``disc_channels`` default 64, ``disc_layers`` default 3,
    ``disc_norm`` default instance)."""
    return PatchGAN(spatial_dims, in_channels, int(architecture.get("disc_channels", 64)),
                    int(architecture.get("disc_layers", 3)), str(architecture.get("disc_norm", "instance")))
