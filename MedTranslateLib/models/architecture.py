"""The value types of the card's ``architecture`` keys, checked before any network is built.

A hand-edited card or a ``--set architecture=...`` with ``"residual": "false"`` (a string, which Python counts as
true) or ``"features": "8,16"`` would otherwise build another network than meant, or crash deep in torch. Light:
no torch, so ``models list`` checks cards with it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

#: families whose ``architecture`` is written by their fit, with keys of their own meaning (not checked here)
_UNCHECKED_FAMILIES = frozenset({"random_forest"})


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_integer(value: Any) -> bool:
    return _integer(value) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, (list, tuple)) and len(value) > 0 and all(check(v) for v in value)


_POSITIVE = (_positive_integer, "a positive whole number")
_TEXT = (lambda value: isinstance(value, str), "a text")
_NUMBER = (_number, "a number")
#: key -> (check, what it should be)
ARCHITECTURE_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "in_channels": _POSITIVE, "out_channels": _POSITIVE,
    "features": (_list_of(_positive_integer), "a list of positive whole numbers, e.g. [32, 64, 128, 256]"),
    "norm": _TEXT, "output_activation": _TEXT, "disc_norm": _TEXT, "prediction_type": _TEXT, "schedule": _TEXT,
    "dropout": (lambda value: _number(value) and 0 <= value < 1, "a number from 0 to below 1"),
    "residual": (lambda value: isinstance(value, bool), "true or false (without quotes)"),
    "disc_channels": _POSITIVE, "disc_layers": _POSITIVE, "norm_num_groups": _POSITIVE, "train_timesteps": _POSITIVE,
    "channels": (_list_of(_positive_integer), "a list of positive whole numbers, e.g. [64, 128, 256]"),
    "attention_levels": (_list_of(lambda value: isinstance(value, bool)), "a list of true/false, one per level"),
    "num_res_blocks": _POSITIVE, "num_head_channels": _POSITIVE,
    "edge_fraction": _NUMBER, "edge_sigma": _NUMBER, "bridge_variance": _NUMBER,
}


def architecture_problems(family: str, architecture: Mapping[str, Any]) -> list[str]:
    """What is wrong with the value types of ``architecture`` ("architecture.residual must be true or false
    (without quotes), not 'false'"); [] when nothing is."""
    if str(family) in _UNCHECKED_FAMILIES or not isinstance(architecture, Mapping):
        return []
    problems = []
    for key, value in architecture.items():
        check, expected = ARCHITECTURE_TYPES.get(key, (None, ""))
        if check is not None and not check(value):
            problems.append(f"architecture.{key} must be {expected}, not {value!r}")
    return problems
