"""Losses shared by the U-Net, pix2pix and CycleGAN families (masked L1, masked SSIM, adversarial)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from MedTranslateLib.errors import ConfigError

GAN_LOSSES = ("lsgan", "hinge")


def _weights(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The body mask broadcast to ``like`` (all ones when absent or empty)."""
    if mask is None or float(mask.sum()) < 1.0:
        return torch.ones_like(like)
    return mask.to(like.dtype).expand_as(like)


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error inside the mask (over all voxels when the mask is absent or empty)."""
    weights = _weights(mask, prediction)
    return ((prediction - target).abs() * weights).sum() / weights.sum()


def masked_ssim_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                     spatial_dims: int) -> torch.Tensor:
    """1 - SSIM (MONAI ``SSIMLoss``, data range 2 for [-1, 1]); voxels outside the mask are set to the
    target so they count as perfect matches."""
    from monai.losses import SSIMLoss

    weights = _weights(mask, prediction)
    blended = prediction * weights + target * (1 - weights)
    loss = SSIMLoss(spatial_dims=spatial_dims, data_range=2.0, win_size=min(7, *prediction.shape[2:]))
    return loss(blended.float(), target.float())


def check_gan_loss(kind: str) -> str:
    """Validate the adversarial loss name."""
    kind = str(kind).lower()
    if kind not in GAN_LOSSES:
        raise ConfigError(f"Unknown adversarial loss '{kind}'.", f"Use one of: {', '.join(GAN_LOSSES)}.")
    return kind


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "lsgan") -> torch.Tensor:
    """Discriminator loss: least squares (real -> 1, fake -> 0, halved) or hinge."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if check_gan_loss(kind) == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return 0.5 * (F.mse_loss(real_logits, torch.ones_like(real_logits))
                  + F.mse_loss(fake_logits, torch.zeros_like(fake_logits)))


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: str = "lsgan") -> torch.Tensor:
    """Generator's adversarial loss: least squares (fake -> 1) or hinge (-D(fake))."""
    fake_logits = fake_logits.float()
    if check_gan_loss(kind) == "hinge":
        return -fake_logits.mean()
    return F.mse_loss(fake_logits, torch.ones_like(fake_logits))


def set_requires_grad(net: torch.nn.Module, flag: bool) -> None:
    """Freeze or unfreeze a network (the discriminator during the generator step)."""
    for parameter in net.parameters():
        parameter.requires_grad_(flag)
