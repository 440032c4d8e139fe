"""Diffusion schedulers and the DDIM / DDPM sampling loop shared by the ``diffusion`` and ``contourdiff`` families.

The loop is deterministic for a given ``torch.Generator`` (initial noise and, for DDPM or DDIM with
``eta > 0``, the per-step noise are all drawn from it) and calls ``step_callback(i, n)`` after every step,
so the engine can report progress and check for cancellation between steps.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from MedTranslateLib.errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction")
SAMPLERS = ("ddim", "ddpm")

#: ``denoise(noisy_sample, timesteps) -> model output`` (the condition is bound by the caller)
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int], None]


def check_prediction_type(prediction_type: str) -> str:
    """Validated prediction type ("epsilon" or "v_prediction"; "v" is accepted as shorthand)."""
    value = "v_prediction" if str(prediction_type).lower() in ("v", "v_prediction") else str(prediction_type).lower()
    if value not in PREDICTION_TYPES:
        raise ConfigError(f"Unknown diffusion prediction type '{prediction_type}'.",
                          "Use 'epsilon' or 'v_prediction'.")
    return value


def make_train_scheduler(train_timesteps: int = 1000, prediction_type: str = "epsilon",
                         schedule: str = "linear_beta") -> Any:
    """MONAI ``DDPMScheduler`` used to add noise (and, with ``sampler='ddpm'``, to sample)."""
    from monai.networks.schedulers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=int(train_timesteps), schedule=schedule,
                         prediction_type=check_prediction_type(prediction_type), clip_sample=True)


def make_sampling_scheduler(sampler: str, steps: int, train_timesteps: int = 1000,
                            prediction_type: str = "epsilon", schedule: str = "linear_beta",
                            device: torch.device | str | None = None) -> Any:
    """A MONAI scheduler (DDIM or DDPM) with its inference timesteps set."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    sampler = str(sampler).lower()
    steps = int(steps)
    if sampler not in SAMPLERS:
        raise ConfigError(f"Unknown diffusion sampler '{sampler}'.", "Use 'ddim' or 'ddpm'.")
    if not 1 <= steps <= int(train_timesteps):
        raise ConfigError(f"Diffusion sampling steps must be between 1 and {train_timesteps}; got {steps}.",
                          "Choose e.g. 20 steps.")
    prediction_type = check_prediction_type(prediction_type)
    if sampler == "ddim":
        scheduler = DDIMScheduler(num_train_timesteps=int(train_timesteps), schedule=schedule,
                                  prediction_type=prediction_type, clip_sample=True)
    else:
        scheduler = DDPMScheduler(num_train_timesteps=int(train_timesteps), schedule=schedule,
                                  prediction_type=prediction_type, clip_sample=True)
    scheduler.set_timesteps(steps, device=device)
    return scheduler


def diffusion_target(scheduler: Any, clean: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    """What the network learns to output: the noise (epsilon) or the velocity (v prediction)."""
    if scheduler.prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    return noise


@torch.no_grad()
def sample(denoise: Denoiser, shape: tuple[int, ...], scheduler: Any, generator: torch.Generator | None,
           device: torch.device | str, eta: float = 0.0,
           step_callback: StepCallback | None = None) -> torch.Tensor:
    """Run the reverse diffusion from seeded Gaussian noise of ``shape``; returns the final sample.

    ``scheduler`` comes from :func:`make_sampling_scheduler`. ``eta`` only applies to DDIM (0 = deterministic
    given the initial noise).
    """
    from monai.networks.schedulers import DDIMScheduler

    device = torch.device(device)
    noise_device = generator.device if generator is not None else device
    sample_ = torch.randn(shape, generator=generator, device=noise_device, dtype=torch.float32).to(device)
    timesteps = scheduler.timesteps
    total = len(timesteps)
    is_ddim = isinstance(scheduler, DDIMScheduler)
    for index, t in enumerate(timesteps):
        t_int = int(t)
        t_batch = torch.full((shape[0],), t_int, device=device, dtype=torch.long)
        model_output = denoise(sample_, t_batch).float()
        if is_ddim:
            sample_, _ = scheduler.step(model_output, t_int, sample_, eta=float(eta),
                                        generator=generator if eta > 0 else None)
        else:
            sample_, _ = scheduler.step(model_output, t_int, sample_, generator=generator)
        if step_callback is not None:
            step_callback(index + 1, total)
    return sample_
