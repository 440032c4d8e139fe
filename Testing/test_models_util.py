"""Helpers shared by the model tests (no tests here): tiny weights, packages and hand-made zips."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import torch

from MedTranslateLib.models.export import export_package
from packages import make_test_card


def tiny_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"generator.conv.weight": torch.randn(4, 1, 3, 3, generator=generator),
            "generator.conv.bias": torch.zeros(4), "generator.steps": torch.tensor([3], dtype=torch.int64)}


def make_package(folder: Path, **card_overrides) -> Path:
    """Export a valid tiny package folder and return its path."""
    return export_package(tiny_state(), make_test_card(**card_overrides), folder)


def write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def card_bytes_for(weights: bytes, **overrides) -> bytes:
    """model.json bytes whose SHA256 matches ``weights``."""
    card = make_test_card(**overrides)
    card["weights"] = {**card["weights"], "sha256": hashlib.sha256(weights).hexdigest()}
    return json.dumps(card).encode()
