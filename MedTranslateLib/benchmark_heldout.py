"""The real-data tasks of the model benchmark and their held-out cases, scored with the SynthRAD 2023 metrics.

A package is always scored on data it never saw: the held-out cases come from the split its card records
(z-slab or test subjects); MR references are put on the model's output scale, and MR models are also compared
on a common scale (:func:`mae_on_common_scale`). Used by :mod:`MedTranslateLib.benchmark_models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from MedTranslateLib.preprocess.modality import CT_LIKE


@dataclass(frozen=True)
class Task:
    """A real-data task: its id prefix (of config and model ids), title and data sub-folder."""

    prefix: str
    title: str
    subfolder: str


TASKS = (Task("mr2ct-phantom", "MR (T2) -> CT, pork head phantom", "Task1"),
         Task("t1-t2-brats", "T1 -> T2, BraTS 2023", "BraTS2023"),
         Task("t1-flair-brats", "T1 -> FLAIR, BraTS 2023", "BraTS2023"))


def task_of(model_id: str) -> Task | None:
    """The task whose prefix starts ``model_id`` (None for other models, e.g. the procedural demo)."""
    return next((t for t in TASKS if model_id.startswith(t.prefix + "-")), None)


# ------------------------------------------------------------------ held-out data
@dataclass
class HeldOut:
    """One held-out case: file paths and, for a z-slab split, the slice range scored."""

    name: str
    source: Path
    target: Path
    mask: Path | None
    z_range: tuple[int, int] | None = None


def held_out_cases(card: dict[str, Any], data_root: Path) -> list[HeldOut]:
    """The held-out cases recorded in ``card['training']['split']``, found under ``data_root``."""
    from MedTranslateLib.errors import ConfigError
    from MedTranslateLib.training.datasets import load_cases

    training = card.get("training") or {}
    split, config = training.get("split") or {}, training.get("config") or {}
    task = task_of(card["id"])
    root = data_root / task.subfolder if task else data_root
    cases = load_cases(root, config.get("layout", "auto"), card["source_modality"], card["target_modality"],
                       config.get("source_name"), config.get("target_name"),
                       subject_folder=config.get("subject_folder", "case"))
    if split.get("method") == "z-slab":
        if not split.get("test"):
            raise ConfigError(f"{card['id']}: the z-slab split has no test slab.", "Retrain with test_fraction > 0.")
        chosen = [c for c in cases if c.subject_id == split.get("subject")]
        z0, z1 = (int(v) for v in split["test"])
        return [HeldOut(f"{c.name}[z{z0}:{z1}]", c.source_path, c.target_path, c.mask_path, (z0, z1))
                for c in chosen[:1]]
    test = set(split.get("test") or [])
    return [HeldOut(c.name, c.source_path, c.target_path, c.mask_path) for c in cases if c.subject_id in test]


def volume_array(image: Any) -> np.ndarray:
    """A SimpleITK image's voxels as a float32 (z, y, x) array."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image).astype(np.float32)


def evaluation_mask(source: Any, mask_path: Path | None, card: dict[str, Any]) -> np.ndarray:
    """The case's mask file, else the body mask the preprocessing computes from the source (card settings)."""
    from MedTranslateLib.io import read_mask
    from MedTranslateLib.preprocess.body_mask import body_mask

    if mask_path is not None:
        return volume_array(read_mask(mask_path, source)) > 0
    options = card.get("body_mask") or {}
    return np.asarray(body_mask(volume_array(source), source.GetSpacing(), method=options.get("method", "otsu"),
                                threshold=options.get("threshold"), dilate_mm=options.get("dilate_mm", 0.0),
                                modality=card.get("source_modality")), dtype=bool)


def mae_on_common_scale(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, spec: dict[str, Any],
                        params: dict[str, Any] | None = None) -> float:
    """MR MAE that compares models with different output normalisations: the prediction is mapped back to the
    reference's own units with the reference's statistics under ``spec`` (``params`` from :func:`normalize`,
    computed here when not given; what a per-volume calibrated output would be), then both are put on the
    reference's 0-1000 scale between its 0.5th and 99.5th percentiles in the mask (the reference clipped to
    that range). For a percentile [0.5, 99.5] model this is its MAE."""
    from MedTranslateLib.evaluation.metrics import mr_window
    from MedTranslateLib.preprocess.normalization import denormalize, normalize, output_to_unit

    if params is None:
        _, params = normalize(ref, mask, spec)
    physical = denormalize(output_to_unit(pred, spec), spec, params)
    lo, hi = mr_window(ref, mask)  # the MR PSNR/SSIM window
    diff = np.abs(physical[mask] - np.clip(ref[mask], lo, hi))
    return float(diff.mean() * 1000.0 / (hi - lo))


def score_case(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, case: HeldOut, card: dict[str, Any],
               std: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics of one held-out case (restricted to its z-slab), plus uncertainty vs error when ``std`` is given."""
    from MedTranslateLib.evaluation.evaluate import reference_statistics
    from MedTranslateLib.evaluation.metrics import compute_metrics
    from MedTranslateLib.evaluation.uncertainty import uncertainty_error_relation

    raw = ref
    ref, params = reference_statistics(ref, mask, card)  # the statistics of the whole volume
    if case.z_range is not None:
        z0, z1 = case.z_range
        pred, ref, raw, mask = pred[z0:z1], ref[z0:z1], raw[z0:z1], mask[z0:z1]
        std = None if std is None else std[z0:z1]
    modality = "CT" if card["target_modality"].upper() in CT_LIKE else "MR"
    out: dict[str, Any] = dict(compute_metrics(pred, ref, mask, modality))
    if modality == "MR":
        out["mae_common"] = mae_on_common_scale(pred, raw, mask, card["normalization"]["output"], params)
    if std is not None:
        relation = uncertainty_error_relation(std, np.abs(pred - ref), mask)
        out.update({f"unc_{k}": relation[k] for k in ("pearson", "spearman", "error_top10", "error_bottom10")})
    return out
