"""The ``bridge`` family: a paired Brownian bridge diffusion model (BBDM, Li et al., CVPR 2023).

Plain conditional diffusion starts every sample from pure noise. A Brownian bridge instead diffuses between the
two images: with ``m_t = t / T`` the state at time ``t`` is

    x_t = (1 - m_t) * target + m_t * source + sqrt(delta_t) * noise,   delta_t = 2 s (m_t - m_t^2),

so x_0 is the target, x_T is the source itself (no noise at either end) and the noise peaks at ``t = T / 2``
with variance ``s / 2`` (``s`` = architecture key ``bridge_variance``, default 1 as in BBDM). Sampling starts from
the normalised source image, so a few steps already give a sharp image. The denoiser (the same
``DiffusionModelUNet`` as the ``diffusion`` family) sees [x_t, source] and predicts ``x_t - target``; its clean
estimate is ``x_t - output``.

Sampling (:func:`bridge_sample`) evaluates the network at ``steps`` times evenly spaced from T down to T / steps
and moves to the next time along the bridge through the current clean estimate,

    x_s = (1 - m_s) * clean + m_s * source + sqrt(delta_s) * (sqrt(1 - eta^2) * noise_estimate + eta * z),

with fresh Gaussian ``z``: ``eta = 1`` (default) replaces the noise entirely at every step, i.e. draws ``x_s``
afresh from the bridge's marginal around the current clean estimate, keeping nothing of ``x_t`` but that estimate
(BBDM's stochastic sampler instead draws from the posterior q(x_s | x_t, x_0), which keeps part of ``x_t``'s noise);
``eta = 0`` keeps the noise of the first draw (deterministic after it). The last step lands on the clean estimate.
Source and target channels must match (2D slices with one channel each), and both normalisations should map
the images to comparable [-1, 1] ranges (the card's normalisation does).
Card ``sampling``: ``steps`` (default 10), ``eta`` and ``samples`` (> 1 averages samples and gives their spread);
``sampler``, when given, must be "bridge".
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.families.base import Batch, InferenceOptions, Noise, gaussian_noise, unwrapped
from MedTranslateLib.families.diffusion import (ConditionalDenoiser, ConditionalDiffusionFamily, SamplingPredictor,
                                                _pad_amounts, check_denoiser_architecture, masked_mse)
from MedTranslateLib.families.samplers import StepCallback

SAMPLER = "bridge"
# 10 steps with fresh noise at every step: where the held-out error stopped falling on the phantom and T1 -> T2,
# and eta 0 was worse on both (BENCHMARKS.md, "Brownian bridge diffusion").
DEFAULT_STEPS = 10
DEFAULT_ETA = 1.0
DEFAULT_VARIANCE = 1.0


def bridge_mean_and_std(m: torch.Tensor | float, variance: float) -> tuple[Any, Any]:
    """(weight of the source in the bridge's mean, standard deviation of its noise) at bridge position ``m``."""
    if isinstance(m, torch.Tensor):
        return m, torch.sqrt((2.0 * variance * (m - m * m)).clamp(min=0.0))
    return m, math.sqrt(max(0.0, 2.0 * variance * (m - m * m)))


def bridge_state(target: torch.Tensor, source: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                 train_timesteps: int, variance: float) -> torch.Tensor:
    """x_t of the bridge from ``target`` (t = 0) to ``source`` (t = T) for a batch of integer ``timesteps``."""
    m = (timesteps.to(target.dtype) / float(train_timesteps)).view(-1, *([1] * (target.ndim - 1)))
    weight, std = bridge_mean_and_std(m, variance)
    return (1.0 - weight) * target + weight * source + std * noise


def bridge_timesteps(steps: int, train_timesteps: int) -> list[int]:
    """The ``steps`` times (descending, T first) where the network is evaluated; raises :class:`ConfigError`."""
    steps, total = int(steps), int(train_timesteps)
    if not 1 <= steps <= total:
        raise ConfigError(f"Bridge sampling steps must be between 1 and {total}; got {steps}.",
                          f"Choose e.g. {DEFAULT_STEPS} steps.")
    return [round(total * (steps - i) / steps) for i in range(steps)]


@torch.no_grad()
def bridge_sample(denoise: Any, source: torch.Tensor, steps: int, train_timesteps: int, variance: float,
                  eta: float, generator: Noise, step_callback: StepCallback | None = None) -> torch.Tensor:
    """Run the bridge from ``source`` (t = T) to the target (t = 0); ``denoise(x_t, timesteps)`` predicts
    ``x_t - target``. Deterministic for a given noise source ``generator``."""

    def gaussian() -> torch.Tensor:
        return gaussian_noise(generator, source.shape, source.device)

    times = bridge_timesteps(steps, train_timesteps)
    x = source
    noise_estimate: torch.Tensor | None = None
    for index, t in enumerate(times):
        m = t / float(train_timesteps)
        output = denoise(x, torch.full((source.shape[0],), t, device=source.device, dtype=torch.long)).float()
        clean = (x - output).clamp(-1.0, 1.0)
        next_t = times[index + 1] if index + 1 < len(times) else 0
        if next_t == 0:
            x = clean
        else:
            _, std = bridge_mean_and_std(m, variance)
            if std > 0:  # the noise in x_t as the clean estimate explains it
                noise_estimate = (x - (1.0 - m) * clean - m * source) / std
            fresh = gaussian()
            direction = fresh if noise_estimate is None else (
                math.sqrt(max(0.0, 1.0 - eta * eta)) * noise_estimate + eta * fresh)
            next_m = next_t / float(train_timesteps)
            next_weight, next_std = bridge_mean_and_std(next_m, variance)
            x = (1.0 - next_weight) * clean + next_weight * source + next_std * direction
        if step_callback is not None:
            step_callback(index + 1, len(times))
    return x


def _variance(architecture: Mapping[str, Any]) -> float:
    """The architecture's bridge_variance; raises :class:`ConfigError` unless it is positive."""
    variance = float(architecture.get("bridge_variance", DEFAULT_VARIANCE))
    if not variance > 0:
        raise ConfigError(f"architecture.bridge_variance must be positive; got {variance}.",
                          f"Use e.g. {DEFAULT_VARIANCE} (BBDM's value).")
    return variance


class BridgePredictor(SamplingPredictor):
    """Draws one sample of the target for a normalised source batch, starting from the source."""

    def __init__(self, net: ConditionalDenoiser, steps: int, eta: float,
                 step_callback: StepCallback | None = None) -> None:
        bridge_timesteps(steps, net.train_timesteps)  # validate now, not after the model has run
        if not 0.0 <= float(eta) <= 1.0:
            raise ConfigError(f"Bridge sampling eta must be between 0 and 1; got {eta}.",
                              "Use 1 (fresh noise every step, the default) or 0 (deterministic after the start).")
        self.net, self.steps, self.eta = net, int(steps), float(eta)
        self.step_callback = step_callback

    def __call__(self, source: torch.Tensor, generator: Noise = None) -> torch.Tensor:
        self.net.eval()
        source = source.float()
        shape = tuple(source.shape[2:])
        pads = _pad_amounts(shape, self.net.size_divisor)
        start = F.pad(source, pads, mode="replicate") if any(pads) else source
        out = bridge_sample(lambda x, t: self.net(x, t, start), start, self.steps, self.net.train_timesteps,
                            self.net.variance, self.eta, generator, self.step_callback)
        return out[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape)].clamp(-1.0, 1.0)


