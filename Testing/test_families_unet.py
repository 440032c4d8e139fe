"""The family registry, the U-Net generator and the ``unet`` family."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from MedTranslateLib.errors import ModelError
from MedTranslateLib.families import FAMILY_NAMES, get_family
from MedTranslateLib.families.base import InferenceOptions, pack_state, unpack_state
from MedTranslateLib.networks import build_discriminator, build_generator

TINY = {"features": [4, 8, 8, 8], "disc_channels": 4, "disc_layers": 2}




def arch(in_channels: int = 1, **extra) -> dict:
    return {"in_channels": in_channels, "out_channels": 1, **TINY, **extra}


def pair(shape, seed: int = 0) -> dict[str, torch.Tensor]:
    """A smooth synthetic source and its intensity-inverted target (a learnable mapping)."""
    torch.manual_seed(seed)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape[2:]], indexing="ij")
    base = sum(torch.sin(3 * g + i) for i, g in enumerate(grids)) / len(grids)
    source = base.expand(shape).clone() + 0.05 * torch.randn(shape)
    centre = shape[1] // 2
    target = (0.2 - 0.8 * source[:, centre:centre + 1]).clone()
    mask = torch.ones_like(target)
    return {"source": source, "target": target, "mask": mask}


def test_registry_names_and_unknown():
    assert FAMILY_NAMES == ("unet", "pix2pix", "cyclegan", "diffusion", "contourdiff", "bridge", "random_forest")
    assert get_family("unet").name == "unet"
    with pytest.raises(ModelError):
        get_family("transformer")


def test_generator_has_no_transposed_convolutions_and_keeps_shape():
    for dims, shape in ((2, (2, 3, 32, 32)), (3, (1, 1, 32, 16, 16))):
        net = build_generator(arch(shape[1]), dims).eval()
        assert not any(isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)) for m in net.modules())
        assert net(torch.zeros(shape)).shape == (shape[0], 1, *shape[2:])


def test_generator_pads_any_size_and_crops_back():
    net = build_generator(arch(), 3)  # training mode: batch norm needs > 1 value per channel at the bottom
    x = torch.randn(1, 1, 8, 16, 16, requires_grad=True)
    out = net(x)
    assert out.shape == x.shape
    out.mean().backward()
    assert x.grad is not None
    assert build_generator(arch(), 2)(torch.randn(2, 1, 21, 35)).shape == (2, 1, 21, 35)


def test_generator_options():
    net = build_generator(arch(dropout=0.2, residual=True, output_activation="tanh"), 2)
    assert any(isinstance(m, nn.Dropout2d | nn.Dropout) and m.p == 0.2 for m in net.modules())
    with torch.no_grad():
        assert float(net(torch.full((1, 1, 32, 32), 50.0)).abs().max()) <= 1.0
    with pytest.raises(ModelError):
        build_generator(arch(features=[4]), 2)
    with pytest.raises(ModelError):
        build_generator(arch(norm="layer"), 2)
    disc = build_discriminator(arch(), 2, 2)
    assert disc(torch.zeros(1, 2, 32, 32)).dim() == 4


def test_residual_generator_starts_near_the_centre_channel():
    net = build_generator(arch(3, residual=True), 2)
    for parameter in net.head.parameters():
        nn.init.zeros_(parameter)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(net(x), x[:, 1:2])


@pytest.mark.parametrize("dimensionality,dims,shape", [("2d", 2, (4, 1, 32, 32)), ("2.5d", 2, (4, 3, 32, 32)),
                                                        ("3d", 3, (1, 1, 32, 16, 16))])
def test_unet_trains_and_predicts(dimensionality, dims, shape):
    torch.manual_seed(0)
    family = get_family("unet")
    nets = family.build(arch(shape[1]), dims)
    optimizers = family.configure_optimizers(nets, 3e-3)
    batch = pair(shape)
    losses = [family.training_step(nets, optimizers, batch, contextlib.nullcontext, {})["l1"] for _ in range(6)]
    assert losses[-1] < losses[0]
    predictor = family.make_predictor(nets, {}, InferenceOptions())
    assert predictor.stochastic is False
    odd = torch.zeros((2, shape[1], *[s - 3 for s in shape[2:]]))
    assert predictor(odd).shape == (2, 1, *odd.shape[2:])


def test_unet_ssim_loss_option_and_state_round_trip():
    family = get_family("unet")
    nets = family.build(arch(), 2)
    optimizers = family.configure_optimizers(nets, 1e-3)
    losses = family.training_step(nets, optimizers, pair((2, 1, 32, 32)), contextlib.nullcontext,
                                  {"loss": "l1+ssim"})
    assert {"loss", "l1", "ssim"} <= set(losses) and losses["loss"] > losses["l1"]
    state = pack_state(nets, family.inference_networks())
    fresh = family.build(arch(), 2)
    unpack_state(fresh, state, family.inference_networks())
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(fresh["generator"].eval()(x), nets["generator"].eval()(x))


