"""A training run's data: the cases read, prepared and split (subjects or z-slabs), and the held-out evaluation
of networks on prepared cases through the inference engine, in physical units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from MedTranslateLib.errors import ConfigError, InputError
from MedTranslateLib.preprocess.modality import CT_LIKE
from MedTranslateLib.progress import ProgressTracker
from MedTranslateLib.training.config import TrainConfig
from MedTranslateLib.training.datasets import Case, Split, load_cases, split_by_subject, zslab_holdout
from MedTranslateLib.training.sampling import PreparedCase, load_cases_prepared


@dataclass
class RunData:
    """The prepared cases of each part of the split, and the split as the card records it."""

    train: list[PreparedCase]
    val: list[PreparedCase]
    test: list[PreparedCase]
    split: dict[str, Any]


def _refuse_cases_without_pairs(config: TrainConfig, cases: Sequence[Case]) -> None:
    """A family that learns from pairs cannot use cases without a source or a target (they would train): said
    before any volume is read, not after every case has been prepared."""
    from MedTranslateLib.families import get_family

    if config.split == "zslab" or not get_family(config.family).paired:
        return
    missing = [c.name for c in cases if c.source_path is None or c.target_path is None]
    if missing:
        raise ConfigError(f"{config.family} learns from pairs, but {len(missing)} case(s) have no source or no "
                          f"target ({', '.join(missing[:3])}).",
                          "Give every case a source and a target (layout paired_folder, SynthRAD, BraTS or a "
                          "complete CSV), or train an unpaired family: cyclegan or contourdiff.")


def load_data(config: TrainConfig, card: Mapping[str, Any], tracker: ProgressTracker,
               warn: Callable[[str], None] = lambda message: None) -> RunData:
    cases = load_cases(config.data, config.layout, config.source_modality, config.target_modality,
                       config.source_name, config.target_name, warn=warn, subject_folder=config.subject_folder)
    if config.max_cases:
        kept = cases[: int(config.max_cases)]
        listed = {*(config.train_subjects or ()), *(config.val_subjects or ()), *(config.test_subjects or ())}
        cut = sorted(listed & {c.subject_id for c in cases} - {c.subject_id for c in kept})
        if cut:
            raise ConfigError(f"max_cases = {config.max_cases} keeps the first {len(kept)} case(s), which leaves out "
                              f"the listed subject(s) {cut[:5]}.",
                              "Raise max_cases, or list subjects among the first cases.")
        cases = kept
    _refuse_cases_without_pairs(config, cases)
    on_case: Callable[[int, int], None] = lambda i, n: tracker.update(i / n, f"prepared {i}/{n} cases")
    if config.split == "zslab":
        paired = [c for c in cases if c.source_path and c.target_path]
        if not paired:
            raise ConfigError("The z-slab hold-out needs a paired case.", "Use a paired dataset or split=subject.")
        # the first train subject is cut into slabs; further train subjects are used whole for training
        by_subject: dict[str, Case] = {}
        for case in paired:  # a subject's first case (as the held-out benchmark reads it back)
            by_subject.setdefault(case.subject_id, case)
        wanted = list(config.train_subjects or [paired[0].subject_id])
        unknown = [s for s in wanted if s not in by_subject]
        if unknown:
            raise ConfigError(f"train_subjects {unknown} are not paired cases of {config.data}.",
                              f"Choose among {sorted(by_subject)[:10]}.")
        prepared = load_cases_prepared([by_subject[s] for s in wanted], card, on_case)
        _warn_about_grids(prepared, warn)
        volume, extra = prepared[0], prepared[1:]
        z0, z1 = volume.real_region[0]  # slabs of real slices, not of the padding up to the model's minimum size
        slabs = zslab_holdout(z1 - z0, config.test_fraction, config.val_fraction, config.slab_gap)
        slabs["subject"] = volume.subject_id
        if extra:
            slabs["extra_train_subjects"] = [c.subject_id for c in extra]
        part = lambda key: [volume.slab(*slabs[key])] if slabs.get(key) else []
        return RunData(part("train") + extra, part("val"), part("test"), slabs)
    split: Split = split_by_subject(cases, config.val_fraction, config.test_fraction, config.seed,
                                    config.train_subjects, config.val_subjects, config.test_subjects)
    paired = {c.subject_id for c in cases if c.source_path is not None and c.target_path is not None}
    _warn_about_empty_parts(config, split, len(paired), warn)
    prepared = load_cases_prepared(split.train + split.val + split.test, card, on_case)
    _warn_about_grids(prepared, warn)
    n_train, n_val = len(split.train), len(split.val)
    return RunData(prepared[:n_train], prepared[n_train:n_train + n_val], prepared[n_train + n_val:],
                 split.description)


def _warn_about_empty_parts(config: TrainConfig, split: Split, subjects: int, warn: Callable[[str], None]) -> None:
    """Say so when a validation or test share that was asked for came out empty (too few paired subjects; subject
    lists, which set the parts themselves, and data without pairs, which is never held out, are left alone)."""
    if split.description.get("method") != "by subject" or not subjects:
        return
    for part, fraction, effect in (("validation", config.val_fraction, "the exported weights are the last ones, "
                                    "not the best validated"),
                                   ("test", config.test_fraction, "the card's metrics are on validation data "
                                    "(optimistic) or none")):
        held = split.val if part == "validation" else split.test
        if fraction > 0 and not held:
            key = "val_fraction" if part == "validation" else "test_fraction"
            warn(f"{key} = {fraction:g} of {subjects} paired subject(s) left no {part} subject: {effect}. Give more "
                 f"subjects, name them ({'val' if part == 'validation' else 'test'}_subjects), or use split = "
                 f"\"zslab\" for a single volume.")


def _warn_about_grids(cases: Sequence[PreparedCase], warn: Callable[[str], None]) -> None:
    """One warning naming the cases whose target was resampled onto its source's grid (paired data must be
    co-registered: a target moved or mirrored by a wrong header trains the model on misaligned pairs)."""
    moved = [f"{c.name} ({c.grid_note})" for c in cases if c.grid_note]
    if moved:
        warn(f"The target of {len(moved)} of {len(cases)} case(s) is not on its source's grid and was resampled "
             f"onto it; check that these pairs are co-registered: {'; '.join(moved[:5])}"
             + (f"; and {len(moved) - 5} more" if len(moved) > 5 else "") + ".")


def _metric_modality(target_modality: str) -> str:
    return "CT" if target_modality.upper() in CT_LIKE else "MR"


def evaluate_prepared(family: Any, nets: Mapping[str, Any], card: Mapping[str, Any],
                      cases: Sequence[PreparedCase], device: Any, tracker: ProgressTracker | None = None,
                      report: Callable[[float, str], None] | None = None) -> list[dict[str, float]]:
    """Predict each case through the inference engine, de-normalise, and compute metrics in physical units.

    ``tracker`` gives the cancel token; ``report(fraction, message)``, when given, hears the cases' progress
    (the evaluation of a diffusion model can take minutes)."""
    from MedTranslateLib.evaluation.metrics import compute_metrics, mae
    from MedTranslateLib.families.base import InferenceOptions
    from MedTranslateLib.inference.engine import predict_volume
    from MedTranslateLib.preprocess.normalization import denormalize

    options = InferenceOptions()
    modes = {name: net.training for name, net in nets.items()}
    for net in nets.values():
        net.eval()
    try:
        predictor = family.make_predictor(dict(nets), card, options)
        spec = card["normalization"]["output"]
        results = []
        count = len(cases)
        for index, case in enumerate(cases):
            if case.source is None or case.target is None:
                continue
            def forward(event: Any, i: int = index) -> None:
                assert report is not None
                report((i + event.fraction) / count, f"case {i + 1}/{count}: {event.message}")
            sub = ProgressTracker(callback=forward if report is not None else None,
                                  cancel=tracker.cancel_token if tracker else None)
            prediction = predict_volume(case.source, case.mask, card, predictor, options, device, sub)
            # metrics on the real voxels: padding, identical in both, would flatter SSIM
            pred = case.unpadded(np.asarray(denormalize(np.asarray(prediction.mean, dtype=np.float32), spec),
                                            dtype=np.float32))
            ref = case.unpadded(np.asarray(denormalize(case.target, spec), dtype=np.float32))
            mask = case.unpadded(case.mask)
            try:
                results.append(compute_metrics(pred, ref, mask, _metric_modality(card["target_modality"])))
            except InputError:  # e.g. a slab thinner than the SSIM window: report what can be measured
                results.append({"mae": mae(pred, ref, mask)})
        return results
    finally:
        for name, net in nets.items():
            net.train(modes[name])
