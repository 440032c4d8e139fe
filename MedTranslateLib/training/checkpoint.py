"""Checkpoints without pickle: network weights and optimiser tensors in safetensors, everything else in JSON.

Layout of a checkpoint folder::

    weights.safetensors     <network>.<parameter>
    optimizer.safetensors   <optimizer>.state.<param index>.<key>, plus rng.torch and rng.cuda.<device> (uint8)
    state.json              step, best metric, history, the run's settings and data split, optimiser param
                            groups and scalar state, numpy RNGs
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from MedTranslateLib.errors import ConfigError, ModelError
from MedTranslateLib.families.base import pack_state, unpack_state
from MedTranslateLib.io.atomic import swap_into_place
from MedTranslateLib.io.path_checks import staging_prefix
from MedTranslateLib.training.config import CARD_TEXT_KEYS, RESUME_FREE_KEYS, TrainConfig


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
    tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(folder.name), dir=folder.parent))
    try:
        save_file(pack_state(nets), str(tmp / "weights.safetensors"))
        opt_tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state(), **_cuda_rng_states()}
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


def _cuda_rng_states() -> dict[str, torch.Tensor]:
    """The CUDA generators' states (``rng.cuda.<device>``): on a GPU the training noise comes from them, so a
    resumed run would otherwise replay the noise of its first steps. Nothing when CUDA was never used."""
    if not torch.cuda.is_initialized():
        return {}
    return {f"rng.cuda.{index}": torch.cuda.get_rng_state(index) for index in range(torch.cuda.device_count())}


def _restore_cuda_rng_states(tensors: Mapping[str, torch.Tensor]) -> None:
    """Put back the CUDA generators' states saved by :func:`_cuda_rng_states`, for the GPUs this machine has."""
    saved = {int(key.rsplit(".", 1)[1]): value for key, value in tensors.items() if key.startswith("rng.cuda.")}
    if not saved or not torch.cuda.is_available():
        return
    for index, state in saved.items():
        if index < torch.cuda.device_count():
            torch.cuda.set_rng_state(state, index)


def read_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, read into memory: ``load_file`` maps the file, and Windows cannot
    replace a folder holding a mapped file (the next checkpoint of a resumed run)."""
    return load(Path(path).read_bytes())


def _damaged(folder: Path, error: BaseException) -> ConfigError:
    detail = f"{type(error).__name__}: {error}"
    return ConfigError(f"The checkpoint in {folder} is incomplete or damaged ({detail[:200]}).",
                       "Start the run again without --resume (it replaces this checkpoint), or with another --output.")


def read_state(folder: Path) -> dict[str, Any]:
    """The checkpoint's ``state.json`` (ConfigError when it is missing a part or damaged)."""
    try:
        payload = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        if not isinstance(payload.get("state"), dict) or not isinstance(payload.get("optimizers"), dict):
            raise KeyError("state or optimizers")
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise _damaged(folder, exc) from None
    return payload


def load_checkpoint(folder: Path | str, nets: Mapping[str, torch.nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer],
                    rngs: Sequence[np.random.Generator] = ()) -> dict[str, Any]:
    """Restore networks, optimisers and RNGs in place; returns the saved ``state`` (step, best, history...)."""
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        raise ConfigError(f"No checkpoint in {folder}.", "Start without resume, or point work_dir at a previous run.")
    payload = read_state(folder)
    try:
        weights = read_tensors(folder / "weights.safetensors")
        opt_tensors = read_tensors(folder / "optimizer.safetensors")
    except (OSError, SafetensorError) as exc:
        raise _damaged(folder, exc) from None
    try:
        unpack_state(nets, weights, tuple(nets))
    except (RuntimeError, ModelError) as exc:
        raise ConfigError(f"The checkpoint in {folder} does not fit the configured networks ({exc}).",
                          "Resume with the same family and architecture, or start a new run.") from None
    try:
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(_join_optimizer(name, opt_tensors, payload["optimizers"][name]))
    except (KeyError, ValueError) as exc:  # a part missing, or the optimiser of another run
        raise _damaged(folder, exc) from None
    if "rng.torch" in opt_tensors:
        torch.set_rng_state(opt_tensors["rng.torch"])
    _restore_cuda_rng_states(opt_tensors)
    saved = payload.get("numpy_rng") or []
    for generator, state in zip(rngs, [saved] if isinstance(saved, dict) else saved):  # a dict: one generator
        generator.bit_generator.state = state
    return payload["state"]


def recorded_config(config: TrainConfig) -> dict[str, Any]:
    """The settings as a checkpoint records them: JSON values, ``data`` as an absolute path."""
    values = json.loads(json.dumps(config.to_dict(), default=str))
    values["data"] = str(Path(config.data).resolve())
    return values


def check_resume_settings(folder: Path | str, config: TrainConfig) -> None:
    """The settings part of :func:`check_resume`, which can run before the data is read."""
    state = read_state(Path(folder))["state"]
    if "config" in state:
        _check_settings(Path(folder), state["config"], recorded_config(config))


def check_resume(folder: Path | str, split: Mapping[str, Any]) -> str | None:
    """Raise :class:`ConfigError` when the checkpoint in ``folder`` was made from another split of the data (its
    settings are compared before the data is read: :func:`check_resume_settings`). Returns a warning for a
    checkpoint of an older version, which recorded neither and so cannot be checked."""
    folder = Path(folder)
    state = read_state(folder)["state"]
    if "config" not in state:
        return (f"the checkpoint in {folder} is from an older MedTranslate that did not record its settings: "
                "resuming it unchecked, so give it the settings and data of its first part.")
    _check_split(folder, state.get("split") or {}, json.loads(json.dumps(split, default=str)))
    return None


_NEW_RUN = "or start a new run: with another --output, or without --resume (it replaces this checkpoint)."


def _check_settings(folder: Path, saved: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Refuse a change of any setting that can change what is learned from which data."""
    old = {**recorded_config(TrainConfig()), **saved}  # a key added since that version had its default
    changed = _changes(old, new, [key for key in new if key not in RESUME_FREE_KEYS + CARD_TEXT_KEYS])
    if changed:
        raise ConfigError(f"The checkpoint in {folder} was trained with other settings: {'; '.join(changed)}.",
                          f"Resume with its settings (only {', '.join(RESUME_FREE_KEYS)} and the card's texts may "
                          f"change), {_NEW_RUN}")


def _check_split(folder: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Refuse another split: other cases, or other subjects (or slabs) for training, validation or testing."""
    changed = _changes(old, new, list(dict.fromkeys([*old, *new])))
    if changed:
        raise ConfigError(f"The data of the checkpoint in {folder} was split differently: {'; '.join(changed)}.",
                          f"Resume on the same cases (add or remove none), {_NEW_RUN}")


def _changes(old: Mapping[str, Any], new: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """``key old -> new`` (as JSON, shortened) for each of ``keys`` whose value differs."""
    def text(value: Any) -> str:
        dumped = json.dumps(value)
        return dumped if len(dumped) <= 100 else dumped[:96] + " ..."

    return [f"{key} {text(old.get(key))} -> {text(new.get(key))}" for key in keys if old.get(key) != new.get(key)]
