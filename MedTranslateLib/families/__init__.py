"""Model families by name; each module defines a module-level ``FAMILY`` implementing ``base.Family``."""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING, Any, Mapping

from MedTranslateLib.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from torch import nn

    from MedTranslateLib.families.base import Family
    from MedTranslateLib.models.package import ModelPackage

#: family name (as in the model card) -> module under ``MedTranslateLib.families``
_MODULES = {"unet": "unet", "pix2pix": "pix2pix", "cyclegan": "cyclegan", "diffusion": "diffusion",
            "contourdiff": "contourdiff", "bridge": "bridge", "random_forest": "forest"}

FAMILY_NAMES: tuple[str, ...] = tuple(_MODULES)

#: families whose prediction is sampled (steps, samples; the spread of several samples is their uncertainty)
SAMPLED_FAMILIES: tuple[str, ...] = ("diffusion", "contourdiff", "bridge")
#: families without an uncertainty map (the others: flip test-time augmentation, or the spread of their samples)
NO_UNCERTAINTY_FAMILIES: tuple[str, ...] = ("random_forest",)


def get_family(name: str) -> "Family":
    """The family object for a card's ``family`` name (its module is imported on first use)."""
    module_name = _MODULES.get(str(name))
    if module_name is None:
        raise ModelError(f"Unknown model family '{name}'.",
                         f"Use one of: {', '.join(FAMILY_NAMES)} (update MedTranslate if the model is newer).")
    module = importlib.import_module(f"MedTranslateLib.families.{module_name}")
    return module.FAMILY


def check_training_settings(name: str, architecture: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for an unknown family, or an ``architecture`` / ``family_options`` key the family
    does not read: a mistyped key would otherwise be ignored silently and train something else than asked."""
    if str(name) not in _MODULES:
        close = difflib.get_close_matches(str(name), FAMILY_NAMES, n=1)
        raise ConfigError(f"Unknown family {name!r}.", (f"Did you mean {close[0]!r}? " if close else "")
                          + f"Use one of: {', '.join(FAMILY_NAMES)}.")
    from MedTranslateLib.models.architecture import architecture_problems

    family = get_family(name)
    problems = architecture_problems(name, architecture)
    if problems:
        raise ConfigError(f"{'; '.join(problems)}.", "Fix the architecture setting (JSON types: numbers and true/false "
                                                    "without quotes, lists in [ ]).")
    for setting, given, known in (("architecture", architecture, family.architecture_keys),
                                  ("family_options", options, family.option_keys)):
        for key in given:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                raise ConfigError(f"The {name} family does not use {setting} key {key!r}.",
                                  (f"Did you mean {close[0]!r}? " if close else "")
                                  + f"Its {setting} keys are: {', '.join(sorted(known)) or 'none'}.")
    if hasattr(family, "check_options"):  # values, e.g. a loss name
        family.check_options(options)
    if hasattr(family, "check_architecture"):  # values, e.g. a diffusion noise schedule
        family.check_architecture(architecture)


def build_for_inference(family: "Family", architecture: Mapping[str, Any],
                        spatial_dims: int) -> dict[str, "nn.Module"]:
    """The networks a translation needs, untrained: ``build_inference`` where the family has one (a GAN builds its
    generator alone: its discriminators, MONAI's, only train), else ``build``."""
    return getattr(family, "build_inference", family.build)(architecture, spatial_dims)


def load_networks(package: "ModelPackage") -> tuple["Family", dict[str, "nn.Module"]]:
    """The package's family and its inference networks, built from the card's architecture and loaded with the
    verified weights (ModelError when they do not fit, or when a sampled model's card gives sampling settings it
    cannot use). Run at import too, so a package that could never run is refused before it is installed."""
    from MedTranslateLib.families.base import unpack_state

    family = get_family(package.card.family)
    names = family.inference_networks()
    card = package.card.to_dict()
    try:
        built = build_for_inference(family, card["architecture"], package.card.spatial_dims)
    except (ConfigError, ValueError, TypeError, KeyError, IndexError) as error:
        detail = error.problem if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"
        raise ModelError(f"The model card of {package.card.id} {package.card.version} does not describe a "
                         f"{package.card.family} network that can be built: {detail}",
                         "Fix the architecture in its model.json (it must describe the network the weights were "
                         "trained as), or re-export the package.") from None
    nets = {name: built[name] for name in names}
    state = package.load_state_dict()  # verifies the SHA256 before anything is deserialised
    unpack_state(nets, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, names)
    if package.card.family in SAMPLED_FAMILIES:
        check_card_sampling(family, nets, card)
    return family, nets


def check_card_sampling(family: "Family", nets: dict[str, "nn.Module"], card: Mapping[str, Any]) -> None:
    """Raise :class:`ModelError` when the card's ``sampling`` defaults do not fit its family (a diffusion card
    naming the bridge sampler, steps beyond train_timesteps, eta with DPM++): the card is wrong, and without this
    every translation would fail blaming the user's options."""
    from MedTranslateLib.families.base import InferenceOptions

    try:
        family.make_predictor(nets, card, InferenceOptions())  # the card's defaults alone, checked as a run is
    except ConfigError as error:
        raise ModelError(f"The model card of {card.get('id')} {card.get('version')} has sampling settings its "
                         f"{card.get('family')} model cannot use: {error.problem}",
                         f"The card is wrong, not your options: fix its 'sampling' section ({error.fix}), or ask "
                         "the model's author for a corrected package.") from None
