"""Conditional diffusion family: build, DDPM training lowers the loss, DDIM sampling is seeded and shaped."""

from __future__ import annotations

import contextlib
import time

import pytest
import torch

from MedTranslateLib.errors import ConfigError, ModelError
from MedTranslateLib.families import get_family, samplers
from MedTranslateLib.families.base import InferenceOptions, pack_state, unpack_state
from MedTranslateLib.families.diffusion import FAMILY

TINY = {"in_channels": 1, "out_channels": 1, "channels": [8, 16], "attention_levels": [False, False],
        "num_res_blocks": 1, "num_head_channels": 8, "norm_num_groups": 4, "train_timesteps": 1000}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def _pair(spatial: tuple[int, ...], batch: int = 4) -> dict[str, torch.Tensor]:
    axes = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in spatial], indexing="ij")
    source = (axes[-1] * axes[-2])[None, None].repeat((batch, 1) + (1,) * len(spatial))
    body = (sum(a * a for a in axes) < 0.8).float()[None, None].repeat((batch, 1) + (1,) * len(spatial))
    return {"source": source, "target": -0.8 * source, "mask": body}


def _train(arch: dict, spatial_dims: int, batch: dict, steps: int, options: dict | None = None) -> list[float]:
    nets = FAMILY.build(arch, spatial_dims)
    optimizers = FAMILY.configure_optimizers(nets, 2e-3)
    return [FAMILY.training_step(nets, optimizers, batch, contextlib.nullcontext, options or {})["loss"]
            for _ in range(steps)]


def test_family_registry_and_protocol():
    family = get_family("diffusion")
    assert family is FAMILY and family.paired and family.gradient_trained
    nets = family.build(TINY, 2)
    assert family.inference_networks() == ("denoiser",)
    assert set(family.configure_optimizers(nets, 1e-3)) == {"denoiser"}
    # condition by channel concatenation: [noisy target, source]
    assert nets["denoiser"].unet.conv_in.conv.in_channels == 2


def test_training_lowers_loss_2d():
    losses = _train(TINY, 2, _pair((32, 32)), 30)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_training_lowers_loss_3d_masked_and_v_prediction():
    arch = {**TINY, "prediction_type": "v_prediction"}
    losses = _train(arch, 3, _pair((16, 16, 16), batch=2), 20, {"masked_loss": True})
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4


def test_predictor_shape_seed_and_callback():
    nets = FAMILY.build(TINY, 2)
    calls: list[tuple[int, int]] = []
    predictor = FAMILY.make_predictor(nets, {"sampling": {"steps": 50}}, InferenceOptions(steps=4))
    predictor.step_callback = lambda i, n: calls.append((i, n))  # as the engine sets it
    assert predictor.stochastic and predictor.steps == 4
    source = torch.randn(3, 1, 30, 27)  # not a multiple of the network's size divisor
    a = predictor(source, torch.Generator().manual_seed(1))
    b = predictor(source, torch.Generator().manual_seed(1))
    c = predictor(source, torch.Generator().manual_seed(2))
    assert a.shape == (3, 1, 30, 27)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3
    assert calls[:4] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_card_steps_default_and_ddpm_sampler_3d():
    nets = FAMILY.build(TINY, 3)
    predictor = FAMILY.make_predictor(nets, {"sampling": {"steps": 3, "sampler": "ddpm"}}, InferenceOptions())
    assert predictor.steps == 3
    out = predictor(torch.randn(1, 1, 12, 16, 16), torch.Generator().manual_seed(0))
    assert out.shape == (1, 1, 12, 16, 16) and torch.isfinite(out).all()
    assert FAMILY.make_predictor(nets, {}, InferenceOptions()).steps == samplers.DEFAULT_STEPS


def test_bad_settings_raise_clear_errors():
    nets = FAMILY.build(TINY, 2)
    with pytest.raises(ModelError):
        FAMILY.make_predictor(nets, {"sampling": {"train_timesteps": 500}}, InferenceOptions())
    with pytest.raises(ConfigError):
        FAMILY.make_predictor(nets, {}, InferenceOptions(steps=5000))
    with pytest.raises(ConfigError):
        FAMILY.build({**TINY, "prediction_type": "x0"}, 2)
    with pytest.raises(ConfigError):
        FAMILY.build({**TINY, "norm_num_groups": 3}, 2)


