"""The ``cyclegan`` family: two U-Net generators and two PatchGANs trained on unpaired data.

``g_ab`` maps source -> target (used for inference), ``g_ba`` target -> source; ``d_a`` judges source-domain
images, ``d_b`` target-domain images. Training options: ``gan_loss`` ("lsgan" default | "hinge"),
``cycle_weight`` (default 10), ``identity_weight`` (default 0.5 * cycle_weight; 0 turns it off).
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


class CycleGANFamily:
    """Unpaired translation with cycle consistency (Zhu et al. 2017)."""

    name = "cyclegan"
    paired = False
    gradient_trained = True
    architecture_keys = GENERATOR_KEYS | DISCRIMINATOR_KEYS
    option_keys = frozenset({"gan_loss", "cycle_weight", "identity_weight"})

    @staticmethod
    def check_options(options: Mapping[str, Any]) -> None:
        """ConfigError for an unknown adversarial loss, before any data is read."""
        check_gan_loss(options.get("gan_loss", "lsgan"))

    def build(self, architecture: Mapping[str, Any], spatial_dims: int) -> dict[str, nn.Module]:
        c_a, c_b = int(architecture["in_channels"]), int(architecture["out_channels"])
        return {"g_ab": build_generator(architecture, spatial_dims),
                "g_ba": build_generator(architecture, spatial_dims, in_channels=c_b, out_channels=c_a),
                "d_a": build_discriminator(architecture, spatial_dims, c_a),
                "d_b": build_discriminator(architecture, spatial_dims, c_b)}

    def build_inference(self, architecture: Mapping[str, Any], spatial_dims: int) -> dict[str, nn.Module]:
        """The A -> B generator alone: the other generator and the discriminators (MONAI's) only train."""
        return {"g_ab": build_generator(architecture, spatial_dims)}

    def inference_networks(self) -> tuple[str, ...]:
        return ("g_ab",)

    def configure_optimizers(self, nets: dict[str, nn.Module], lr: float) -> dict[str, torch.optim.Optimizer]:
        generators = list(nets["g_ab"].parameters()) + list(nets["g_ba"].parameters())
        discriminators = list(nets["d_a"].parameters()) + list(nets["d_b"].parameters())
        return {"generators": torch.optim.Adam(generators, lr=lr, betas=(0.5, 0.999)),
                "discriminators": torch.optim.Adam(discriminators, lr=lr, betas=(0.5, 0.999))}

    def training_step(self, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                      batch: Batch, autocast: Callable[[], Any], options: Mapping[str, Any]) -> dict[str, float]:
        kind = check_gan_loss(options.get("gan_loss", "lsgan"))
        cycle_weight = float(options.get("cycle_weight", 10.0))
        identity_weight = float(options.get("identity_weight", 0.5 * cycle_weight))
        real_a, real_b = batch["source"], batch["target"]
        g_ab, g_ba, d_a, d_b = nets["g_ab"], nets["g_ba"], nets["d_a"], nets["d_b"]
        c_a, c_b = real_a.shape[1], real_b.shape[1]

        # generator step
        set_requires_grad(d_a, False)
        set_requires_grad(d_b, False)
        optimizers["generators"].zero_grad(set_to_none=True)
        with autocast():
            fake_b = g_ab(real_a)
            fake_a = g_ba(real_b)
            rec_a = g_ba(fake_b)
            rec_b = g_ab(fake_a)
            adv = (generator_adversarial_loss(d_b(fake_b), kind) + generator_adversarial_loss(d_a(fake_a), kind))
            identity = torch.zeros((), device=real_a.device)
            if identity_weight > 0:
                # g_ab given a target-domain image (repeated to the source channels) should leave it unchanged
                repeats = (1, -(-c_a // c_b)) + (1,) * (real_b.dim() - 2)
                same_b = g_ab(real_b.repeat(repeats)[:, :c_a])
                centre = c_a // 2
                same_a = g_ba(real_a[:, centre:centre + c_b])
                identity = masked_l1(same_b.float(), real_b) + masked_l1(same_a.float(), real_a)
        cycle = masked_l1(rec_a.float(), real_a) + masked_l1(rec_b.float(), real_b)
        loss_g = adv.float() + cycle_weight * cycle + identity_weight * identity
        loss_g.backward()
        optimizers["generators"].step()

        # discriminator step
        set_requires_grad(d_a, True)
        set_requires_grad(d_b, True)
        optimizers["discriminators"].zero_grad(set_to_none=True)
        with autocast():
            loss_d = (discriminator_loss(d_b(real_b), d_b(fake_b.detach().to(real_b.dtype)), kind)
                      + discriminator_loss(d_a(real_a), d_a(fake_a.detach().to(real_a.dtype)), kind))
        loss_d.backward()
        optimizers["discriminators"].step()
        return {"loss": float(loss_g.detach()), "cycle": float(cycle.detach()),
                "identity": float(identity.detach()), "g_adv": float(adv.detach()), "d": float(loss_d.detach())}

    def make_predictor(self, nets: dict[str, nn.Module], card: Mapping[str, Any],
                       options: InferenceOptions) -> GeneratorPredictor:
        return GeneratorPredictor(nets["g_ab"])


FAMILY = CycleGANFamily()
