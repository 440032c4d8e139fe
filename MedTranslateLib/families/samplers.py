"""Diffusion noise schedules and the sampling loop shared by the ``diffusion`` and ``contourdiff`` families.

Samplers (``SAMPLERS``), all stepping between the timesteps the loop actually evaluates:

* ``"ddim"`` (default, 5 steps): DDIM (Song et al. 2021); ``eta`` > 0 adds noise (``eta = 0``: deterministic).
  With few steps it stops short of a full sample, closer to the average of the possible samples: smoother, with
  the lowest voxel error we measured, but samples that spread less than the model's distribution.
* ``"dpm++2m"``: DPM-Solver++(2M) (Lu et al. 2022), a second-order multistep solver of the probability-flow
  ODE in data (x0) prediction. Deterministic given the initial noise; reaches the 50-step answer in 10-20 steps.
* ``"ddpm"``: ancestral DDPM sampling, i.e. the DDIM step with ``eta = 1`` (the posterior q(x_s | x_t, x0) over
  the skipped steps).

The noise schedule (``alphas_cumprod``) comes from MONAI's schedulers, which training uses to add noise. Their
own ``step()`` is not used: in MONAI 1.6 ``set_timesteps`` spaces the timesteps by ``linspace`` while DDIM's
``step`` assumes a uniform stride of ``num_train_timesteps // steps`` (and DDPM's steps to ``t - 1``), so a sample
leaves each step at another noise level than the next step assumes, and some noise is left at the end. Here the
network is evaluated at ``steps`` timesteps from ``T - 1`` to 0, evenly spaced in log signal-to-noise ratio, each
step goes exactly to the next evaluated timestep, and the last one lands on the clean image.

The loop is deterministic for a given noise source (:data:`~MedTranslateLib.families.base.Noise`: the initial
noise and, for DDPM or DDIM with ``eta > 0``, the per-step noise are all drawn from it) and calls
``step_callback(i, n)`` after every step, so the engine can report progress and check for cancellation between
steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.families.base import Noise, gaussian_noise

PREDICTION_TYPES = ("epsilon", "v_prediction")
SAMPLERS = ("ddim", "dpm++2m", "ddpm")
# Few-step DDIM had the lowest held-out error of every setting on all three real-data tasks and is the fastest
# (BENCHMARKS.md, "Diffusion sampling"); DPM++ 2M in 10-20 steps gives the samplers' converged answer.
DEFAULT_SAMPLER = "ddim"
DEFAULT_STEPS = 5
#: MONAI's beta schedules
SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")
#: the most signal the last training timestep may keep: sampling starts from pure noise, so a schedule that
#: ends at alpha_bar 0.36 (linear_beta with 100 timesteps) samples from the wrong starting distribution
MAX_FINAL_ALPHA_BAR = 1e-2
#: log signal-to-noise ratio below which a noisy image is pure noise for sampling (alpha_bar < 1e-5: the signal
#: is 0.3 % of the noise): the timestep spacing ignores the range below it (the cosine schedule plunges to -20)
LOG_SNR_FLOOR = -11.5
#: DPM-Solver++(2M) extrapolates only when a step is at most this many times longer than the one before
MAX_STEP_GROWTH = 3.0

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


def check_sampler(sampler: str) -> str:
    """Validated sampler name (case-insensitive; "dpm++" and "dpmpp2m" mean "dpm++2m")."""
    value = str(sampler).lower()
    value = "dpm++2m" if value in ("dpm++", "dpmpp2m", "dpmpp_2m", "dpm-solver++") else value
    if value not in SAMPLERS:
        raise ConfigError(f"Unknown diffusion sampler '{sampler}'.", f"Use one of: {', '.join(SAMPLERS)}.")
    return value


def run_settings(card_sampling: Mapping[str, Any] | None, steps: int | None = None,
                 sampler: str | None = None) -> tuple[str, int, float]:
    """(sampler, steps, eta) of a run: the run's choice, else the card's ``sampling`` defaults, else ours. The card's
    eta belongs to the card's sampler, so a run that chooses its own sampler starts from eta = 0."""
    card_sampling = card_sampling or {}
    chosen = check_sampler(sampler or card_sampling.get("sampler", DEFAULT_SAMPLER))
    count = int(steps) if steps is not None else int(card_sampling.get("steps", DEFAULT_STEPS))
    eta = float(card_sampling.get("eta", 0.0)) if sampler is None else 0.0
    return chosen, count, eta


