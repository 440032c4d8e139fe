"""Model cards for trained models: the working card used for preprocessing during training, and the
final card (data, split, held-out metrics and on which data, training time, device, intended use,
limitations, not for clinical use, raw-unit input statistics for out-of-distribution warnings)."""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from MedTranslateLib.training.config import TrainConfig

CARD_MODALITIES = ("CT", "MR", "CBCT", "PET", "T1", "T1C", "T2", "FLAIR", "PD")
PLACEHOLDER_SHA = "0" * 64


def _modality(name: str) -> str:
    upper = name.upper()
    return upper if upper in CARD_MODALITIES else "MR"


def base_card(config: TrainConfig) -> dict[str, Any]:
    """The card the training run preprocesses with (same normalisation and geometry as inference will use).

    ``config.slice_size`` is only the training crop: whole slices are predicted at inference."""
    in_channels = 2 * config.n_context + 1
    architecture = {"in_channels": in_channels, "out_channels": 1, **config.architecture}
    architecture["in_channels"], architecture["out_channels"] = in_channels, 1
    inputs: dict[str, Any] = {"spacing": list(config.spacing) if config.spacing else None,
                              "orientation": config.orientation, "slice_axis": config.slice_axis,
                              "batch_size": int(config.batch_size), "overlap": float(config.overlap)}
    if config.dimensionality == "2.5d":
        inputs["context_slices"] = config.n_context
    if config.dimensionality == "3d":
        inputs["patch_size"] = [int(s) for s in config.patch_size]
    card: dict[str, Any] = {
        "schema_version": 1,
        "id": config.model_id,
        "version": config.version,
        "title": config.title,
        "description": config.description or f"{config.family} {config.dimensionality} "
                                              f"{config.source_modality} -> {config.target_modality} translation.",
        "source_modality": _modality(config.source_modality),
        "target_modality": _modality(config.target_modality),
        "anatomy": config.anatomy,
        "field_of_view": config.field_of_view,
        "family": config.family,
        "dimensionality": config.dimensionality,
        "architecture": architecture,
        "input": inputs,
        "normalization": {"input": config.input_normalization(), "output": config.output_normalization()},
        "training": {"data": str(config.data), "split": config.split},
        "metrics": {"data": "not measured yet", "values": {}},
        "license": config.license,
        "citation": config.citation or "Trained with MedTranslate.",
        "weights": {"file": "weights.safetensors", "sha256": PLACEHOLDER_SHA},
        "intended_use": config.intended_use,
        "limitations": config.limitations,
        "clinical_use": False,
    }
    if config.body_mask:
        card["body_mask"] = dict(config.body_mask)
    if config.sample_data:
        card["sample_data"] = [dict(entry) for entry in config.sample_data]
    if config.source_modality.upper() not in CARD_MODALITIES:
        card["source_contrast"] = config.source_modality
    if config.target_modality.upper() not in CARD_MODALITIES:
        card["target_contrast"] = config.target_modality
    return card


