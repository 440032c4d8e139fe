"""The ``diffusion`` family: a paired conditional denoising diffusion model (DDPM training; DDIM, DPM-Solver++
or DDPM sampling, :mod:`MedTranslateLib.families.samplers`).

The denoiser is MONAI's ``DiffusionModelUNet``; the condition (the normalised source image) is concatenated
to the noisy target as extra input channels. Its attention (the middle block always has one) runs through
torch's fused ``scaled_dot_product_attention`` (``use_flash_attention``): the same result as MONAI's default
einsum path, without materialising the token x token matrix (2.7x faster per denoiser forward on the CPU).
Architecture keys (model card ``architecture``): ``in_channels`` (source channels), ``out_channels`` (target
channels), ``channels``, ``attention_levels``, ``num_res_blocks``, ``num_head_channels``, ``norm_num_groups`` and
the diffusion settings
``train_timesteps`` (default 1000), ``prediction_type`` ("epsilon" | "v_prediction") and ``schedule``
(MONAI beta schedule, default "linear_beta"). The card's ``sampling`` gives ``sampler`` ("ddim" (default) |
"dpm++2m" | "ddpm"), ``steps`` (default 5), ``eta`` (DDIM only, default 0) and ``samples`` (default 1); a run's
``InferenceOptions`` can choose another sampler, step count and number of samples. The card's settings are checked
when the package loads (``families.load_networks``). Training option ``masked_loss`` (default False) restricts
the MSE to the body mask; a ``schedule`` whose last timestep keeps more than alpha_bar = 0.01 of the image (too
few ``train_timesteps``), or channels MONAI cannot build (:func:`check_denoiser_architecture`), are refused before
training.

Also defines the shared machinery (:class:`ConditionalDenoiser`, :class:`DiffusionPredictor`,
:class:`ConditionalDiffusionFamily`) that the ``contourdiff`` family reuses with a different condition.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from MedTranslateLib.errors import ConfigError, ModelError
from MedTranslateLib.families import samplers
from MedTranslateLib.families.base import Batch, InferenceOptions, Noise, unwrapped

DEFAULT_ARCHITECTURE: dict[str, Any] = {
    "channels": (64, 128, 256), "attention_levels": (False, False, True), "num_res_blocks": 2,
    "num_head_channels": 32, "norm_num_groups": 32, "train_timesteps": 1000,
    "prediction_type": "epsilon", "schedule": "linear_beta",
}


def _check_attention_heads(channels: list[int], attention: list[bool], heads: int, groups: int) -> None:
    """Every level with attention, and the last (MONAI's middle block always has attention), splits its channels
    into heads of ``heads`` channels: raise :class:`ConfigError` naming a valid choice when one does not."""
    attended = [i for i in range(len(channels)) if attention[i] or i == len(channels) - 1]
    bad = [i for i in attended if channels[i] % heads]
    if not bad:
        return
    step = math.lcm(heads, groups)  # keeps the channels divisible by norm_num_groups too
    fitted = [-(-c // step) * step if i in attended else c for i, c in enumerate(channels)]
    common = math.gcd(*(channels[i] for i in attended))
    divisor = max(d for d in range(1, heads + 1) if common % d == 0)
    levels = ", ".join(f"channels[{i}] = {channels[i]}" for i in bad)
    raise ConfigError(f"architecture.channels {channels} does not fit num_head_channels = {heads}: {levels} "
                      f"{'is not a multiple' if len(bad) == 1 else 'are not multiples'} of it, but every level with "
                      "attention (those of attention_levels, and always the last level: MONAI's middle block) "
                      "splits its channels into heads of num_head_channels.",
                      f"Use e.g. channels = {fitted}, or num_head_channels = {divisor}.")


def check_denoiser_architecture(architecture: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for a denoiser MONAI's ``DiffusionModelUNet`` cannot build: attention_levels of
    another length than channels, channels not divisible by norm_num_groups, or attention heads that do not fit."""
    arch = {**DEFAULT_ARCHITECTURE, **dict(architecture)}
    channels = [int(c) for c in arch["channels"]]
    attention = [bool(a) for a in arch["attention_levels"]]
    if len(attention) != len(channels):
        raise ConfigError("architecture.attention_levels must have one entry per channels level.",
                          f"Give {len(channels)} booleans.")
    groups, heads = int(arch["norm_num_groups"]), int(arch["num_head_channels"])
    if groups < 1 or heads < 1:
        raise ConfigError(f"architecture.norm_num_groups ({groups}) and num_head_channels ({heads}) must be "
                          "positive.", "For example 32 and 32 (the defaults).")
    if any(c % groups for c in channels):
        raise ConfigError(f"Every entry of architecture.channels must be divisible by norm_num_groups ({groups}).",
                          "Change channels or norm_num_groups.")
    _check_attention_heads(channels, attention, heads, groups)


class ConditionalDenoiser(nn.Module):
    """``DiffusionModelUNet`` predicting noise (or velocity) of the target from [noisy target, condition]."""

    def __init__(self, architecture: Mapping[str, Any], spatial_dims: int, condition_channels: int) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        arch = {**DEFAULT_ARCHITECTURE, **dict(architecture)}
        if spatial_dims not in (2, 3):
            raise ConfigError(f"Diffusion models work in 2D or 3D, not {spatial_dims}D.",
                              "Set dimensionality to '2d', '2.5d' or '3d'.")
        check_denoiser_architecture(arch)
        channels = tuple(int(c) for c in arch["channels"])
        attention = tuple(bool(a) for a in arch["attention_levels"])
        groups = int(arch["norm_num_groups"])
        self.target_channels = int(arch["out_channels"])
        self.condition_channels = int(condition_channels)
        self.train_timesteps = int(arch["train_timesteps"])
        self.prediction_type = samplers.check_prediction_type(arch["prediction_type"])
        self.schedule = str(arch["schedule"])
        self.size_divisor = 2 ** (len(channels) - 1)
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims, in_channels=self.target_channels + self.condition_channels,
            out_channels=self.target_channels, channels=channels, attention_levels=attention,
            num_res_blocks=int(arch["num_res_blocks"]), num_head_channels=int(arch["num_head_channels"]),
            norm_num_groups=groups, use_flash_attention=True)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat([noisy, condition.to(noisy.dtype)], dim=1), timesteps)