def make_train_scheduler(train_timesteps: int = 1000, prediction_type: str = "epsilon",
                         schedule: str = "linear_beta") -> Any:
    """MONAI ``DDPMScheduler`` used to add noise in training (and to give the sampling schedule's noise levels)."""
    from monai.networks.schedulers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=int(train_timesteps), schedule=schedule,
                         prediction_type=check_prediction_type(prediction_type), clip_sample=True)


def check_noise_schedule(train_timesteps: int, schedule: str) -> None:
    """Raise :class:`ConfigError` for an unknown schedule, or one whose last timestep keeps a visible part of the
    image (sampling starts from pure noise, so such a model samples from the wrong start)."""
    if str(schedule) not in SCHEDULES:
        raise ConfigError(f"Unknown diffusion noise schedule {schedule!r}.", f"Use one of: {', '.join(SCHEDULES)}.")
    final = float(make_train_scheduler(train_timesteps, "epsilon", schedule).alphas_cumprod[-1])
    if final > MAX_FINAL_ALPHA_BAR:
        raise ConfigError(f"With train_timesteps={train_timesteps} the {schedule} noise schedule ends at alpha_bar "
                          f"{final:.3g}: its last timestep keeps the image at {100 * final ** 0.5:.0f} % of its amplitude, but "
                          "sampling starts from pure noise.",
                          "Use more train_timesteps (1000, the default) or the 'cosine' schedule.")


@dataclass(frozen=True)
class SamplingSchedule:
    """What the sampling loop needs: the sampler, the timesteps where the network is evaluated (descending) and
    the noise level ``alphas_cumprod`` at each of them plus 1.0 (the clean image) after the last."""

    sampler: str
    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    prediction_type: str
    eta: float = 0.0

    @property
    def steps(self) -> int:
        """Network evaluations per sample."""
        return len(self.timesteps)


