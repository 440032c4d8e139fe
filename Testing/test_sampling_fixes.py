"""Sampled models: a 3D sample is one sample across its sliding windows, two seeds share no sample, DPM++ with
the cosine schedule, too few train_timesteps refused, the card's sampling.samples default and its sampling
section checked when a package loads."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from MedTranslateLib.errors import ConfigError, ModelError
from MedTranslateLib.families import check_training_settings, load_networks, samplers
from MedTranslateLib.families.base import (InferenceOptions, NoiseField, derive_seed, gaussian_noise,
                                           sample_count)
from MedTranslateLib.families.diffusion import DiffusionPredictor
from MedTranslateLib.inference.engine import predict_volume
from MedTranslateLib.progress import ProgressTracker

CPU = torch.device("cpu")
MEAN, STD = 0.3, 0.2  # the "data" of the exact denoiser: independent Gaussian voxels


def card(dimensionality: str, **inputs) -> dict:
    return {"dimensionality": dimensionality, "architecture": {"in_channels": 1, "out_channels": 1},
            "input": {"slice_axis": "axial", **inputs}}


def run(array, spec, predictor, options) -> object:
    return predict_volume(array, None, spec, predictor, options, CPU, ProgressTracker())


class NoiseOnly:
    """A 'sampler' whose every voxel is an independent N(0, 0.3^2) draw: the true per-voxel spread is 0.3."""

    stochastic = True

    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []

    def __call__(self, source, generator=None):
        out = 0.3 * gaussian_noise(generator, source[:, :1].shape, source.device)
        self.outputs.append(out.clone())
        return out


def expected_population_std(sigma: float, k: int) -> float:
    """E[population std of k normal draws] = sigma * sqrt((k - 1) / k) * c4(k)."""
    c4 = math.sqrt(2.0 / (k - 1)) * math.exp(math.lgamma(k / 2) - math.lgamma((k - 1) / 2))
    return sigma * math.sqrt((k - 1) / k) * c4


# -- 1: a 3D sample is one sample, not a blend of the windows' independent samples ---------------------------
@pytest.mark.parametrize("dimensionality", ["3d", "2d"])
def test_sampled_spread_is_the_true_spread_without_window_seams(dimensionality):
    """Before: every window drew its own noise, so the Gaussian-weighted blend of overlapping windows averaged
    independent samples: 3D spread 0.226 (0.18 at the seams) for a true 0.286; 2D was right."""
    inputs = {"patch_size": [4, 16, 16], "overlap": 0.5, "batch_size": 4} if dimensionality == "3d" else {}
    result = run(np.zeros((8, 32, 32), np.float32), card(dimensionality, **inputs), NoiseOnly(),
                 InferenceOptions(samples=12, seed=0))
    expected = expected_population_std(0.3, 12)
    assert abs(float(result.std.mean()) - expected) < 0.01, float(result.std.mean())
    for axis in range(3):  # no grid pattern: every plane along every axis has the full spread
        planes = result.std.mean(axis=tuple(a for a in range(3) if a != axis))
        assert float(planes.min()) > expected - 0.03, (axis, planes.round(3))


class ExactGaussianDenoiser(nn.Module):
    """Stands in for ``ConditionalDenoiser``: the optimal (voxel-wise) noise prediction for Gaussian data."""

    train_timesteps, prediction_type, schedule, size_divisor, target_channels = 1000, "epsilon", "linear_beta", 1, 1

    def __init__(self) -> None:
        super().__init__()
        self.levels = samplers.make_train_scheduler(1000).alphas_cumprod.double()

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        level = float(self.levels[int(timesteps[0])])
        alpha, sigma = math.sqrt(level), math.sqrt(1.0 - level)
        clean = MEAN + alpha * STD ** 2 / (level * STD ** 2 + sigma ** 2) * (noisy - alpha * MEAN)
        return (noisy - alpha * clean) / sigma


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m"])
def test_overlapping_3d_windows_sample_with_the_same_noise(sampler):
    """With a voxel-wise denoiser, small overlapping windows must give exactly what one window over the whole
    volume gives: the initial noise and DDPM's per-step noise of a voxel do not depend on the window."""
    predictor = DiffusionPredictor(ExactGaussianDenoiser(), lambda source: source, steps=8, sampler=sampler)
    array = np.zeros((12, 24, 24), np.float32)
    options = InferenceOptions(samples=3, seed=4)
    whole = run(array, card("3d", patch_size=[12, 24, 24], batch_size=1), predictor, options)
    windows = run(array, card("3d", patch_size=[8, 12, 12], overlap=0.5, batch_size=3), predictor, options)
    np.testing.assert_allclose(windows.mean, whole.mean, atol=1e-5)
    np.testing.assert_allclose(windows.std, whole.std, atol=1e-5)
    assert float(whole.std.mean()) > 0.05  # the samples differ