def _pad_amounts(shape: tuple[int, ...], divisor: int) -> list[int]:
    """``F.pad`` amounts (last axis first) growing each axis to a multiple of ``divisor``."""
    pads: list[int] = []
    for size in reversed(shape):
        pads += [0, -(-size // divisor) * divisor - size]
    return pads


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error inside the mask (all voxels when the mask is absent or empty)."""
    if mask is None or float(mask.sum()) < 1.0:
        return F.mse_loss(prediction, target)
    weights = mask.to(prediction.dtype).expand_as(prediction)
    return (((prediction - target) ** 2) * weights).sum() / weights.sum()


class SamplingPredictor:
    """Base of the sampled families' predictors: one call draws one sample (``stochastic``) with the denoiser
    ``net``; ``step_callback(i, n)`` (optional, settable by the engine) is called after every sampling step."""

    stochastic = True
    net: nn.Module

    def to(self, device: torch.device | str) -> "SamplingPredictor":
        """Move the network (the engine's CPU fallback after running out of GPU memory)."""
        self.net.to(device)
        return self


class DiffusionPredictor(SamplingPredictor):
    """Draws one sample of the target for a normalised source batch, starting from noise; ``condition_fn`` maps
    the source batch to the denoiser's condition."""

    def __init__(self, net: ConditionalDenoiser, condition_fn: Callable[[torch.Tensor], torch.Tensor],
                 steps: int, sampler: str = samplers.DEFAULT_SAMPLER, eta: float = 0.0,
                 condition_pad_mode: str = "replicate", step_callback: samplers.StepCallback | None = None) -> None:
        self.net = net
        self.condition_fn = condition_fn
        self.schedule = samplers.make_sampling_schedule(sampler, steps, net.train_timesteps, net.prediction_type,
                                                        net.schedule, eta)
        self.condition_pad_mode = condition_pad_mode
        self.step_callback = step_callback

    @property
    def steps(self) -> int:
        """Network evaluations per sample."""
        return self.schedule.steps

    def __call__(self, source: torch.Tensor, generator: Noise = None) -> torch.Tensor:
        self.net.eval()
        source = source.float()
        shape = tuple(source.shape[2:])
        condition = self.condition_fn(source)
        pads = _pad_amounts(shape, self.net.size_divisor)
        if any(pads):
            if self.condition_pad_mode == "constant":
                condition = F.pad(condition, pads, mode="constant", value=0.0)
            else:
                condition = F.pad(condition, pads, mode=self.condition_pad_mode)
        noise_shape = (source.shape[0], self.net.target_channels) + tuple(condition.shape[2:])
        out = samplers.sample(lambda noisy, t: self.net(noisy, t, condition), noise_shape, self.schedule,
                              generator, source.device, step_callback=self.step_callback)
        return out[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape)].clamp(-1.0, 1.0)


class ConditionalDiffusionFamily:
    """Shared DDPM training and sampling; subclasses choose the condition."""

    name = "diffusion"
    paired = True
    gradient_trained = True
    architecture_keys = frozenset({"in_channels", "out_channels", *DEFAULT_ARCHITECTURE})
    option_keys = frozenset({"masked_loss"})
    network_name = "denoiser"
    condition_pad_mode = "replicate"

    def __init__(self) -> None:
        self._train_schedulers: dict[tuple[int, str, str], Any] = {}

    # -- the condition (overridden by contourdiff) -------------------------------------------------------
    def condition_channels(self, architecture: Mapping[str, Any]) -> int:
        """Channels of the condition given to the denoiser."""
        return int(architecture["in_channels"])

    def training_condition(self, batch: Batch, net: ConditionalDenoiser) -> torch.Tensor:
        """The condition for a training batch (paired: the source image)."""
        return batch["source"]

    def inference_condition(self, source: torch.Tensor, net: ConditionalDenoiser) -> torch.Tensor:
        """The condition at inference (paired: the source image)."""
        return source

    # -- Family protocol ---------------------------------------------------------------------------------
    def check_architecture(self, architecture: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` for a denoiser MONAI cannot build or a noise schedule sampling cannot start
        from (too few timesteps); run by the training config's validation, before any data is read."""
        check_denoiser_architecture(architecture)
        arch = {**DEFAULT_ARCHITECTURE, **dict(architecture)}
        samplers.check_noise_schedule(int(arch["train_timesteps"]), str(arch["schedule"]))

    def build(self, architecture: Mapping[str, Any], spatial_dims: int) -> dict[str, nn.Module]:
        for key in ("in_channels", "out_channels"):
            if key not in architecture:
                raise ConfigError(f"The model card architecture lacks '{key}'.", "Add it to the card.")
        net = ConditionalDenoiser(architecture, spatial_dims, self.condition_channels(architecture))
        return {self.network_name: net}

    def inference_networks(self) -> tuple[str, ...]:
        return (self.network_name,)

    def configure_optimizers(self, nets: dict[str, nn.Module], lr: float) -> dict[str, torch.optim.Optimizer]:
        return {self.network_name: torch.optim.AdamW(nets[self.network_name].parameters(), lr=lr,
                                                     weight_decay=1e-4)}

    def _train_scheduler(self, net: ConditionalDenoiser) -> Any:
        key = (net.train_timesteps, net.prediction_type, net.schedule)
        if key not in self._train_schedulers:
            self._train_schedulers[key] = samplers.make_train_scheduler(*key)
        return self._train_schedulers[key]

    def training_step(self, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                      batch: Batch, autocast: Callable[[], Any], options: Mapping[str, Any]) -> dict[str, float]:
        net = nets[self.network_name]
        core: ConditionalDenoiser = unwrapped(net)  # type: ignore[assignment]
        net.train()
        target = batch["target"].float()
        # the loss is on the target image, so it takes the target's body mask (its own in unpaired batches)
        mask = batch.get("target_mask", batch.get("mask")) if bool(options.get("masked_loss", False)) else None
        condition = self.training_condition(batch, core).float()
        pads = _pad_amounts(tuple(target.shape[2:]), core.size_divisor)
        if any(pads):
            target = F.pad(target, pads, mode="replicate")
            condition = (F.pad(condition, pads, mode="constant", value=0.0)
                         if self.condition_pad_mode == "constant" else F.pad(condition, pads, mode="replicate"))
            mask = F.pad(mask, pads, mode="constant", value=0.0) if mask is not None else None
        scheduler = self._train_scheduler(core)
        noise = torch.randn_like(target)
        timesteps = torch.randint(0, core.train_timesteps, (target.shape[0],), device=target.device).long()
        noisy = scheduler.add_noise(original_samples=target, noise=noise, timesteps=timesteps)
        goal = samplers.diffusion_target(scheduler, target, noise, timesteps)
        optimizer = optimizers[self.network_name]
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            output = net(noisy, timesteps, condition)
        loss = masked_mse(output.float(), goal, mask)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach()), "mse": float(loss.detach())}

    def sampling_settings(self, card_sampling: Mapping[str, Any] | None, steps: int | None = None,
                          sampler: str | None = None) -> tuple[str, int, float]:
        """(sampler, steps, eta) of a run (:func:`samplers.run_settings`)."""
        return samplers.run_settings(card_sampling, steps, sampler)

    def make_predictor(self, nets: dict[str, nn.Module], card: Mapping[str, Any],
                       options: InferenceOptions) -> DiffusionPredictor:
        net: ConditionalDenoiser = nets[self.network_name]  # type: ignore[assignment]
        sampling = dict(card.get("sampling") or {})
        card_timesteps = sampling.get("train_timesteps")
        if card_timesteps is not None and int(card_timesteps) != net.train_timesteps:
            raise ModelError(f"The model card says sampling.train_timesteps={card_timesteps}, but the network was "
                             f"trained with {net.train_timesteps}.",
                             "Fix the card (architecture.train_timesteps is the value used in training).")
        sampler, steps, eta = self.sampling_settings(sampling, options.steps, options.sampler)
        return DiffusionPredictor(net, lambda source: self.inference_condition(source, net), steps=steps,
                                  sampler=sampler, eta=eta, condition_pad_mode=self.condition_pad_mode)


class DiffusionFamily(ConditionalDiffusionFamily):
    """Paired conditional diffusion: the source image is the condition."""

    name = "diffusion"
    paired = True


FAMILY = DiffusionFamily()