def sampling_timesteps(steps: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``steps`` distinct timesteps from ``T - 1`` down to 0, evenly spaced in log signal-to-noise ratio (the
    spacing DPM-Solver recommends for few steps: equal steps in the solver's variable, and the last evaluation at
    t = 0, so the final jump to the clean image is negligible). The spacing starts at :data:`LOG_SNR_FLOOR` when
    the schedule goes below it (the cosine schedule's log-SNR plunges from -11.5 to -20 in its last two
    timesteps: spaced over that, half the steps went to pure noise, and with the old fallback to even spacing in
    t the last step jumped 2.7 in log-SNR and DPM++ overshot); the first evaluation is always at ``T - 1``, where
    sampling starts. Where the log-SNR changes faster than one timestep per step, neighbours that round to the same
    timestep are pushed apart, one timestep apart at the least."""
    n, total = int(steps), len(alphas_cumprod)
    log_snr = torch.log(alphas_cumprod / (1.0 - alphas_cumprod))  # decreasing in t
    start = max(float(log_snr[-1]), LOG_SNR_FLOOR)
    targets = torch.linspace(start, float(log_snr[0]), n, dtype=torch.float64)
    chosen = [int(torch.searchsorted(-log_snr, -value).clamp(max=total - 1)) for value in targets]
    chosen[0] = total - 1
    for index in range(n - 2, -1, -1):  # strictly decreasing
        chosen[index] = max(chosen[index], chosen[index + 1] + 1)
    # within [0, T - 1]: no later than T - 1 - i (still strictly decreasing, and ending at 0 as n <= T)
    return torch.tensor([min(t, total - 1 - i) for i, t in enumerate(chosen)], dtype=torch.long)


def make_sampling_schedule(sampler: str, steps: int, train_timesteps: int = 1000,
                           prediction_type: str = "epsilon", schedule: str = "linear_beta",
                           eta: float = 0.0) -> SamplingSchedule:
    """Validated sampling settings with their timesteps and noise levels; raises :class:`ConfigError`."""
    sampler = check_sampler(sampler)
    steps, eta = int(steps), float(eta)
    if not 1 <= steps <= int(train_timesteps):
        raise ConfigError(f"Diffusion sampling steps must be between 1 and {train_timesteps}; got {steps}.",
                          "Choose e.g. 20 steps.")
    if eta < 0 or (eta > 0 and sampler != "ddim"):
        raise ConfigError(f"Sampling eta={eta} is not valid with the '{sampler}' sampler.",
                          "eta (0 = deterministic, 1 = as noisy as DDPM) applies to the 'ddim' sampler only.")
    alphas = make_train_scheduler(train_timesteps, prediction_type, schedule).alphas_cumprod.double()
    timesteps = sampling_timesteps(steps, alphas)
    levels = torch.cat([alphas[timesteps], torch.ones(1, dtype=torch.float64)])
    return SamplingSchedule(sampler, timesteps, levels, check_prediction_type(prediction_type),
                            1.0 if sampler == "ddpm" else eta)


def diffusion_target(scheduler: Any, clean: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    """What the network learns to output: the noise (epsilon) or the velocity (v prediction)."""
    if scheduler.prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    return noise


def _clean_and_noise(output: torch.Tensor, sample: torch.Tensor, alpha: float, sigma: float,
                     prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's estimate of the clean image (clipped to [-1, 1]) and of the noise in ``sample``."""
    if prediction_type == "v_prediction":
        clean = alpha * sample - sigma * output
        noise = alpha * output + sigma * sample
    else:
        clean = (sample - sigma * output) / alpha
        noise = output
    return clean.clamp(-1.0, 1.0), noise


@torch.no_grad()
def sample(denoise: Denoiser, shape: tuple[int, ...], schedule: SamplingSchedule, generator: Noise,
           device: torch.device | str, step_callback: StepCallback | None = None) -> torch.Tensor:
    """Run the reverse diffusion of ``schedule`` from seeded Gaussian noise of ``shape``; returns the clean sample."""
    device = torch.device(device)

    def gaussian() -> torch.Tensor:
        return gaussian_noise(generator, shape, device)

    x = gaussian()
    levels = [float(v) for v in schedule.alphas_cumprod]
    total = schedule.steps
    previous_clean: torch.Tensor | None = None
    previous_h = 0.0
    for index, t in enumerate(schedule.timesteps.tolist()):
        level, next_level = levels[index], levels[index + 1]
        alpha, sigma = math.sqrt(level), math.sqrt(1.0 - level)
        next_alpha, next_sigma = math.sqrt(next_level), math.sqrt(max(0.0, 1.0 - next_level))
        output = denoise(x, torch.full((shape[0],), t, device=device, dtype=torch.long)).float()
        clean, noise = _clean_and_noise(output, x, alpha, sigma, schedule.prediction_type)
        if next_level >= 1.0:
            x = clean  # the last step lands on the clean image (every sampler's limit)
        elif schedule.sampler == "dpm++2m":
            h = math.log(next_alpha / next_sigma) - math.log(alpha / sigma)  # step in log signal-to-noise
            estimate = clean
            if previous_clean is not None and h <= MAX_STEP_GROWTH * previous_h:
                # second order: extrapolate the clean estimate along the last step (not past a much shorter one)
                half_inverse_ratio = 0.5 * h / previous_h
                estimate = (1.0 + half_inverse_ratio) * clean - half_inverse_ratio * previous_clean
            x = (next_sigma / sigma) * x - next_alpha * math.expm1(-h) * estimate
            previous_clean, previous_h = clean, h
        else:  # DDIM step; eta = 1 is the DDPM posterior over the skipped steps
            spread = schedule.eta * math.sqrt((1.0 - next_level) / (1.0 - level) * (1.0 - level / next_level))
            x = next_alpha * clean + math.sqrt(max(0.0, 1.0 - next_level - spread ** 2)) * noise
            if spread > 0:
                x = x + spread * gaussian()
        if step_callback is not None:
            step_callback(index + 1, total)
    return x