class BridgeFamily(ConditionalDiffusionFamily):
    """Paired Brownian bridge diffusion from the source image to the target image."""

    name = "bridge"
    paired = True
    # the bridge has its own noise schedule and predicts the target: no prediction_type or schedule
    architecture_keys = ((ConditionalDiffusionFamily.architecture_keys - {"prediction_type", "schedule"})
                         | {"bridge_variance"})

    def check_architecture(self, architecture: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` for a denoiser MONAI cannot build or a bridge_variance that is not positive
        (before any data is read); its noise vanishes at both ends by design, so no noise schedule is checked."""
        check_denoiser_architecture(architecture)
        _variance(architecture)

    def build(self, architecture: Mapping[str, Any], spatial_dims: int) -> dict[str, nn.Module]:
        nets = super().build(architecture, spatial_dims)
        if int(architecture["in_channels"]) != int(architecture["out_channels"]):
            raise ConfigError("A bridge model needs as many source channels as target channels (it starts from the "
                              f"source image); got in_channels={architecture['in_channels']}, "
                              f"out_channels={architecture['out_channels']}.",
                              "Use dimensionality '2d' or '3d' (not '2.5d') with one source and one target channel.")
        nets[self.network_name].variance = _variance(architecture)
        return nets

    def training_step(self, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                      batch: Batch, autocast: Any, options: Mapping[str, Any]) -> dict[str, float]:
        net = nets[self.network_name]
        core: ConditionalDenoiser = unwrapped(net)  # type: ignore[assignment]
        net.train()
        target, source = batch["target"].float(), batch["source"].float()
        mask = batch.get("mask") if bool(options.get("masked_loss", False)) else None
        pads = _pad_amounts(tuple(target.shape[2:]), core.size_divisor)
        if any(pads):
            target, source = F.pad(target, pads, mode="replicate"), F.pad(source, pads, mode="replicate")
            mask = F.pad(mask, pads, mode="constant", value=0.0) if mask is not None else None
        timesteps = torch.randint(1, core.train_timesteps + 1, (target.shape[0],), device=target.device).long()
        noisy = bridge_state(target, source, torch.randn_like(target), timesteps, core.train_timesteps, core.variance)
        optimizer = optimizers[self.network_name]
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            output = net(noisy, timesteps, source)
        loss = masked_mse(output.float(), noisy - target, mask)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach()), "mse": float(loss.detach())}

    def sampling_settings(self, card_sampling: Mapping[str, Any] | None, steps: int | None = None,
                          sampler: str | None = None) -> tuple[str, int, float]:
        """(sampler, steps, eta) of a run: the run's steps, else the card's, else the default."""
        if sampler is not None and str(sampler).lower() != SAMPLER:
            raise ConfigError(f"Bridge models have their own sampler ('{SAMPLER}'); --sampler {sampler} does not apply.",
                              "Leave out --sampler (choose --steps and --samples only).")
        card_sampling = card_sampling or {}
        if str(card_sampling.get("sampler", SAMPLER)).lower() != SAMPLER:
            raise ConfigError(f"sampling.sampler is '{card_sampling['sampler']}', but a bridge model has its own "
                              f"sampler ('{SAMPLER}').", f"Set it to '{SAMPLER}' or leave it out.")
        count = int(steps) if steps is not None else int(card_sampling.get("steps", DEFAULT_STEPS))
        return SAMPLER, count, float(card_sampling.get("eta", DEFAULT_ETA))

    def make_predictor(self, nets: dict[str, nn.Module], card: Mapping[str, Any],
                       options: InferenceOptions) -> BridgePredictor:
        net: ConditionalDenoiser = nets[self.network_name]  # type: ignore[assignment]
        _, steps, eta = self.sampling_settings(card.get("sampling"), options.steps, options.sampler)
        return BridgePredictor(net, steps, eta)


FAMILY = BridgeFamily()