def test_attention_heads_that_do_not_fit_are_refused_before_the_data_is_read(tmp_path, capsys):
    """MONAI's middle block always has attention: a last channels entry that is not a multiple of num_head_channels
    (default 32) crashed the run with MONAI's "num_channels must be divisible by num_head_channels" traceback after
    the data was loaded."""
    from MedTranslateLib.cli.main import main

    arch = '{"channels": [64, 128, 200], "norm_num_groups": 8}'
    code = main(["train", "--data", str(tmp_path / "not-read"), "--family", "diffusion", "--output",
                 str(tmp_path / "out"), "--set", f"architecture={arch}", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == ConfigError.exit_code and "not-read" not in err
    assert "channels[2] = 200 is not a multiple" in err and "num_head_channels = 32" in err
    assert "channels = [64, 128, 224], or num_head_channels = 25" in err
    # levels of attention_levels count too; the suggestions build
    with pytest.raises(ConfigError, match=r"channels\[0\] = 12 is not a multiple.*channels = \[16, 16\], or "
                                          r"num_head_channels = 4"):
        FAMILY.build({**TINY, "channels": [12, 16], "attention_levels": [True, False]}, 2)
    with pytest.raises(ConfigError, match=r"channels\[1\] = 12 .*channels = \[8, 16\], or num_head_channels = 6"):
        FAMILY.check_architecture({**TINY, "channels": [8, 12]})
    for fixed in ({"channels": [8, 16]}, {"num_head_channels": 6}):
        FAMILY.build({**TINY, "channels": [8, 12], **fixed}, 2)
    for family in ("contourdiff", "bridge"):
        with pytest.raises(ConfigError, match="num_head_channels"):
            get_family(family).check_architecture({"channels": [64, 128, 200], "norm_num_groups": 8})


def test_weights_round_trip_gives_identical_samples():
    nets = FAMILY.build(TINY, 2)
    state = pack_state(nets)
    assert all(key.startswith("denoiser.") for key in state)
    copy = FAMILY.build(TINY, 2)
    unpack_state(copy, state, FAMILY.inference_networks())
    source = torch.randn(2, 1, 16, 16)
    options = InferenceOptions(steps=3)
    a = FAMILY.make_predictor(nets, {}, options)(source, torch.Generator().manual_seed(5))
    b = FAMILY.make_predictor(copy, {}, options)(source, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_attention_levels_work():
    arch = {**TINY, "attention_levels": [False, True]}
    nets = FAMILY.build(arch, 2)
    out = nets["denoiser"](torch.randn(2, 1, 16, 16), torch.tensor([3, 900]), torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 1, 16, 16)


def test_attention_uses_fused_sdpa_with_the_einsum_result():
    """Every attention block runs torch's fused attention; the result equals MONAI's einsum path."""
    from monai.networks.nets import DiffusionModelUNet

    arch = {**TINY, "attention_levels": [False, True]}
    net = FAMILY.build(arch, 2)["denoiser"].eval()
    flags = [m.use_flash_attention for m in net.modules() if hasattr(m, "use_flash_attention")]
    assert flags and all(flags)
    plain = DiffusionModelUNet(spatial_dims=2, in_channels=2, out_channels=1, channels=(8, 16),
                               attention_levels=(False, True), num_res_blocks=1, num_head_channels=8,
                               norm_num_groups=4).eval()
    plain.load_state_dict(net.unet.state_dict())
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([3, 900]), torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, c), plain(torch.cat([x, c], 1), t), rtol=1e-4, atol=1e-5)


def test_sampling_time_per_slice_batch_vs_steps(capsys):
    """Report the time of one 2D slice batch (4 x 1 x 32 x 32, tiny network, CPU) against the step count."""
    nets = FAMILY.build(TINY, 2)
    source = torch.randn(4, 1, 32, 32)
    timings = {}
    for steps in (5, 10, 20, 50):
        predictor = FAMILY.make_predictor(nets, {}, InferenceOptions(steps=steps))
        start = time.perf_counter()
        predictor(source, torch.Generator().manual_seed(0))
        timings[steps] = time.perf_counter() - start
    with capsys.disabled():
        print("\nSampling time per 4-slice 32x32 batch: "
              + ", ".join(f"{s} steps {t:.2f} s" for s, t in timings.items()))
    assert timings[50] > timings[5]
