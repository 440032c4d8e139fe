"""Torch image filters and the voxel feature stack of the random-forest family (CPU or GPU).

``gaussian_smooth`` and ``sobel_gradients`` are shared with the ContourDiff contour maps. The feature stack
(:func:`voxel_features`) for a feature spec ``{"dims": 2|3, "radius": 1, "sigmas": [1.0, 2.0]}`` is, per voxel:
the intensities of the (2r+1)^dims neighbourhood, then for each sigma the Gaussian-smoothed intensity and the
gradient magnitude of the smoothed image. Boundaries use replicate padding.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F

from MedTranslateLib.errors import ConfigError

DEFAULT_FEATURE_SPEC: dict[str, Any] = {"dims": 3, "radius": 1, "sigmas": [1.0, 2.0]}


def _gaussian_kernel1d(sigma: float, device: torch.device) -> torch.Tensor:
    """Normalised 1D Gaussian kernel truncated at 3 sigma."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    coords = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_smooth(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of an (N, 1, *spatial) tensor with replicate padding."""
    if sigma <= 0:
        return image
    dims = image.dim() - 2
    kernel = _gaussian_kernel1d(sigma, image.device)
    radius = kernel.numel() // 2
    conv = F.conv2d if dims == 2 else F.conv3d
    out = image
    for axis in range(dims):
        shape = [1, 1] + [1] * dims
        shape[2 + axis] = kernel.numel()
        pads = [0, 0] * dims
        pads[2 * (dims - 1 - axis)] = radius
        pads[2 * (dims - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pads, mode="replicate"), kernel.view(shape))
    return out


def sobel_gradients(image: torch.Tensor) -> list[torch.Tensor]:
    """Sobel derivatives of an (N, 1, *spatial) tensor along each spatial axis (replicate padding)."""
    dims = image.dim() - 2
    device = image.device
    derivative = torch.tensor([-1.0, 0.0, 1.0], device=device)
    smoothing = torch.tensor([1.0, 2.0, 1.0], device=device)
    padded = F.pad(image, [1, 1] * dims, mode="replicate")
    conv = F.conv2d if dims == 2 else F.conv3d
    gradients = []
    for axis in range(dims):
        kernel = None
        for other in range(dims):
            vector = derivative if other == axis else smoothing
            shape = [1] * dims
            shape[other] = 3
            factor = vector.view(shape)
            kernel = factor if kernel is None else kernel * factor
        gradients.append(conv(padded, kernel.view([1, 1] + [3] * dims)))
    return gradients


def feature_spec(spec: Mapping[str, Any] | None, dims: int | None = None) -> dict[str, Any]:
    """A complete, validated feature spec (defaults filled in; ``dims`` overrides the spec's)."""
    full = {**DEFAULT_FEATURE_SPEC, **dict(spec or {})}
    if dims is not None:
        full["dims"] = int(dims)
    full["dims"] = int(full["dims"])
    full["radius"] = int(full["radius"])
    full["sigmas"] = [float(s) for s in full["sigmas"]]
    if full["dims"] not in (2, 3) or full["radius"] < 0 or any(s <= 0 for s in full["sigmas"]):
        raise ConfigError(f"Invalid random-forest feature spec {full}.",
                          "Use dims 2 or 3, radius >= 0 and positive sigmas.")
    return full


def feature_count(spec: Mapping[str, Any]) -> int:
    """Number of features per voxel for a (complete) spec."""
    return (2 * spec["radius"] + 1) ** spec["dims"] + 2 * len(spec["sigmas"])


def iter_feature_maps(image: torch.Tensor, spec: Mapping[str, Any]) -> Iterator[torch.Tensor]:
    """The feature maps of an (N, 1, *spatial) image one at a time, each (N, 1, *spatial), in a fixed order."""
    dims = spec["dims"]
    if image.dim() != dims + 2 or image.shape[1] != 1:
        raise ConfigError(f"Random-forest features expect (N, 1, *spatial) {dims}D input; got {tuple(image.shape)}.",
                          "Check the model's dimensionality.")
    radius = spec["radius"]
    image = image.float()
    padded = F.pad(image, [radius, radius] * dims, mode="replicate") if radius else image
    spatial = image.shape[2:]
    ranges = [range(2 * radius + 1)] * dims
    for offset in _product(ranges):
        index = (slice(None), slice(None)) + tuple(slice(o, o + n) for o, n in zip(offset, spatial))
        yield padded[index]
    for sigma in spec["sigmas"]:
        smoothed = gaussian_smooth(image, sigma)
        yield smoothed
        yield torch.sqrt(sum(g * g for g in sobel_gradients(smoothed)))


def _product(ranges: list[range]) -> Iterator[tuple[int, ...]]:
    if not ranges:
        yield ()
        return
    for first in ranges[0]:
        for rest in _product(ranges[1:]):
            yield (first,) + rest


def voxel_features(image: torch.Tensor, spec: Mapping[str, Any]) -> torch.Tensor:
    """All features of an (N, 1, *spatial) image as a (N * voxels, F) float32 matrix (voxels in C order)."""
    maps = [m.reshape(-1) for m in iter_feature_maps(image, spec)]
    return torch.stack(maps, dim=1)