def test_noise_of_a_voxel_depends_on_its_position_only():
    field = NoiseField(7)
    a = field.window([[0, 0, 0], [2, 3, 4]]).randn((2, 1, 6, 6, 6), CPU)
    assert torch.equal(a[0, :, 2:, 3:, 4:], a[1, :, :4, :3, :2])
    again = field.window([[2, 3, 4]])
    assert torch.equal(again.randn((1, 1, 6, 6, 6), CPU), a[1:])
    assert not torch.equal(again.randn((1, 1, 6, 6, 6), CPU), a[1:])  # the next draw is new noise
    values = field.window([[0, 0, 0]]).randn((1, 2, 32, 32, 32), CPU)
    assert abs(float(values.mean())) < 0.02 and abs(float(values.std()) - 1.0) < 0.02


def test_a_sample_does_not_depend_on_the_batch_size():
    array = np.random.default_rng(0).uniform(-1, 1, (6, 8, 8)).astype(np.float32)
    options = InferenceOptions(samples=2, seed=3)
    for spec in (card("2d"), card("3d", patch_size=[4, 8, 8], overlap=0.5)):
        one = run(array, spec, NoiseOnly(), replace(options, extra={"batch_size": 1, "sw_batch_size": 1}))
        many = run(array, spec, NoiseOnly(), replace(options, extra={"batch_size": 6, "sw_batch_size": 4}))
        np.testing.assert_array_equal(one.mean, many.mean)


# -- 2: two seeds share no sample -----------------------------------------------------------------------------
def test_two_seeds_share_no_sample_and_a_seed_repeats_exactly():
    """Before: sample i used seed + i, so --seed 1 repeated three of the four samples of --seed 0."""
    array = np.zeros((2, 8, 8), np.float32)

    def samples(seed: int) -> list[np.ndarray]:
        predictor = NoiseOnly()
        run(array, card("2d", batch_size=8), predictor, InferenceOptions(samples=4, seed=seed))
        return [out.numpy() for out in predictor.outputs]

    first, second, again = samples(0), samples(1), samples(0)
    assert len(first) == 4 and all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.allclose(a, b) for a in first for b in second)
    seeds = {derive_seed(s, i) for s in range(3) for i in range(64)}
    assert len(seeds) == 3 * 64 and derive_seed(-1, 0) == derive_seed(-1, 0)


def test_ensemble_members_are_seeded_from_the_seed_and_their_index():
    """Before: member i got seed + i, so member 1 of --seed 0 was member 0 of --seed 1."""
    import SimpleITK as sitk

    from MedTranslateLib.ensemble import EnsembleTranslator
    from MedTranslateLib.pipeline import TranslationResult

    class Member:
        card = SimpleNamespace(id="member", version="1")

        def __init__(self) -> None:
            self.seeds: list[int] = []

        def translate(self, image, mask, options, tracker, uncertainty=False):
            self.seeds.append(options.seed)
            return TranslationResult(image, None)

        def provenance(self) -> dict:
            return {"model_id": self.card.id, "model_version": self.card.version, "model_sha256": "0" * 64}

    ensemble = EnsembleTranslator.__new__(EnsembleTranslator)
    ensemble.members = [Member(), Member()]
    image = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32))
    for seed in (0, 1):
        ensemble.translate(image, options=InferenceOptions(seed=seed))
    seeds = [member.seeds for member in ensemble.members]
    assert seeds == [[derive_seed(0, 0), derive_seed(1, 0)], [derive_seed(0, 1), derive_seed(1, 1)]]
    assert len({s for pair in seeds for s in pair}) == 4


