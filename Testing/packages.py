"""Test helper (no tests here): a small valid model card, and small, untrained but real model packages of
every family and dimensionality, exported through the same code path as trained ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from MedTranslateLib.families import get_family
from MedTranslateLib.families.base import pack_state
from MedTranslateLib.models.export import export_package

TINY_ARCH: dict[str, dict[str, Any]] = {
    "unet": {"features": [4, 8, 8, 8]},
    "pix2pix": {"features": [4, 8, 8, 8], "disc_channels": 4, "disc_layers": 2},
    "cyclegan": {"features": [4, 8, 8, 8], "disc_channels": 4, "disc_layers": 2},
    "diffusion": {"channels": [8, 16], "attention_levels": [False, False], "num_res_blocks": 1,
                  "num_head_channels": 8, "norm_num_groups": 4},
    "contourdiff": {"channels": [8, 16], "attention_levels": [False, False], "num_res_blocks": 1,
                    "num_head_channels": 8, "norm_num_groups": 4},
    "bridge": {"channels": [8, 16], "attention_levels": [False, False], "num_res_blocks": 1,
               "num_head_channels": 8, "norm_num_groups": 4},
}
SAMPLING = {"diffusion": {"sampler": "ddim", "steps": 2, "samples": 1},
            "contourdiff": {"sampler": "ddim", "steps": 2, "samples": 1},
            "bridge": {"steps": 2, "samples": 1}}

NORMALIZATION = {
    "MR": {"method": "percentile", "percentiles": [0.5, 99.5], "within_mask": True},
    "CT": {"method": "clip", "range": [-1024.0, 3071.0]},
}
OUTPUT = {
    "CT": {"method": "clip", "range": [-1024.0, 3071.0], "background": -1024.0},
    "MR": {"method": "percentile", "percentiles": [0.5, 99.5], "within_mask": True,
           "output_range": [0.0, 1000.0], "background": 0.0},
}


def make_test_card(**overrides: Any) -> dict[str, Any]:
    """A small valid card dict for tests (2D U-Net, MR -> CT). ``overrides`` replace top-level fields;
    a dict override for ``input``, ``architecture``, ``weights`` etc. is merged into the default one."""
    card: dict[str, Any] = {
        "schema_version": 1,
        "id": "test-mr-to-ct",
        "version": "0.1.0",
        "title": "Test MR to CT model",
        "description": "A tiny model used by the tests.",
        "source_modality": "MR",
        "target_modality": "CT",
        "anatomy": "pelvis",
        "field_of_view": "whole pelvis",
        "family": "unet",
        "dimensionality": "2d",
        "architecture": {"in_channels": 1, "out_channels": 1, "channels": [4, 8], "strides": [2]},
        "input": {"spacing": None, "orientation": None, "slice_axis": "axial", "batch_size": 2},
        "normalization": {
            "input": {"method": "percentile", "percentiles": [1, 99], "within_mask": True},
            "output": {"method": "clip", "range": [-1024, 3071], "background": -1024},
        },
        "training": {"data": "synthetic phantoms", "split": "all for training"},
        "metrics": {"data": "no held-out data", "values": {}},
        "license": "Apache-2.0",
        "citation": "MedTranslate tests.",
        "weights": {"file": "weights.safetensors", "sha256": "0" * 64},
        "intended_use": "Testing the MedTranslate software only.",
        "limitations": "Not trained on real data. Not for clinical use.",
        "clinical_use": False,
    }
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(card.get(key), dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    return card


def input_spec(dimensionality: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"spacing": None, "orientation": None, "slice_axis": "axial", "batch_size": 8}
    if dimensionality == "2.5d":
        spec["context_slices"] = 1
    if dimensionality == "3d":
        spec.update(patch_size=[16, 32, 32], overlap=0.25, min_size=[4, 8, 8])
    spec.update(overrides)
    return spec


def make_untrained_package(folder: Path, family: str = "unet", dimensionality: str = "2d",
                           source: str = "MR", target: str = "CT", seed: int = 0,
                           input_overrides: dict | None = None, architecture: dict | None = None,
                           **card_overrides: Any) -> Path:
    """Export a real (randomly initialised) package of ``family`` (``architecture`` overrides its tiny network's
    settings) and return its folder."""
    torch.manual_seed(seed)
    in_channels = 3 if dimensionality == "2.5d" else 1
    arch = {"in_channels": in_channels, "out_channels": 1, **TINY_ARCH[family], **(architecture or {})}
    fam = get_family(family)
    nets = fam.build(arch, 3 if dimensionality == "3d" else 2)
    state = pack_state(nets, fam.inference_networks())
    card = make_test_card(
        id=card_overrides.pop("id", f"test-{family}-{dimensionality.replace('.', '')}"),
        family=family, dimensionality=dimensionality, architecture=arch,
        source_modality=source, target_modality=target,
        input=input_spec(dimensionality, **(input_overrides or {})),
        normalization={"input": NORMALIZATION["CT" if source in ("CT", "CBCT") else "MR"],
                       "output": OUTPUT["CT" if target in ("CT", "CBCT") else "MR"]},
        **({"sampling": SAMPLING[family]} if family in SAMPLING else {}),
        **card_overrides,
    )
    return export_package(state, card, folder)
