"""PatchGAN discriminator (MONAI ``PatchDiscriminator``) returning only the patch logits."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn


class PatchGAN(nn.Module):
    """Wraps MONAI's ``PatchDiscriminator`` (which returns every layer's output) to return the logits map."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: int = 64, layers: int = 3,
                 norm: str = "instance") -> None:
        super().__init__()
        from monai.networks.nets import PatchDiscriminator

        self.net = PatchDiscriminator(spatial_dims=spatial_dims, num_layers_d=layers, channels=channels,
                                      in_channels=in_channels, out_channels=1, norm=norm.upper())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


def build_discriminator(architecture: Mapping[str, Any], spatial_dims: int, in_channels: int) -> PatchGAN:
    """A PatchGAN from the card's ``architecture`` (``disc_channels`` default 64, ``disc_layers`` default 3,
    ``disc_norm`` default instance)."""
    return PatchGAN(spatial_dims, in_channels, int(architecture.get("disc_channels", 64)),
                    int(architecture.get("disc_layers", 3)), str(architecture.get("disc_norm", "instance")))
