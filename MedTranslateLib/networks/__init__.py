"""Network builders shared by the gradient-trained families (U-Net generator, PatchGAN discriminator)."""

from MedTranslateLib.networks.discriminator import DISCRIMINATOR_KEYS, build_discriminator
from MedTranslateLib.networks.unet import GENERATOR_KEYS, UNetGenerator, build_generator

__all__ = ["DISCRIMINATOR_KEYS", "GENERATOR_KEYS", "UNetGenerator", "build_discriminator", "build_generator"]
