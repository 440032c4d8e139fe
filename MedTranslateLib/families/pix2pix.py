"""The ``pix2pix`` family: U-Net generator + PatchGAN on the concatenated (source, target) pair.

Training options: ``gan_loss`` ("lsgan" default | "hinge"), ``l1_weight`` (default 100).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from MedTranslateLib.families.base import Batch, InferenceOptions
from MedTranslateLib.families.losses import (check_gan_loss, discriminator_loss, generator_adversarial_loss,
                                             masked_l1, set_requires_grad)
from MedTranslateLib.families.unet import GeneratorPredictor
from MedTranslateLib.networks import DISCRIMINATOR_KEYS, GENERATOR_KEYS, build_discriminator, build_generator


class Pix2PixFamily:
    """Conditional GAN for paired data (Isola et al. 2017)."""

    name = "pix2pix"
    paired = True
    gradient_trained = True
    architecture_keys = GENERATOR_KEYS | DISCRIMINATOR_KEYS
    option_keys = frozenset({"gan_loss", "l1_weight"})

    @staticmethod
    def check_options(options: Mapping[str, Any]) -> None:
        """ConfigError for an unknown adversarial loss, before any data is read."""
        check_gan_loss(options.get("gan_loss", "lsgan"))

    def build(self, architecture: Mapping[str, Any], spatial_dims: int) -> dict[str, nn.Module]:
        pair_channels = int(architecture["in_channels"]) + int(architecture["out_channels"])
        return {"generator": build_generator(architecture, spatial_dims),
                "discriminator": build_discriminator(architecture, spatial_dims, pair_channels)}

    def build_inference(self, architecture: Mapping[str, Any], spatial_dims: int) -> dict[str, nn.Module]:
        """The generator alone: the discriminator (MONAI's, whose import takes seconds) only trains."""
        return {"generator": build_generator(architecture, spatial_dims)}

    def inference_networks(self) -> tuple[str, ...]:
        return ("generator",)

    def configure_optimizers(self, nets: dict[str, nn.Module], lr: float) -> dict[str, torch.optim.Optimizer]:
        return {name: torch.optim.Adam(nets[name].parameters(), lr=lr, betas=(0.5, 0.999))
                for name in ("generator", "discriminator")}

    def training_step(self, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                      batch: Batch, autocast: Callable[[], Any], options: Mapping[str, Any]) -> dict[str, float]:
        kind = check_gan_loss(options.get("gan_loss", "lsgan"))
        l1_weight = float(options.get("l1_weight", 100.0))
        source, target, mask = batch["source"], batch["target"], batch.get("mask")
        generator, discriminator = nets["generator"], nets["discriminator"]

        with autocast():
            fake = generator(source)
        # discriminator step: real pairs -> real, generated pairs -> fake
        set_requires_grad(discriminator, True)
        optimizers["discriminator"].zero_grad(set_to_none=True)
        with autocast():
            real_logits = discriminator(torch.cat([source, target], dim=1))
            fake_logits = discriminator(torch.cat([source, fake.detach().to(source.dtype)], dim=1))
        loss_d = discriminator_loss(real_logits, fake_logits, kind)
        loss_d.backward()
        optimizers["discriminator"].step()

        # generator step: fool the discriminator and stay close to the target
        set_requires_grad(discriminator, False)
        optimizers["generator"].zero_grad(set_to_none=True)
        with autocast():
            fake_logits = discriminator(torch.cat([source, fake.to(source.dtype)], dim=1))
        adversarial = generator_adversarial_loss(fake_logits, kind)
        l1 = masked_l1(fake.float(), target, mask)
        loss_g = adversarial + l1_weight * l1
        loss_g.backward()
        optimizers["generator"].step()
        set_requires_grad(discriminator, True)
        return {"loss": float(loss_g.detach()), "l1": float(l1.detach()), "g_adv": float(adversarial.detach()),
                "d": float(loss_d.detach())}

    def make_predictor(self, nets: dict[str, nn.Module], card: Mapping[str, Any],
                       options: InferenceOptions) -> GeneratorPredictor:
        return GeneratorPredictor(nets["generator"])


FAMILY = Pix2PixFamily()
