"""A MONAI-free copy of MONAI's ``BasicUNet`` with ``upsample="nontrainable"``: the same modules, the same
parameter names (so the same ``weights.safetensors`` load) and the same arithmetic.

Why: ``import monai`` loads all of MONAI (transforms, apps, scipy.signal, skimage, matplotlib...): about
2-5 s of every ``medtranslate translate`` start on a 2-core CPU, more than all the stages of a
256 x 256 x 160 translation with the default model. ``Testing/test_performance_unet.py`` checks that the
state-dict keys and outputs equal MONAI's for every norm and both dimensionalities.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

NormSpec = Any  # None, a name ("instance", "batch", "group") or (name, kwargs) as MONAI takes it


def _norm(spec: NormSpec, dims: int, channels: int) -> nn.Module | None:
    """The normalisation layer MONAI's ``Norm`` factory makes for ``spec``."""
    if spec is None:
        return None
    name, kwargs = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
    name = name.lower()
    if name == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, **kwargs)
    if name == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels, **kwargs)
    if name == "group":
        return nn.GroupNorm(num_channels=channels, **kwargs)
    raise ValueError(f"unsupported norm {spec!r}")


class ADN(nn.Sequential):
    """Norm ("N", when given), dropout ("D") and LeakyReLU(0.1) ("A"), in MONAI's "NDA" order."""

    def __init__(self, dims: int, channels: int, norm: NormSpec, dropout: float) -> None:
        super().__init__()
        layer = _norm(norm, dims, channels)
        if layer is not None:
            self.add_module("N", layer)
        self.add_module("D", nn.Dropout(float(dropout)))
        self.add_module("A", nn.LeakyReLU(negative_slope=0.1, inplace=True))


class Convolution(nn.Sequential):
    """A 3 x 3 (x 3) convolution, padding 1, then :class:`ADN`."""

    def __init__(self, dims: int, c_in: int, c_out: int, norm: NormSpec, dropout: float, bias: bool) -> None:
        super().__init__()
        self.add_module("conv", (nn.Conv2d if dims == 2 else nn.Conv3d)(c_in, c_out, 3, padding=1, bias=bias))
        self.add_module("adn", ADN(dims, c_out, norm, dropout))


class TwoConv(nn.Sequential):
    def __init__(self, dims: int, c_in: int, c_out: int, norm: NormSpec, dropout: float, bias: bool) -> None:
        super().__init__()
        self.add_module("conv_0", Convolution(dims, c_in, c_out, norm, dropout, bias))
        self.add_module("conv_1", Convolution(dims, c_out, c_out, norm, dropout, bias))


class Down(nn.Sequential):
    def __init__(self, dims: int, c_in: int, c_out: int, norm: NormSpec, dropout: float, bias: bool) -> None:
        super().__init__()
        self.add_module("max_pooling", (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(kernel_size=2))
        self.add_module("convs", TwoConv(dims, c_in, c_out, norm, dropout, bias))


class UpSample(nn.Sequential):
    """A 1 x 1 convolution ("preconv", only when the channel count changes), then (bi/tri)linear x2."""

    def __init__(self, dims: int, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_in != c_out:
            self.add_module("preconv", (nn.Conv2d if dims == 2 else nn.Conv3d)(c_in, c_out, 1, bias=True))
        self.add_module("upsample_non_trainable", nn.Upsample(scale_factor=(2.0,) * dims,
                                                              mode="bilinear" if dims == 2 else "trilinear",
                                                              align_corners=True))


class UpCat(nn.Module):
    """Upsample, pad by one (replicate) where the encoder map is larger, concatenate, two convolutions."""

    def __init__(self, dims: int, c_in: int, c_cat: int, c_out: int, norm: NormSpec, dropout: float, bias: bool,
                 halves: bool = True) -> None:
        super().__init__()
        up = c_in // 2 if halves else c_in
        self.upsample = UpSample(dims, c_in, up)
        self.convs = TwoConv(dims, c_cat + up, c_out, norm, dropout, bias)

    def forward(self, x: torch.Tensor, x_e: torch.Tensor) -> torch.Tensor:
        x_0 = self.upsample(x)
        dims = x.dim() - 2
        pads = [0] * (2 * dims)
        for i in range(dims):
            if x_e.shape[-i - 1] != x_0.shape[-i - 1]:
                pads[2 * i + 1] = 1
        if any(pads):
            x_0 = torch.nn.functional.pad(x_0, pads, "replicate")
        return self.convs(torch.cat([x_e, x_0], dim=1))


class BasicUNet(nn.Module):
    """MONAI ``BasicUNet(spatial_dims, in_channels, out_channels, features, norm=norm, dropout=dropout,
    upsample="nontrainable")`` with LeakyReLU(0.1) and biases (its defaults)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, features: Sequence[int],
                 norm: NormSpec = ("instance", {"affine": True}), dropout: float = 0.0, bias: bool = True,
                 upsample: str = "nontrainable") -> None:
        super().__init__()
        if upsample != "nontrainable":
            raise ValueError(f"only upsample='nontrainable' is implemented, not {upsample!r}")
        f = [int(v) for v in features]
        d, args = int(spatial_dims), (norm, float(dropout), bool(bias))
        self.conv_0 = TwoConv(d, in_channels, f[0], *args)
        self.down_1 = Down(d, f[0], f[1], *args)
        self.down_2 = Down(d, f[1], f[2], *args)
        self.down_3 = Down(d, f[2], f[3], *args)
        self.down_4 = Down(d, f[3], f[4], *args)
        self.upcat_4 = UpCat(d, f[4], f[3], f[3], *args)
        self.upcat_3 = UpCat(d, f[3], f[2], f[2], *args)
        self.upcat_2 = UpCat(d, f[2], f[1], f[1], *args)
        self.upcat_1 = UpCat(d, f[1], f[0], f[5], *args, halves=False)
        self.final_conv = (nn.Conv2d if d == 2 else nn.Conv3d)(f[5], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        u4 = self.upcat_4(x4, x3)
        u3 = self.upcat_3(u4, x2)
        u2 = self.upcat_2(u3, x1)
        u1 = self.upcat_1(u2, x0)
        return self.final_conv(u1)
