"""Diffusion samplers: correct noise levels (checked against the exact denoiser of Gaussian data), timestep
spacing, validation, determinism and the --sampler option."""

from __future__ import annotations

import math

import pytest
import torch

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.families import samplers
from MedTranslateLib.families.base import InferenceOptions
from MedTranslateLib.families.diffusion import FAMILY

MEAN, STD = 0.3, 0.2  # the "data": independent Gaussian pixels
SHAPE = (4, 1, 64, 64)


def exact_denoiser(prediction_type: str):
    """The optimal network for Gaussian data: its noise (or velocity) prediction from E[x0 | x_t] in closed form."""
    levels = samplers.make_train_scheduler(1000, prediction_type).alphas_cumprod.double()

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        level = float(levels[int(t[0])])
        alpha, sigma = math.sqrt(level), math.sqrt(1.0 - level)
        clean = MEAN + alpha * STD ** 2 / (level * STD ** 2 + sigma ** 2) * (x - alpha * MEAN)
        noise = (x - alpha * clean) / sigma
        return noise if prediction_type == "epsilon" else alpha * noise - sigma * clean

    return denoise


def draw(sampler: str, steps: int, prediction_type: str = "epsilon", seed: int = 0) -> torch.Tensor:
    schedule = samplers.make_sampling_schedule(sampler, steps, prediction_type=prediction_type)
    return samplers.sample(exact_denoiser(prediction_type), SHAPE, schedule, torch.Generator().manual_seed(seed),
                           "cpu")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpm_solver_reaches_the_data_distribution_in_ten_steps(prediction_type):
    """With the exact denoiser, the ODE solution maps noise onto the data: a sampler that steps to the wrong noise
    level (MONAI 1.6's DDIM stride) leaves noise behind (std 0.24 at 5 steps) or shrinks the spread."""
    for steps in (10, 20):
        out = draw("dpm++2m", steps, prediction_type)
        assert abs(float(out.mean()) - MEAN) < 0.01
        assert abs(float(out.std()) - STD) < 0.05 * STD, (steps, float(out.std()))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_first_order_samplers_converge_and_leave_no_noise(sampler):
    spreads = []
    for steps in (5, 20, 50):
        out = draw(sampler, steps)
        assert abs(float(out.mean()) - MEAN) < 0.01
        spreads.append(float(out.std()))
    assert max(spreads) < 1.05 * STD  # never noisier than the data
    assert spreads[0] < spreads[1] < spreads[2]  # more steps, closer to the data's spread
    if sampler == "ddim":
        assert spreads[2] > 0.9 * STD


def test_exact_clean_estimate_is_returned_exactly():
    clean = torch.rand(SHAPE) * 2 - 1
    levels = samplers.make_train_scheduler(1000).alphas_cumprod.double()

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        level = float(levels[int(t[0])])
        return (x - math.sqrt(level) * clean) / math.sqrt(1.0 - level)

    for sampler in samplers.SAMPLERS:
        schedule = samplers.make_sampling_schedule(sampler, 5)
        out = samplers.sample(oracle, SHAPE, schedule, torch.Generator().manual_seed(0), "cpu")
        torch.testing.assert_close(out, clean, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20, 50, 333, 1000])
def test_timesteps_are_distinct_descending_from_top_to_zero(steps):
    for schedule in ("linear_beta", "scaled_linear_beta", "cosine"):
        levels = samplers.make_train_scheduler(1000, schedule=schedule).alphas_cumprod.double()
        t = samplers.sampling_timesteps(steps, levels).tolist()
        assert len(t) == steps and t[0] == 999 and (steps == 1 or t[-1] == 0)
        assert all(a > b for a, b in zip(t, t[1:]))


def test_timesteps_are_even_in_log_snr():
    levels = samplers.make_train_scheduler(1000).alphas_cumprod.double()
    t = samplers.sampling_timesteps(10, levels)
    log_snr = torch.log(levels[t] / (1 - levels[t]))
    gaps = log_snr[1:] - log_snr[:-1]
    assert float(gaps.max() - gaps.min()) < 0.15 * float(gaps.mean())


def test_settings_are_validated_with_clear_errors():
    assert samplers.check_sampler("DPM++") == samplers.check_sampler("dpmpp2m") == "dpm++2m"
    with pytest.raises(ConfigError, match="ddim, dpm\\+\\+2m, ddpm"):
        samplers.make_sampling_schedule("euler", 10)
    with pytest.raises(ConfigError, match="eta"):
        samplers.make_sampling_schedule("dpm++2m", 10, eta=0.5)
    with pytest.raises(ConfigError):
        samplers.make_sampling_schedule("ddim", 0)
    assert samplers.make_sampling_schedule("ddpm", 4).eta == 1.0


def test_loop_is_deterministic_and_reports_steps():
    for sampler in ("dpm++2m", "ddim", "ddpm"):
        schedule = samplers.make_sampling_schedule(sampler, 5)
        seen: list[int] = []
        denoise = lambda x, t: 0.1 * x  # noqa: E731
        a = samplers.sample(denoise, (1, 1, 8, 8), schedule, torch.Generator().manual_seed(3), "cpu",
                            step_callback=lambda i, n: seen.append(i))
        b = samplers.sample(denoise, (1, 1, 8, 8), schedule, torch.Generator().manual_seed(3), "cpu")
        assert torch.equal(a, b) and seen == [1, 2, 3, 4, 5]


def test_predictor_takes_the_run_sampler_over_the_card():
    arch = {"in_channels": 1, "out_channels": 1, "channels": [8, 16], "attention_levels": [False, False],
            "num_res_blocks": 1, "num_head_channels": 8, "norm_num_groups": 4}
    nets = FAMILY.build(arch, 2)
    card = {"sampling": {"sampler": "ddim", "eta": 0.5, "steps": 3}}
    from_card = FAMILY.make_predictor(nets, card, InferenceOptions()).schedule
    assert (from_card.sampler, from_card.eta, from_card.steps) == ("ddim", 0.5, 3)
    chosen = FAMILY.make_predictor(nets, card, InferenceOptions(sampler="dpm++2m", steps=4))
    assert chosen.schedule.sampler == "dpm++2m" and chosen.steps == 4 and chosen.schedule.eta == 0.0
    default = FAMILY.make_predictor(nets, {}, InferenceOptions()).schedule
    assert (default.sampler, default.steps) == (samplers.DEFAULT_SAMPLER, samplers.DEFAULT_STEPS)
