"""Inference-only rewrites of a loaded network that keep its outputs and make it faster.

* **Batch-norm folding**: in evaluation mode a batch norm is an affine map per channel, so it is merged into
  the convolution before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and replaced by an identity: one
  memory pass less per layer. Only a convolution *immediately* followed by its norm in an ``nn.Sequential``
  is folded (the blocks of :mod:`MedTranslateLib.networks.unet`).
* **Channels-last memory layout** for 2D/3D convolutions: oneDNN (CPU) and cuDNN (GPU tensor cores) run
  convolutions fastest in NHWC/NDHWC. On the CPU it only pays when no instance/group/layer norm is left
  (those kernels convert back to the default layout, which costs more than it saves); on CUDA it is always used.

The figures (before/after) are in BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LAYOUT_HOSTILE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class InferenceLayout:
    """What :func:`optimize_for_inference` did to one network."""

    folded_norms: int
    channels_last: bool


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (isinstance(conv, _CONVS) and not isinstance(conv, nn.modules.conv._ConvTransposeNd)
            and isinstance(norm, _BATCH_NORMS) and norm.track_running_stats and norm.running_mean is not None
            and norm.num_features == conv.out_channels)


def fold_batch_norms(net: nn.Module) -> int:
    """Merge every batch norm that directly follows a convolution into it (evaluation mode only).

    Returns the number of norms folded. The network must not be trained afterwards (its norms are gone)."""
    if net.training:
        raise RuntimeError("fold_batch_norms needs a network in evaluation mode (call net.eval() first).")
    folded = 0
    with torch.no_grad():
        for module in list(net.modules()):
            if isinstance(module, nn.Sequential):
                names = list(module._modules)
                for first, second in zip(names, names[1:]):
                    conv, norm = module._modules[first], module._modules[second]
                    if _foldable(conv, norm):
                        module._modules[first] = fuse_conv_bn_eval(conv, norm)
                        module._modules[second] = nn.Identity()
                        folded += 1
    return folded


def prefers_channels_last(net: nn.Module, device: torch.device) -> bool:
    """Whether ``net`` runs faster in channels-last layout on ``device`` (see the module docstring)."""
    has_conv = any(isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in net.modules())
    if not has_conv:
        return False
    if torch.device(device).type == "cuda":
        return True
    return not any(isinstance(m, _LAYOUT_HOSTILE_NORMS) for m in net.modules())


def uses_channels_last(net: nn.Module) -> bool:
    """Whether the 2D/3D convolution weights of ``net`` are stored channels-last (judged on the first weight
    whose two layouts differ: a single-channel weight is contiguous in both)."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            layout = torch.channels_last if module.weight.dim() == 4 else torch.channels_last_3d
            weight = module.weight
            if weight.is_contiguous() != weight.is_contiguous(memory_format=layout):
                return weight.is_contiguous(memory_format=layout)
    return False


def to_channels_last(net: nn.Module) -> nn.Module:
    """Convert the 4D (and 5D) parameters of ``net`` to channels-last in place."""
    for module in net.modules():
        for name, param in module.named_parameters(recurse=False):
            layout = {4: torch.channels_last, 5: torch.channels_last_3d}.get(param.dim())
            if layout is not None:
                param.data = param.data.contiguous(memory_format=layout)
    return net


def optimize_for_inference(net: nn.Module, device: torch.device) -> InferenceLayout:
    """Fold batch norms and pick the memory layout for ``net`` (already on ``device``, in evaluation mode)."""
    folded = fold_batch_norms(net)
    channels_last = prefers_channels_last(net, device)
    if channels_last:
        to_channels_last(net)
    return InferenceLayout(folded, channels_last)
