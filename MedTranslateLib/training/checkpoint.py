"""Checkpoints without pickle: network weights and optimiser tensors in safetensors, everything else in JSON.

Layout of a checkpoint folder::

    weights.safetensors     <network>.<parameter>
    optimizer.safetensors   <optimizer>.state.<param index>.<key>, plus rng.torch (uint8)
    state.json              step, best metric, history, optimiser param groups and scalar state, numpy RNGs
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import load, save_file

from MedTranslateLib.errors import ConfigError, ModelError
from MedTranslateLib.families.base import pack_state, unpack_state
from MedTranslateLib.io.atomic import swap_into_place


def _split_optimizer(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(name: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}.state."
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, entry = key[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[entry] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": [dict(g) for g in meta["param_groups"]]}


def save_checkpoint(folder: Path | str, nets: Mapping[str, torch.nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer], state: Mapping[str, Any],
                    rngs: Sequence[np.random.Generator] = ()) -> Path:
    """Write a checkpoint atomically (temp folder in the same parent, then rename over the old one)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(pack_state(nets), str(tmp / "weights.safetensors"))
        opt_tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        opt_meta: dict[str, Any] = {}
        for name, optimizer in optimizers.items():
            tensors, meta = _split_optimizer(name, optimizer)
            opt_tensors.update(tensors)
            opt_meta[name] = meta
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        payload = {"format": "medtranslate-checkpoint-1", "state": dict(state), "optimizers": opt_meta,
                   "numpy_rng": [g.bit_generator.state for g in rngs] or None}
        (tmp / "state.json").write_text(json.dumps(payload, indent=1, default=float), encoding="utf-8")
        swap_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, read into memory: ``load_file`` maps the file, and Windows cannot
    replace a folder holding a mapped file (the next checkpoint of a resumed run)."""
    return load(Path(path).read_bytes())


def load_checkpoint(folder: Path | str, nets: Mapping[str, torch.nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer],
                    rngs: Sequence[np.random.Generator] = ()) -> dict[str, Any]:
    """Restore networks, optimisers and RNGs in place; returns the saved ``state`` (step, best, history...)."""
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        raise ConfigError(f"No checkpoint in {folder}.", "Start without resume, or point work_dir at a previous run.")
    payload = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    weights = read_tensors(folder / "weights.safetensors")
    try:
        unpack_state(nets, weights, tuple(nets))
    except (RuntimeError, ModelError) as exc:
        raise ConfigError(f"The checkpoint in {folder} does not fit the configured networks ({exc}).",
                          "Resume with the same family and architecture, or start a new run.") from None
    opt_tensors = read_tensors(folder / "optimizer.safetensors")
    for name, optimizer in optimizers.items():
        device_state = _join_optimizer(name, opt_tensors, payload["optimizers"][name])
        optimizer.load_state_dict(device_state)
    if "rng.torch" in opt_tensors:
        torch.set_rng_state(opt_tensors["rng.torch"])
    saved = payload.get("numpy_rng") or []
    for generator, state in zip(rngs, [saved] if isinstance(saved, dict) else saved):  # a dict: one generator
        generator.bit_generator.state = state
    return payload["state"]
