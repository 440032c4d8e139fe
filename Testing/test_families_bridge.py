"""Brownian bridge diffusion family: the bridge's ends and noise, the sampler against an exact denoiser, training,
validation of settings, and a translation from the command line."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedTranslateLib.cli.main import main
from MedTranslateLib.errors import ConfigError
from MedTranslateLib.families import SAMPLED_FAMILIES, check_training_settings, get_family
from MedTranslateLib.families.base import InferenceOptions
from MedTranslateLib.families.bridge import (DEFAULT_ETA, DEFAULT_STEPS, FAMILY, bridge_sample, bridge_state,
                                             bridge_timesteps)
from MedTranslateLib.io import read_volume, write_volume
from packages import make_untrained_package

TINY = {"in_channels": 1, "out_channels": 1, "channels": [8, 16], "attention_levels": [False, False],
        "num_res_blocks": 1, "num_head_channels": 8, "norm_num_groups": 4}
T = 1000


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def _images(batch: int = 2, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    source = (x * y)[None, None].repeat(batch, 1, 1, 1)
    return source, (0.5 - source.abs()).clamp(-1, 1)


def test_registered_as_a_sampled_paired_family():
    assert get_family("bridge") is FAMILY and FAMILY.paired and "bridge" in SAMPLED_FAMILIES
    nets = FAMILY.build(TINY, 2)
    assert nets["denoiser"].unet.conv_in.conv.in_channels == 2  # [x_t, source]
    assert nets["denoiser"].variance == 1.0


def test_bridge_ends_are_the_images_and_its_noise_peaks_in_the_middle():
    source, target = _images(batch=1)
    noise = torch.randn_like(source)
    at = lambda t, variance=1.0: bridge_state(target, source, noise, torch.tensor([t]), T, variance)  # noqa: E731
    assert torch.equal(at(0), target) and torch.equal(at(T), source)
    mean_middle = 0.5 * (target + source)
    assert float((at(T // 2) - mean_middle).std()) == pytest.approx(0.5 ** 0.5, rel=0.05)  # variance s / 2
    assert float((at(T // 2, 0.25) - mean_middle).std()) == pytest.approx(0.125 ** 0.5, rel=0.05)
    assert float((at(T // 10) - (0.9 * target + 0.1 * source)).std()) == pytest.approx((2 * 0.09) ** 0.5, rel=0.05)


def test_timesteps_start_at_the_source_and_are_even():
    assert bridge_timesteps(4, T) == [1000, 750, 500, 250]
    assert bridge_timesteps(1, T) == [1000]
    for bad in (0, T + 1):
        with pytest.raises(ConfigError, match="between 1 and 1000"):
            bridge_timesteps(bad, T)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_exact_denoiser_gives_the_target_and_states_stay_on_the_bridge(steps, eta):
    """An exact denoiser (it knows the target) must land on the target, and every state it is shown must be a
    draw of the bridge at that time: mean on the line between the images, noise of the bridge's variance."""
    source, target = _images(batch=4)
    seen: list[tuple[int, torch.Tensor]] = []

    def exact(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((int(t[0]), x.clone()))
        return x - target

    generator = torch.Generator().manual_seed(3)
    out = bridge_sample(exact, source, steps, T, 1.0, eta, generator)
    assert torch.allclose(out, target, atol=1e-6)
    assert [t for t, _ in seen] == bridge_timesteps(steps, T) and torch.equal(seen[0][1], source)
    residuals = []
    for t, x in seen[1:]:
        m = t / T
        residuals.append((x - ((1 - m) * target + m * source)) / (2 * (m - m * m)) ** 0.5)
        assert float(residuals[-1].std()) == pytest.approx(1.0, rel=0.05)
    for a, b in zip(residuals, residuals[1:]):
        correlation = float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
        # eta = 0 keeps the first noise draw; eta = 1 draws fresh noise at every step
        assert correlation == pytest.approx(1.0 if eta == 0 else 0.0, abs=0.02)


def test_sampling_is_seeded_and_reports_every_step():
    source, _ = _images(batch=1, size=16)
    calls: list[tuple[int, int]] = []
    blur = lambda x, t: 0.1 * x  # noqa: E731  (not exact: the result depends on the noise)
    first = bridge_sample(blur, source, 4, T, 1.0, 1.0, torch.Generator().manual_seed(1),
                          step_callback=lambda i, n: calls.append((i, n)))
    again = bridge_sample(blur, source, 4, T, 1.0, 1.0, torch.Generator().manual_seed(1))
    other = bridge_sample(blur, source, 4, T, 1.0, 1.0, torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_training_lowers_the_loss():
    source, target = _images(batch=4, size=32)
    batch = {"source": source, "target": target, "mask": torch.ones_like(source)}
    nets = FAMILY.build(TINY, 2)
    optimizers = FAMILY.configure_optimizers(nets, 2e-3)
    losses = [FAMILY.training_step(nets, optimizers, batch, contextlib.nullcontext, {})["loss"] for _ in range(40)]
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8])