# -- 3: DPM++ 2M with the cosine schedule -----------------------------------------------------------------------
def exact_denoiser(schedule: str):
    levels = samplers.make_train_scheduler(1000, schedule=schedule).alphas_cumprod.double()
    net = ExactGaussianDenoiser()
    net.levels = levels
    return lambda x, t: net(x, t, x)


def spread(schedule: str, steps: int, timesteps: list[int] | None = None) -> float:
    plan = samplers.make_sampling_schedule("dpm++2m", steps, schedule=schedule)
    if timesteps is not None:  # a hand-made spacing
        levels = samplers.make_train_scheduler(1000, schedule=schedule).alphas_cumprod.double()
        chosen = torch.tensor(timesteps)
        plan = samplers.SamplingSchedule("dpm++2m", chosen, torch.cat([levels[chosen], torch.ones(1).double()]),
                                         "epsilon")
    out = samplers.sample(exact_denoiser(schedule), (2, 1, 64, 64), plan, torch.Generator().manual_seed(0), "cpu")
    return float(out.std())


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_with_the_cosine_schedule_reaches_the_data_spread(steps):
    """Before: the cosine schedule fell back to timesteps evenly spaced in t, whose last step jumps 2.7 in log-SNR,
    and the second-order extrapolation overshot: spread 0.263 (10 steps) and 0.249 (20) for a true 0.2."""
    assert abs(spread("cosine", steps) - STD) < 0.04 * STD
    assert abs(spread("linear_beta", steps) - STD) < 0.04 * STD


def test_linear_beta_timesteps_are_unchanged():
    levels = samplers.make_train_scheduler(1000).alphas_cumprod.double()
    assert samplers.sampling_timesteps(20, levels).tolist() == [999, 948, 893, 835, 772, 705, 630, 547, 454, 354,
                                                                253, 167, 103, 61, 35, 20, 10, 5, 2, 0]
    cosine = samplers.make_train_scheduler(1000, schedule="cosine").alphas_cumprod.double()
    t = samplers.sampling_timesteps(10, cosine)
    log_snr = torch.log(cosine[t] / (1 - cosine[t]))
    gaps = (log_snr[1:] - log_snr[:-1])[1:]  # after the first step from pure noise: even in log-SNR
    assert float(gaps.max()) < 1.3 * float(gaps.min())


def test_dpm_solver_does_not_extrapolate_past_a_much_shorter_step():
    """The old cosine spacing (even in t): its last step is 4.4 times the one before; extrapolating along it
    gave spread 0.249 at 20 steps, a first-order last step 0.184."""
    even = [round(999 * (19 - i) / 19) for i in range(20)]
    assert abs(spread("cosine", 20, even) - STD) < 0.1 * STD


# -- 4: too few train_timesteps ----------------------------------------------------------------------------------
def test_a_schedule_that_ends_with_visible_signal_is_refused():
    """linear_beta with T = 100 ends at alpha_bar 0.364 (0.603 at T = 50), but sampling starts from pure noise."""
    arch = {"in_channels": 1, "out_channels": 1}
    for family in ("diffusion", "contourdiff"):
        with pytest.raises(ConfigError, match="alpha_bar 0.364") as error:
            check_training_settings(family, {**arch, "train_timesteps": 100}, {})
        assert "train_timesteps" in error.value.fix
        check_training_settings(family, arch, {})
        check_training_settings(family, {**arch, "train_timesteps": 100, "schedule": "cosine"}, {})
    with pytest.raises(ConfigError, match="noise schedule 'cosin'"):
        check_training_settings("diffusion", {**arch, "schedule": "cosin"}, {})
    check_training_settings("bridge", {**arch, "train_timesteps": 100}, {})  # no noise at either end by design


