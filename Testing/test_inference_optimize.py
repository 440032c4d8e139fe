"""Inference rewrites (batch-norm folding, channels-last layout) keep every output and are used by the pipeline."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from MedTranslateLib.inference.optimize import (fold_batch_norms, optimize_for_inference, prefers_channels_last,
                                                uses_channels_last)
from MedTranslateLib.networks.unet import UNetGenerator


def _randomise_norm_statistics(net: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(module.num_features, generator=generator))
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator))


@pytest.mark.parametrize("dims", [2, 3])
def test_batch_norm_unet_is_folded_and_channels_last_with_the_same_output(dims):
    torch.manual_seed(0)
    net = UNetGenerator(dims, 1, 1, (4, 8, 16), norm="batch").eval()
    _randomise_norm_statistics(net)
    x = torch.randn((2, 1) + (20, 24, 16)[:dims] if dims == 3 else (3, 1, 40, 36))
    with torch.no_grad():
        before = net(x)
        layout = optimize_for_inference(net, torch.device("cpu"))
        after = net(x)
    assert layout.folded_norms == 12  # 3 levels: 2 x 3 encoder blocks, 2 x (1 up + 2) decoder blocks
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert layout.channels_last and uses_channels_last(net)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_instance_norm_network_keeps_its_layout_on_cpu_but_not_on_cuda():
    net = UNetGenerator(2, 1, 1, (4, 8, 16), norm="instance").eval()
    layout = optimize_for_inference(net, torch.device("cpu"))
    assert layout == type(layout)(0, False) and not uses_channels_last(net)
    assert prefers_channels_last(net, torch.device("cuda"))


def test_folding_refuses_a_network_in_training_mode():
    with pytest.raises(RuntimeError, match="evaluation mode"):
        fold_batch_norms(UNetGenerator(2, 1, 1, (4, 8, 16), norm="batch").train())


def test_plain_sequential_conv_then_norm_is_folded():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.ConvTranspose2d(5, 5, 2),
                        nn.BatchNorm2d(5)).eval()
    _randomise_norm_statistics(net)
    x = torch.randn(1, 2, 9, 9)
    with torch.no_grad():
        before = net(x)
        assert fold_batch_norms(net) == 1  # the transposed convolution is left alone
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    assert isinstance(net[1], nn.Identity) and isinstance(net[4], nn.BatchNorm2d)


def test_engine_feeds_channels_last_inputs_to_a_channels_last_network():
    from MedTranslateLib.families.unet import GeneratorPredictor
    from MedTranslateLib.inference.engine import predictor_channels_last

    net = UNetGenerator(2, 1, 1, (4, 8, 16), norm="batch").eval()
    assert predictor_channels_last(GeneratorPredictor(net)) is False
    optimize_for_inference(net, torch.device("cpu"))
    assert predictor_channels_last(GeneratorPredictor(net)) is True
    assert predictor_channels_last(object()) is None
