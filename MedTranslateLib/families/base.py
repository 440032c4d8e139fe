"""The contract every model family (U-Net, pix2pix, CycleGAN, diffusion, ContourDiff, random forest)
implements, so that training, export and inference treat them all the same way.

Tensors are in the network's normalised space (the model card's normalisation maps physical
intensities to and from [-1, 1]); layout is (N, C, H, W) for 2D/2.5D and (N, C, D, H, W) for 3D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, Union

import numpy as np
import torch
from torch import nn

#: A batch for training: "source" and "target" (N, C, *spatial) and "mask" (N, 1, *spatial),
#: all float tensors on the training device. Unpaired families receive source and target
#: drawn from different subjects.
Batch = Mapping[str, torch.Tensor]


@dataclass
class InferenceOptions:
    """Per-run inference settings; the card gives defaults."""

    steps: int | None = None          # diffusion: sampling steps (None -> card default)
    sampler: str | None = None        # diffusion: "ddim" | "dpm++2m" | "ddpm" (None -> card default)
    samples: int | None = None        # stochastic families: samples averaged, >1 gives a std map (None -> card)
    seed: int = 0                     # seed of the sampler noise (deterministic runs)
    tta: bool = False                 # deterministic families: flip test-time augmentation for uncertainty
    extra: dict[str, Any] = field(default_factory=dict)


def sample_count(options: InferenceOptions, card: Mapping[str, Any]) -> int:
    """Samples of a run: the options' ``samples``, else the card's ``sampling.samples``, else 1."""
    if options.samples is not None:
        return max(1, int(options.samples))
    return max(1, int((card.get("sampling") or {}).get("samples", 1)))


def derive_seed(seed: int, index: int) -> int:
    """The seed of sample (or ensemble member) ``index`` of a run seeded with ``seed``: drawn from numpy's
    ``SeedSequence`` of the pair, so the runs of two seeds share no sample (``seed + index`` would: seed 1's
    samples were seed 0's shifted by one)."""
    entropy = int(seed) % 2 ** 64  # SeedSequence takes non-negative integers
    words = np.random.SeedSequence(entropy, spawn_key=(int(index),)).generate_state(2, np.uint32)
    return int(words[0]) | int(words[1]) << 32


_MASK32 = 0xFFFFFFFF


def _mix32(value: Any) -> Any:
    """Wellons' ``lowbias32`` integer hash of 32-bit values (Python ints or int64 tensors; no int64 overflow)."""
    value = value ^ (value >> 16)
    value = (value * 0x21F0AAAD) & _MASK32
    value = value ^ (value >> 15)
    value = (value * 0x735A2D97) & _MASK32
    return value ^ (value >> 15)


class WindowNoise:
    """The noise of one predictor call on a batch of slices or windows of a :class:`NoiseField`.

    ``origins`` (N, L) gives each batch item's position in the volume: the last ``spatial`` entries are the
    position of its first voxel, earlier entries are fixed (a slice's index). Each :meth:`randn` call is the
    next draw (initial noise, then one per noisy sampling step); draw ``k`` at a voxel depends only on the
    field's seed, ``k``, the channel and the voxel's position, so overlapping windows agree where they overlap
    and a sample does not depend on the batch size."""

    def __init__(self, key: int, origins: torch.Tensor) -> None:
        self.key = key
        self.origins = origins.long()
        self.draws = 0

    def randn(self, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
        """Standard normal float32 noise of ``shape`` (N, C, *spatial) on ``device``: the next draw."""
        count, channels, *spatial = (int(n) for n in shape)
        if count != self.origins.shape[0] or self.origins.shape[1] < len(spatial):
            raise ValueError(f"noise of shape {tuple(shape)} for batch origins of shape {tuple(self.origins.shape)}")
        draw_key = _mix32((self.key + self.draws * 0x9E3779B9) & _MASK32)
        self.draws += 1
        origins = self.origins.to(device)
        fixed = origins.shape[1] - len(spatial)
        hashed = _mix32(torch.arange(channels, device=device, dtype=torch.int64) ^ draw_key).expand(count, channels)
        for column in range(fixed):  # (N, C)
            hashed = _mix32(hashed ^ (origins[:, column:column + 1] & _MASK32))
        for axis, size in enumerate(spatial):  # (N, C, s0, ..., s_axis)
            position = origins[:, fixed + axis, None] + torch.arange(size, device=device, dtype=torch.int64)
            position = (position & _MASK32).view((count,) + (1,) * (axis + 1) + (size,))
            hashed = _mix32(hashed.unsqueeze(-1) ^ position)
        # Box-Muller from two uniforms in (0, 1]: the hash and a second hash of it
        radius = torch.sqrt(-2.0 * torch.log((hashed.float() + 0.5) * 2.0 ** -32))
        angle = (_mix32(hashed ^ 0x5BD1E995).float() + 0.5) * (2.0 * math.pi * 2.0 ** -32)
        return radius * torch.cos(angle)


class NoiseField:
    """Seeded Gaussian noise defined at every position of a volume, for one sample: the engine hands each
    batch of slices or sliding windows its part (:meth:`window`), so a 3D sample is one coherent sample
    rather than a blend of independent ones, and a slice's noise does not depend on the batch it is in."""

    def __init__(self, seed: int) -> None:
        seed = int(seed) % 2 ** 64
        self.key = _mix32(_mix32(seed & _MASK32) ^ (seed >> 32))

    def window(self, origins: torch.Tensor | np.ndarray | Sequence[Sequence[int]]) -> WindowNoise:
        """The noise of a batch whose items start at ``origins`` (N, L) (see :class:`WindowNoise`)."""
        return WindowNoise(self.key, torch.as_tensor(np.asarray(origins, dtype=np.int64)))


#: what a stochastic predictor draws its noise from: the engine's positions in a :class:`NoiseField`, a torch
#: generator (direct calls), or None (torch's global generator)
Noise = Union[WindowNoise, torch.Generator, None]


def gaussian_noise(noise: Noise, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """Standard normal float32 noise of ``shape`` on ``device``: the next draw of ``noise`` (a torch generator
    draws on its own device, so a seeded run gives the same noise wherever the model runs)."""
    if isinstance(noise, WindowNoise):
        return noise.randn(shape, device)
    noise_device = noise.device if noise is not None else device
    return torch.randn(tuple(shape), generator=noise, device=noise_device, dtype=torch.float32).to(device)


class Predictor(Protocol):
    """Maps a normalised source batch to a normalised target batch.

    ``stochastic`` predictors are called once per batch of every sample with that sample's :data:`Noise`, and
    draw all their random numbers from it (:func:`gaussian_noise`).
    """

    stochastic: bool

    def __call__(self, source: torch.Tensor, generator: Noise = None) -> torch.Tensor: ...


class Family(Protocol):
    """A model family. Implementations live in ``MedTranslateLib/families/<name>.py``."""

    name: str
    paired: bool                      # False for CycleGAN and ContourDiff (trained without pairs)
    gradient_trained: bool            # False for the random forest (fit once)
    architecture_keys: frozenset[str]  # the card ``architecture`` keys the family reads
    option_keys: frozenset[str]        # the training ``family_options`` keys it reads

    def build(self, architecture: Mapping[str, Any], spatial_dims: int) -> dict[str, nn.Module]:
        """All networks of the family, by name. Weights are stored as ``<name>.<param>``."""

    def inference_networks(self) -> tuple[str, ...]:
        """Names of the networks a model package must contain to translate (a family whose ``build`` makes
        more, e.g. a GAN's discriminators, may also define ``build_inference`` that makes these alone)."""

    def configure_optimizers(self, nets: dict[str, nn.Module], lr: float) -> dict[str, torch.optim.Optimizer]:
        """Optimisers by name (checkpointed with the networks)."""

    def training_step(
        self,
        nets: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        batch: Batch,
        autocast: Callable[[], Any],
        options: Mapping[str, Any],
    ) -> dict[str, float]:
        """One optimisation step (zero_grad, losses, backward, step); returns the losses by name."""

    def make_predictor(self, nets: dict[str, nn.Module], card: Mapping[str, Any], options: InferenceOptions) -> Predictor:
        """The inference callable for a loaded package."""


def unwrapped(net: nn.Module) -> nn.Module:
    """The network inside a multi-process (DDP) wrapper, which does not pass on a network's own attributes
    (``size_divisor``, ``train_timesteps``, ...); the network itself otherwise. Call the wrapper for the forward
    pass, so the gradients are shared between processes."""
    from torch.nn.parallel import DistributedDataParallel

    return net.module if isinstance(net, DistributedDataParallel) else net


def pack_state(nets: Mapping[str, nn.Module], names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Flatten named networks into one ``<network>.<parameter>`` tensor dict (the package weights layout).

    The tensors are copies on the CPU: a snapshot that training can go on from (``.cpu()`` alone returns the
    live parameters of a CPU network, so "the best weights" kept changing until export)."""
    selected = names if names is not None else tuple(nets)
    return {f"{name}.{key}": value.detach().to("cpu", copy=True).contiguous()
            for name in selected for key, value in nets[name].state_dict().items()}


def unpack_state(nets: Mapping[str, nn.Module], state: Mapping[str, torch.Tensor], names: tuple[str, ...]) -> None:
    """Load a ``pack_state`` dict into the named networks (strict: every key and shape must match).

    A mismatch (weights made for another architecture, or by an older MedTranslate whose networks differ)
    raises :class:`~MedTranslateLib.errors.ModelError` naming the first differing tensors."""
    from MedTranslateLib.errors import ModelError

    for name in names:
        prefix = name + "."
        sub = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        expected = nets[name].state_dict()
        missing = sorted(set(expected) - set(sub))
        unexpected = sorted(set(sub) - set(expected))
        wrong = sorted(k for k in set(sub) & set(expected) if tuple(sub[k].shape) != tuple(expected[k].shape))
        if missing or unexpected or wrong:
            details = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                    ("wrong shape", wrong)) if keys)
            raise ModelError(f"The weights of network '{name}' do not fit the architecture in the model card "
                             f"({details}).",
                             "The package was made for another architecture or by another MedTranslate version: "
                             "retrain it, or fix the card's architecture.")
        nets[name].load_state_dict(sub, strict=True)