def test_settings_are_validated_with_one_clear_error():
    with pytest.raises(ConfigError, match="as many source channels as target channels"):
        FAMILY.build({**TINY, "in_channels": 3}, 2)
    with pytest.raises(ConfigError, match="bridge_variance must be positive"):
        FAMILY.build({**TINY, "bridge_variance": 0.0}, 2)
    assert FAMILY.sampling_settings(None) == ("bridge", DEFAULT_STEPS, DEFAULT_ETA)
    assert FAMILY.sampling_settings({"steps": 4, "eta": 0.0}) == ("bridge", 4, 0.0)
    assert FAMILY.sampling_settings({"steps": 4}, steps=7) == ("bridge", 7, DEFAULT_ETA)
    with pytest.raises(ConfigError, match="own sampler"):
        FAMILY.sampling_settings(None, sampler="ddim")
    nets = FAMILY.build(TINY, 2)
    card = {"sampling": {"eta": 2.0}}
    with pytest.raises(ConfigError, match="eta must be between 0 and 1"):
        FAMILY.make_predictor(nets, card, InferenceOptions())
    with pytest.raises(ConfigError, match="steps must be between"):
        FAMILY.make_predictor(nets, {}, InferenceOptions(steps=0))


def test_architecture_is_checked_before_the_data_is_read():
    """check_training_settings runs when the training config is validated: attention heads that do not fit
    (MONAI's traceback after loading the data before) and a bridge_variance <= 0 (refused only when building)."""
    with pytest.raises(ConfigError, match=r"channels\[2\] = 200 is not a multiple of it.*num_head_channels = 25"):
        check_training_settings("bridge", {"channels": [64, 128, 200], "norm_num_groups": 8}, {})
    with pytest.raises(ConfigError, match="bridge_variance must be positive"):
        check_training_settings("bridge", {"bridge_variance": -1.0}, {})
    check_training_settings("bridge", {"channels": [64, 128, 224], "norm_num_groups": 8, "bridge_variance": 2.0}, {})


def test_translate_from_the_command_line(tmp_path, capsys):
    array = np.random.default_rng(0).uniform(0, 500, (6, 20, 24)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((3.0, -4.0, 5.0))
    source = tmp_path / "mr.nii.gz"
    write_volume(image, source, modality="MR")
    package = make_untrained_package(tmp_path / "model", "bridge", "2d")
    out = tmp_path / "sct.nii.gz"
    assert main(["translate", str(source), "-m", str(package), "-o", str(out), "--steps", "3",
                 "--progress", "none"]) == 0
    result, _ = read_volume(out)
    assert result.GetSize() == image.GetSize() and result.GetSpacing() == pytest.approx(image.GetSpacing())
    assert result.GetOrigin() == pytest.approx(image.GetOrigin())
    named = tmp_path / "named.nii.gz"  # the bridge's own sampler may be named
    assert main(["translate", str(source), "-m", str(package), "-o", str(named), "--steps", "3", "--sampler", "bridge",
                 "--progress", "none"]) == 0
    bad = tmp_path / "bad.nii.gz"
    assert main(["translate", str(source), "-m", str(package), "-o", str(bad), "--sampler", "ddim",
                 "--progress", "none"]) == ConfigError.exit_code
    assert "own sampler" in capsys.readouterr().err and not bad.exists()
