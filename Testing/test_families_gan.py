"""The pix2pix and CycleGAN families: networks, training steps, losses, predictors."""

from __future__ import annotations

import contextlib

import pytest
import torch

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.families import get_family
from MedTranslateLib.families.base import InferenceOptions
from MedTranslateLib.families.losses import discriminator_loss, generator_adversarial_loss, masked_l1

from test_families_unet import arch, pair

SHAPES = [("2d", 2, (4, 1, 32, 32)), ("2.5d", 2, (2, 3, 32, 32)), ("3d", 3, (1, 1, 32, 16, 16))]




def train(name: str, dims: int, shape, steps: int, options=None, lr: float = 3e-3):
    torch.manual_seed(0)
    family = get_family(name)
    nets = family.build(arch(shape[1]), dims)
    optimizers = family.configure_optimizers(nets, lr)
    batch = pair(shape)
    history = [family.training_step(nets, optimizers, batch, contextlib.nullcontext, options or {})
               for _ in range(steps)]
    return family, nets, history


@pytest.mark.parametrize("dimensionality,dims,shape", SHAPES)
def test_pix2pix_trains_and_predicts(dimensionality, dims, shape):
    family, nets, history = train("pix2pix", dims, shape, 6)
    assert set(nets) == {"generator", "discriminator"} and family.inference_networks() == ("generator",)
    assert {"loss", "l1", "g_adv", "d"} <= set(history[0])
    assert history[-1]["l1"] < history[0]["l1"]
    predictor = family.make_predictor(nets, {}, InferenceOptions())
    x = torch.zeros((1, shape[1], *shape[2:]))
    assert predictor(x).shape == (1, 1, *shape[2:]) and not predictor.stochastic


@pytest.mark.parametrize("dimensionality,dims,shape", SHAPES)
def test_cyclegan_trains_and_predicts(dimensionality, dims, shape):
    family, nets, history = train("cyclegan", dims, shape, 6)
    assert not family.paired and family.inference_networks() == ("g_ab",)
    assert set(nets) == {"g_ab", "g_ba", "d_a", "d_b"}
    assert {"loss", "cycle", "identity", "g_adv", "d"} <= set(history[0])
    assert history[-1]["cycle"] < history[0]["cycle"]
    predictor = family.make_predictor(nets, {}, InferenceOptions())
    x = torch.randn((1, shape[1], *shape[2:]))
    with torch.no_grad():
        torch.testing.assert_close(predictor(x), nets["g_ab"].eval()(x))


def test_discriminator_accepts_small_patches():
    from MedTranslateLib.networks import build_discriminator

    for layers in (2, 3):
        disc = build_discriminator({"disc_channels": 4, "disc_layers": layers}, 3, 2)
        out = disc(torch.randn(2, 2, 8, 16, 40))
        assert out.shape[:2] == (2, 1) and min(out.shape[2:]) >= 1


def test_gan_options_hinge_and_weights():
    _, _, history = train("pix2pix", 2, (2, 1, 32, 32), 1, {"gan_loss": "hinge", "l1_weight": 0.0})
    assert history[0]["loss"] == pytest.approx(history[0]["g_adv"], abs=1e-5)
    _, _, history = train("cyclegan", 2, (2, 1, 32, 32), 1, {"identity_weight": 0.0, "cycle_weight": 1.0})
    expected = history[0]["g_adv"] + history[0]["cycle"]
    assert history[0]["loss"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ConfigError):
        train("pix2pix", 2, (2, 1, 32, 32), 1, {"gan_loss": "wasserstein"})


def test_loss_functions():
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert float(discriminator_loss(ones, zeros, "lsgan")) == 0.0
    assert float(discriminator_loss(zeros, ones, "lsgan")) == pytest.approx(1.0)
    assert float(discriminator_loss(ones, -ones, "hinge")) == 0.0
    assert float(generator_adversarial_loss(ones, "lsgan")) == 0.0
    assert float(generator_adversarial_loss(ones, "hinge")) == -1.0
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1
    prediction = torch.where(mask > 0, 1.0, 5.0)
    assert float(masked_l1(prediction, zeros, mask)) == pytest.approx(1.0)
    assert float(masked_l1(prediction, zeros, torch.zeros_like(mask))) == pytest.approx(3.0)
