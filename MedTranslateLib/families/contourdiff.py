"""The ``contourdiff`` family (ContourDiff idea): unpaired translation with a diffusion model of the TARGET
modality conditioned on a contour (edge) map.

Training uses target images only: the condition is the target's own contour map. At inference the condition
is the contour map of the SOURCE image, so the sampled target keeps the source anatomy without paired data.

The contour map is modality-agnostic: each image is smoothed, its Sobel gradient magnitude is computed, and
a voxel is an edge when its gradient lies in the top ``edge_fraction`` of the gradients inside the image's
foreground (estimated the same way for every modality, from the image's own intensity percentiles); in 2D the
edges are thinned by non-maximum suppression along the gradient direction. All torch ops, so it runs on the
GPU too. Architecture keys are those of the ``diffusion`` family plus ``edge_fraction`` (default 0.2) and ``edge_sigma`` (default 1.0 voxel).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from MedTranslateLib.families.base import Batch
from MedTranslateLib.families.features import gaussian_smooth, sobel_gradients
from MedTranslateLib.families.diffusion import ConditionalDenoiser, ConditionalDiffusionFamily

DEFAULT_EDGE_FRACTION = 0.2
DEFAULT_EDGE_SIGMA = 1.0
_MAX_QUANTILE_VALUES = 1_000_000  # torch.quantile input limit is 16M; subsample beyond this


def _percentiles(image: torch.Tensor, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample low / high quantiles of an (N, ...) tensor, shaped to broadcast against it."""
    flat = image.flatten(1)
    if flat.shape[1] > _MAX_QUANTILE_VALUES:
        flat = flat[:, :: int(math.ceil(flat.shape[1] / _MAX_QUANTILE_VALUES))]
    levels = torch.quantile(flat, torch.tensor([low, high], device=image.device), dim=1)  # (2, N)
    shape = [-1] + [1] * (image.dim() - 1)
    return levels[0].view(shape), levels[1].view(shape)


def _foreground(image: torch.Tensor) -> torch.Tensor:
    """Foreground estimate per sample: above 10 % of the 1st-99th percentile range (any modality)."""
    low, high = _percentiles(image, 0.01, 0.99)
    return image > low + 0.1 * (high - low)


def _non_maximum_suppression_2d(magnitude: torch.Tensor, gy: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """Keep voxels whose gradient magnitude is a local maximum along the (quantised) gradient direction."""
    angle = torch.atan2(gy, gx)
    sector = torch.round(angle / (math.pi / 4)).long() % 4  # 0: x, 1: diagonal, 2: y, 3: anti-diagonal
    padded = F.pad(magnitude, [1, 1, 1, 1], mode="replicate")
    h, w = magnitude.shape[-2:]

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    offsets = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for index, (dy, dx) in offsets.items():
        is_max = (magnitude >= shifted(dy, dx)) & (magnitude >= shifted(-dy, -dx))
        keep |= (sector == index) & is_max
    return keep


def contour_map(image: torch.Tensor, edge_fraction: float = DEFAULT_EDGE_FRACTION,
                sigma: float = DEFAULT_EDGE_SIGMA, thin: bool = True) -> torch.Tensor:
    """Binary contour map (0/1 float, shape (N, 1, *spatial)) of an (N, C, *spatial) image batch.

    The central channel is used (2.5D context stacks); intensities are rescaled per sample to [0, 1] by their
    1st/99th percentiles, so the map does not depend on the modality's intensity scale. Edges are the
    voxels whose gradient magnitude is in the top ``edge_fraction`` of the foreground's gradients; in 2D they
    are thinned by non-maximum suppression.
    """
    with torch.no_grad():
        channel = image.shape[1] // 2
        x = image[:, channel:channel + 1].float()
        low, high = _percentiles(x, 0.01, 0.99)
        x = ((x - low) / (high - low).clamp_min(1e-6)).clamp(0.0, 1.0)
        smoothed = gaussian_smooth(x, sigma)
        gradients = sobel_gradients(smoothed)
        magnitude = torch.sqrt(sum(g * g for g in gradients))
        # gradients near the body outline belong to the anatomy: widen the foreground by the Sobel reach
        foreground = _foreground(smoothed)
        dims = x.dim() - 2
        pool = F.max_pool2d if dims == 2 else F.max_pool3d
        region = pool(foreground.float(), kernel_size=5, stride=1, padding=2) > 0
        edges = torch.zeros_like(magnitude)
        for n in range(x.shape[0]):
            values = magnitude[n][region[n]]
            if values.numel() < 10 or float(values.max()) <= 0:
                continue
            if values.numel() > _MAX_QUANTILE_VALUES:
                values = values[:: int(math.ceil(values.numel() / _MAX_QUANTILE_VALUES))]
            threshold = torch.quantile(values, 1.0 - float(edge_fraction))
            edges[n] = ((magnitude[n] > threshold) & region[n] & (magnitude[n] > 1e-3)).float()
        if thin and dims == 2:
            edges = edges * _non_maximum_suppression_2d(magnitude, gradients[0], gradients[1]).float()
        return edges


class ContourDiffFamily(ConditionalDiffusionFamily):
    """Unpaired diffusion of the target modality conditioned on contour maps."""

    name = "contourdiff"
    paired = False
    trains_on_source = False  # the condition is the target's own contour map: source settings do nothing
    architecture_keys = ConditionalDiffusionFamily.architecture_keys | {"edge_fraction", "edge_sigma"}
    condition_pad_mode = "constant"

    def condition_channels(self, architecture: Mapping[str, Any]) -> int:
        return 1

    def build(self, architecture: Mapping[str, Any], spatial_dims: int) -> dict[str, nn.Module]:
        nets = super().build(architecture, spatial_dims)
        net = nets[self.network_name]
        net.edge_fraction = float(architecture.get("edge_fraction", DEFAULT_EDGE_FRACTION))
        net.edge_sigma = float(architecture.get("edge_sigma", DEFAULT_EDGE_SIGMA))
        return nets

    def training_condition(self, batch: Batch, net: ConditionalDenoiser) -> torch.Tensor:
        """The target's own contour map (only target images are needed)."""
        return contour_map(batch["target"], net.edge_fraction, net.edge_sigma)

    def inference_condition(self, source: torch.Tensor, net: ConditionalDenoiser) -> torch.Tensor:
        """The source image's contour map."""
        return contour_map(source, net.edge_fraction, net.edge_sigma)


FAMILY = ContourDiffFamily()