# -- 5 and 6: the card's sampling section -------------------------------------------------------------------------
def package_with_sampling(folder: Path, family: str, sampling: dict) -> Path:
    """A small package of ``family`` whose card's sampling section is ``sampling`` (the weights stay valid)."""
    from packages import make_untrained_package

    folder = make_untrained_package(folder, family)
    data = json.loads((folder / "model.json").read_text())
    data["sampling"] = sampling
    (folder / "model.json").write_text(json.dumps(data))
    return folder


def test_card_samples_is_the_default_sample_count():
    sampled = {"sampling": {"samples": 6}}
    assert sample_count(InferenceOptions(), sampled) == 6
    assert sample_count(InferenceOptions(samples=2), sampled) == 2
    assert sample_count(InferenceOptions(), {}) == 1
    predictor = NoiseOnly()
    result = run(np.zeros((2, 8, 8), np.float32), {**card("2d"), **sampled}, predictor, InferenceOptions())
    assert len(predictor.outputs) == 6 and result.stats["passes"] == 6


def test_translate_takes_the_cards_samples_unless_given(tmp_path):
    import SimpleITK as sitk

    from MedTranslateLib.models.package import open_package
    from MedTranslateLib.pipeline import Translator

    folder = package_with_sampling(tmp_path / "m", "diffusion", {"sampler": "ddim", "steps": 1, "samples": 3})
    translator = Translator(open_package(folder), device="cpu")
    image = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 500, (3, 16, 16)).astype(np.float32))
    assert translator.translate(image).stats["passes"] == 3
    assert translator.translate(image, options=InferenceOptions(samples=1)).stats["passes"] == 1
    with_map = translator.translate(image, uncertainty=True)  # raised to 4 for a map, with no note about --samples
    assert with_map.stats["passes"] == 4 and not any("--samples" in w for w in with_map.warnings)
    one_asked = translator.translate(image, options=InferenceOptions(samples=1), uncertainty=True)
    assert one_asked.stats["passes"] == 4 and any("--samples 1 was raised to 4" in w for w in one_asked.warnings)


@pytest.mark.parametrize(("family", "sampling", "message"), [
    ("diffusion", {"sampler": "bridge"}, "Unknown diffusion sampler 'bridge'"),
    ("diffusion", {"sampler": "dpm++2m", "eta": 0.5}, "eta"),
    ("diffusion", {"sampler": "ddpm", "eta": 0.5}, "eta"),
    ("bridge", {"sampler": "ddim"}, "bridge model has its own sampler"),
    ("bridge", {"eta": 2.0}, "eta must be between 0 and 1"),
])
def test_a_card_with_sampling_settings_its_family_cannot_use_is_refused_at_load(tmp_path, family, sampling,
                                                                                message):
    """Before: such a package imported fine, then every translate failed with exit 6 blaming the user's --sampler."""
    from MedTranslateLib.cli.main import main
    from MedTranslateLib.models.package import open_package

    folder = package_with_sampling(tmp_path / "m", family, sampling)
    with pytest.raises(ModelError, match=message) as error:
        load_networks(open_package(folder))
    assert "The card is wrong" in error.value.fix and "sampling" in error.value.fix
    assert main(["models", "import", str(folder)]) == ModelError.exit_code  # refused before it is installed


def test_a_valid_card_sampling_section_loads(tmp_path):
    from MedTranslateLib.models.package import open_package

    for family, sampling in (("diffusion", {"sampler": "ddpm", "steps": 3, "samples": 2}),
                             ("bridge", {"sampler": "bridge", "eta": 0.5})):
        load_networks(open_package(package_with_sampling(tmp_path / family, family, sampling)))
