"""The backend's messages speak of command-line options (``Use --device cpu``); the panel shows them with its own
controls' names instead (``Choose CPU as the Device``), so a message tells a Slicer user what to click."""

from __future__ import annotations

import re

#: (command-line wording, panel wording), most specific first: whole advice, then a bare option.
_PANEL_WORDS = (
    ("Use --device cpu (or auto)", "Choose CPU (or Auto) as the Device"),
    ("use --device cpu (or auto)", "choose CPU (or Auto) as the Device"),
    ("Use --device cpu", "Choose CPU as the Device"),
    ("use --device cpu", "choose CPU as the Device"),
    ("Use --device cuda", "Choose GPU as the Device"),
    ("use --device cuda", "choose GPU as the Device"),
    ("--device cpu", "the CPU Device"),
    ("--device cuda", "the GPU Device"),
    ("--device auto", "the Auto Device"),
    ("--uncertainty", "Uncertainty"),
    ("--samples", "Samples"),
    ("--steps", "Diffusion steps"),
    ("--mask", "Body mask"),
)
_PATTERN = re.compile("|".join(re.escape(cli) for cli, _ in _PANEL_WORDS))
_LOOKUP = dict(_PANEL_WORDS)


def panel_wording(text: str) -> str:
    """``text`` with the command-line options it names replaced by the panel's controls."""
    return _PATTERN.sub(lambda match: _LOOKUP[match.group(0)], text)
