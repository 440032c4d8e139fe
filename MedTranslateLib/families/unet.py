"""The ``unet`` family: a U-Net generator trained with a (body-masked) L1 loss, optionally + SSIM.

Also defines :class:`GeneratorPredictor`, the predictor the pix2pix and CycleGAN families share.
Training options: ``loss`` ("l1" | "l1+ssim"), ``ssim_weight`` (default 0.5 with "l1+ssim").
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.families.base import Batch, InferenceOptions
from MedTranslateLib.families.losses import masked_l1, masked_ssim_loss
from MedTranslateLib.networks import GENERATOR_KEYS, build_generator

class GeneratorPredictor:
    """Runs a generator (in eval mode) on a normalised batch; the generator pads to its size divisor and crops
    back itself. Deterministic: the engine's per-sample generator is ignored."""

    stochastic = False

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def to(self, device: torch.device | str) -> "GeneratorPredictor":
        """Move the network (the engine's CPU fallback after running out of GPU memory)."""
        self.net.to(device)
        return self

    def __call__(self, source: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.net.eval()
        return self.net(source)


class UNetFamily:
    """Supervised U-Net (paired data)."""

    name = "unet"
    paired = True
    gradient_trained = True
    architecture_keys = GENERATOR_KEYS
    option_keys = frozenset({"loss", "ssim_weight"})

    def build(self, architecture: Mapping[str, Any], spatial_dims: int) -> dict[str, nn.Module]:
        return {"generator": build_generator(architecture, spatial_dims)}

    def inference_networks(self) -> tuple[str, ...]:
        return ("generator",)

    def configure_optimizers(self, nets: dict[str, nn.Module], lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"generator": torch.optim.AdamW(nets["generator"].parameters(), lr=lr, weight_decay=1e-4)}

    @staticmethod
    def check_options(options: Mapping[str, Any]) -> str:
        """The loss named by ``options`` (ConfigError for an unknown one, before any data is read)."""
        loss_kind = str(options.get("loss", "l1")).lower()
        if loss_kind not in ("l1", "l1+ssim"):
            raise ConfigError(f"Unknown unet loss '{loss_kind}'.", "Use 'l1' or 'l1+ssim'.")
        return loss_kind

    def training_step(self, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                      batch: Batch, autocast: Callable[[], Any], options: Mapping[str, Any]) -> dict[str, float]:
        loss_kind = self.check_options(options)
        ssim_weight = float(options.get("ssim_weight", 0.5 if loss_kind == "l1+ssim" else 0.0))
        source, target, mask = batch["source"], batch["target"], batch.get("mask")
        optimizer = optimizers["generator"]
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            prediction = nets["generator"](source)
        prediction = prediction.float()
        l1 = masked_l1(prediction, target, mask)
        losses = {"l1": l1}
        total = l1
        if ssim_weight > 0:
            ssim = masked_ssim_loss(prediction, target, mask, source.dim() - 2)
            losses["ssim"] = ssim
            total = total + ssim_weight * ssim
        total.backward()
        optimizer.step()
        return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}}

    def make_predictor(self, nets: dict[str, nn.Module], card: Mapping[str, Any],
                       options: InferenceOptions) -> GeneratorPredictor:
        return GeneratorPredictor(nets["generator"])


FAMILY = UNetFamily()
