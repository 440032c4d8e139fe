"""Network builders shared by the gradient-trained families (U-Net generator, PatchGAN discriminator)."""

from MedTranslateLib.networks.discriminator import build_discriminator
from MedTranslateLib.networks.unet import UNetGenerator, build_generator

__all__ = ["UNetGenerator", "build_discriminator", "build_generator"]