def check_card(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` when the card this run will export cannot pass the schema (an invalid model id,
    an overlap above 0.95, ...): checked before training, not after hours of it."""
    from MedTranslateLib.errors import ConfigError, ModelError
    from MedTranslateLib.models.card import validate_card

    try:
        validate_card(base_card(config), source="this run would write")
    except ModelError as exc:
        raise ConfigError(exc.problem, "Change the setting behind that card field (id is model_id; version, title and "
                          "input.overlap / context_slices / patch_size are the settings of the same name) and run "
                          "again.") from None


def combine_references(references: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """One ``intensity_reference`` from per-case ones (``evaluation.ood.intensity_reference`` of each training
    input): the median over cases of every number (per key for tables such as ``percentiles``, per axis for
    ``extent_mm`` / ``spacing_mm``), the union of the ranges in ``relative_range`` (lowest low, highest high);
    text fields are taken from the first case."""
    refs = [r for r in references if r]
    if not refs:
        return None
    out: dict[str, Any] = {}
    for key, value in refs[0].items():
        if key == "relative_range":
            out[key] = {k: [float(min(r[key][k][0] for r in refs)), float(max(r[key][k][1] for r in refs))]
                        for k in value}
        elif isinstance(value, Mapping):
            out[key] = {k: float(np.median([r[key][k] for r in refs])) for k in value}
        elif isinstance(value, (list, tuple)):
            out[key] = [float(v) for v in np.median([r[key] for r in refs], axis=0)]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(np.median([r[key] for r in refs]))
        else:
            out[key] = value
    return out


def aggregate_metrics(per_case: Sequence[Mapping[str, float]]) -> dict[str, float | None]:
    """Mean of each metric over cases (None where a value is missing or not finite)."""
    if not per_case:
        return {}
    out: dict[str, float | None] = {}
    for key in per_case[0]:
        values = [float(m[key]) for m in per_case if m.get(key) is not None and np.isfinite(m[key])]
        out[key] = float(np.mean(values)) if values else None
    return out


def held_out_description(split: Mapping[str, Any], metrics_on: str, subjects: Sequence[str]) -> str:
    """Where the card's metrics were measured: held-out subjects, or for a z-slab split the held-out slices of a
    subject whose other slices were trained on."""
    where = "on the model grid after preprocessing, inside the case's body mask (the data set's mask when it has one)"
    if split.get("method") == "z-slab" and split.get(metrics_on):
        (lo, hi), (t_lo, t_hi) = split[metrics_on], split.get("train") or (0, 0)
        return (f"Held-out {metrics_on} slices {lo}-{hi - 1} of {split.get('subject')} (slices {t_lo}-{t_hi - 1} of the "
                f"same volume were trained on, {lo - t_hi} slices between), {where}.")  # a val slab may lie between
    return f"Held-out {metrics_on} data not used for training ({', '.join(subjects)}), {where}."


def final_card(card: Mapping[str, Any], config: TrainConfig, *, split: Mapping[str, Any],
               metrics: Mapping[str, float | None], metrics_on: str, metrics_subjects: Sequence[str],
               seconds: float, device: str, steps: int, references: Sequence[Mapping[str, Any] | None],
               architecture: Mapping[str, Any] | None = None, warnings: Sequence[str] = ()) -> dict[str, Any]:
    """The exported card: ``metrics_on`` says which held-out split ("test", "validation" or "none");
    ``warnings``: what the run said about its data (kept in ``training.warnings``)."""
    import torch

    import MedTranslateLib

    out = {key: (dict(value) if isinstance(value, Mapping) else value) for key, value in card.items()}
    if architecture is not None:
        out["architecture"] = dict(architecture)
    config_dict = {k: v for k, v in config.to_dict().items() if v is not None}
    for key in ("data", "output", "work_dir"):  # folder names only: local paths mean nothing on another machine
        if key in config_dict:
            config_dict[key] = Path(str(config_dict[key])).name
    out["training"] = {
        "data": f"{Path(str(config.data)).name} ({config.layout} layout)",
        "split": dict(split),
        "steps": int(steps),
        "seconds": round(float(seconds), 1),
        "device": device,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": config_dict,
        "software": f"MedTranslate {getattr(MedTranslateLib, '__version__', '?')}, torch {torch.__version__}, "
                    f"Python {platform.python_version()}",
    }
    if config.epochs:
        out["training"]["epochs"] = int(config.epochs)
    if warnings:
        out["training"]["warnings"] = list(warnings)
    if metrics_on == "none":
        data = "No held-out data: the metrics are empty. Evaluate the model on unseen data before use."
    else:
        data = held_out_description(split, metrics_on, metrics_subjects)
    out["metrics"] = {
        "data": data,
        "definitions": "SynthRAD 2023 MAE/PSNR/SSIM and SynthRAD 2025 PSNR/MS-SSIM (CT targets); "
                       "MAE and normalised PSNR/SSIM for MR targets (MedTranslateLib.evaluation.metrics).",
        "values": {k: (None if v is None or not np.isfinite(v) else float(v)) for k, v in metrics.items()},
    }
    reference = combine_references(references)
    if reference is not None:
        out["intensity_reference"] = reference
    out["performance"] = {"training_seconds": round(float(seconds), 1), "training_device": device}
    limitations = config.limitations.strip()
    if "not for clinical use" not in limitations.lower():
        limitations = limitations.rstrip(".") + ". Not for clinical use."
    out["limitations"] = limitations
    out["clinical_use"] = False
    return out
