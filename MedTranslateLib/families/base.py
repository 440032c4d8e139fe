"""The contract every model family (U-Net, pix2pix, CycleGAN, diffusion, ContourDiff, random forest)
implements, so that training, export and inference treat them all the same way.

Tensors are in the network's normalised space (the model card's normalisation maps physical
intensities to and from [-1, 1]); layout is (N, C, H, W) for 2D/2.5D and (N, C, D, H, W) for 3D.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

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
    samples: int = 1                  # stochastic families: samples averaged; >1 gives a std map
    seed: int = 0                     # seed of the sampler noise (deterministic runs)
    tta: bool = False                 # deterministic families: flip test-time augmentation for uncertainty
    extra: dict[str, Any] = field(default_factory=dict)


class Predictor(Protocol):
    """Maps a normalised source batch to a normalised target batch.

    ``stochastic`` predictors are called once per sample with a seeded generator.
    """

    stochastic: bool

    def __call__(self, source: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...


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
        """Names of the networks a model package must contain to translate."""

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
