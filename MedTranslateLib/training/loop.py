"""The training loop: data -> steps (or ``fit`` for the random forest) -> validation through the inference
engine in physical units -> best model -> checkpoints / resume -> export of a model package."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from MedTranslateLib.errors import ConfigError, InputError
from MedTranslateLib.progress import ProgressTracker
from MedTranslateLib.training import card_builder, checkpoint, distributed
from MedTranslateLib.training.config import CT_LIKE, TrainConfig
from MedTranslateLib.training.datasets import Split, load_cases, split_by_subject, zslab_holdout
from MedTranslateLib.training.sampling import PreparedCase, Sampler, default_slice_size, load_cases_prepared

STAGES = (("load", 0.1), ("train", 0.8), ("evaluate", 0.05), ("export", 0.05))


@dataclass
class TrainResult:
    """What a run produced. ``metrics_on`` names the held-out data of ``best_metrics`` (test/validation/none)."""

    package: Path | None
    best_metrics: dict[str, float | None]
    metrics_on: str
    best_step: int | None
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Data:
    train: list[PreparedCase]
    val: list[PreparedCase]
    test: list[PreparedCase]
    split: dict[str, Any]


def _seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _load_data(config: TrainConfig, card: Mapping[str, Any], tracker: ProgressTracker) -> _Data:
    cases = load_cases(config.data, config.layout, config.source_modality, config.target_modality,
                       config.source_name, config.target_name)
    if config.max_cases:
        cases = cases[: int(config.max_cases)]
    on_case: Callable[[int, int], None] = lambda i, n: tracker.update(i / n, f"prepared {i}/{n} cases")
    if config.split == "zslab":
        paired = [c for c in cases if c.source_path and c.target_path]
        if not paired:
            raise ConfigError("The z-slab hold-out needs a paired case.", "Use a paired dataset or split=subject.")
        chosen = [c for c in paired if c.subject_id in (config.train_subjects or [])] or paired[:1]
        volume = load_cases_prepared(chosen[:1], card, on_case)[0]
        slabs = zslab_holdout(volume.mask.shape[0], config.test_fraction, config.val_fraction, config.slab_gap)
        slabs["subject"] = volume.subject_id
        part = lambda key: [volume.slab(*slabs[key])] if slabs.get(key) else []
        return _Data(part("train"), part("val"), part("test"), slabs)
    split: Split = split_by_subject(cases, config.val_fraction, config.test_fraction, config.seed,
                                    config.train_subjects, config.val_subjects, config.test_subjects)
    prepared = load_cases_prepared(split.train + split.val + split.test, card, on_case)
    n_train, n_val = len(split.train), len(split.val)
    return _Data(prepared[:n_train], prepared[n_train:n_train + n_val], prepared[n_train + n_val:],
                 split.description)


def _metric_modality(target_modality: str) -> str:
    return "CT" if target_modality.upper() in CT_LIKE else "MR"


def evaluate_prepared(family: Any, nets: Mapping[str, Any], card: Mapping[str, Any],
                      cases: Sequence[PreparedCase], device: Any, tracker: ProgressTracker | None = None
                      ) -> list[dict[str, float]]:
    """Predict each case through the inference engine, de-normalise, and compute metrics in physical units."""
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
        for case in cases:
            if case.source is None or case.target is None:
                continue
            sub = ProgressTracker(cancel=tracker.cancel_token if tracker else None)
            prediction = predict_volume(case.source, case.mask, card, predictor, options, device, sub)
            pred = np.asarray(denormalize(np.asarray(prediction.mean, dtype=np.float32), spec), dtype=np.float32)
            ref = np.asarray(denormalize(case.target, spec), dtype=np.float32)
            try:
                results.append(compute_metrics(pred, ref, case.mask, _metric_modality(card["target_modality"])))
            except InputError:  # e.g. a slab thinner than the SSIM window: report what can be measured
                results.append({"mae": mae(pred, ref, case.mask)})
        return results
    finally:
        for name, net in nets.items():
            net.train(modes[name])


class _Logger:
    """CSV (always, rank 0) and optional TensorBoard logs in the work folder."""

    def __init__(self, folder: Path, kind: str, enabled: bool) -> None:
        self.enabled = enabled
        self.folder = folder
        self.tb = None
        if enabled and kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(folder / "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, name: str, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        path = self.folder / f"{name}.csv"
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(f"{name}/{key}", value, int(row["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _autocast_factory(device: Any, amp: bool) -> Callable[[], Any]:
    """bf16 autocast on CUDA when asked (no gradient scaler needed); a no-op elsewhere."""
    import torch

    if amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _to_device(batch: Mapping[str, np.ndarray], device: Any) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


def train(config: TrainConfig, progress: ProgressTracker | None = None) -> TrainResult:
    """Train a model as configured and export the best weights as a model package (rank 0)."""
    import torch
    from safetensors.torch import load_file, save_file

    from MedTranslateLib.families import get_family
    from MedTranslateLib.families.base import pack_state, unpack_state
    from MedTranslateLib.inference.device import select_device

    config.validate()
    started = time.monotonic()
    tracker = progress or ProgressTracker(STAGES)
    device = select_device(config.device)
    ctx = distributed.init_distributed(device)
    device = distributed.rank_device(device, ctx)
    try:
        _seed_everything(config.seed, config.deterministic)
        family = get_family(config.family)
        card = card_builder.base_card(config)
        tracker.stage("load", "reading and preparing the training data")
        data = _load_data(config, card, tracker)
        spatial_dims = config.spatial_dims
        nets = {k: v.to(device) for k, v in family.build(card["architecture"], spatial_dims).items()}
        work = config.work_path
        logger = _Logger(work, config.log, ctx.is_main)
        if ctx.is_main:
            work.mkdir(parents=True, exist_ok=True)
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"mae": None, "step": None, "metrics": {}}
        best_state: dict[str, torch.Tensor] | None = None
        step, earlier_seconds = 0, 0.0
        if not getattr(family, "gradient_trained", True):
            tracker.stage("train", "fitting")
            samples = [(c.source, c.target, c.mask) for c in data.train]
            state = family.fit(samples, dict(config.family_options))
            unpack_state(nets, state, tuple(family.inference_networks()))
            best_state = {k: v.detach().cpu().clone() for k, v in state.items()}
            total = 0
        else:
            train_cases = distributed.shard(data.train, ctx)
            size = (config.patch_size if spatial_dims == 3 else
                    (config.slice_size or default_slice_size(data.train, config.slice_axis)))
            sampler = Sampler(train_cases, config.dimensionality, size, config.slice_axis, config.n_context,
                              config.body_fraction, config.seed + 7919 * (ctx.rank + 1), config.augment)
            total = int(config.steps)
            if config.epochs:
                per_epoch = config.steps_per_epoch or math.ceil(sampler.samples_per_epoch() / config.batch_size)
                total = int(config.epochs) * max(1, int(per_epoch) // ctx.world_size)
            optimizers = family.configure_optimizers(nets, config.lr)
            ckpt_dir, best_file = work / "checkpoint", work / "best.safetensors"
            if config.resume:
                saved = checkpoint.load_checkpoint(ckpt_dir, nets, optimizers, sampler.rng)
                step, history, best = int(saved["step"]), list(saved.get("history", [])), dict(saved["best"])
                earlier_seconds = float(saved.get("seconds", 0.0))
                if best_file.is_file():
                    best_state = load_file(str(best_file))
            train_nets = distributed.wrap_networks(nets, ctx, device)
            autocast = _autocast_factory(device, config.amp)
            options = dict(config.family_options)
            tracker.stage("train", f"training {config.family} for {total} steps on {device}")
            running: dict[str, list[float]] = {}
            step_start = step
            for net in nets.values():
                net.train()
            while step < total:
                batch = _to_device(sampler.batch(config.batch_size), device)
                losses = family.training_step(train_nets, optimizers, batch, autocast, options)
                step += 1
                for key, value in losses.items():
                    running.setdefault(key, []).append(float(value))
                if step % config.log_interval == 0 or step == total:
                    row = {"step": step, "seconds": round(time.monotonic() - started, 2),
                           **{k: float(np.mean(v)) for k, v in running.items()}}
                    history.append(row)
                    logger.write("train_log", row)
                    running = {}
                message = f"step {step}/{total} " + " ".join(f"{k} {float(v):.4f}" for k, v in losses.items())
                tracker.update((step - step_start) / max(1, total - step_start), message)
                validate = data.val and (step % config.val_interval == 0 or step == total)
                if ctx.is_main and validate:
                    per_case = evaluate_prepared(family, distributed.unwrap(train_nets), card, data.val, device,
                                                 tracker)
                    metrics = card_builder.aggregate_metrics(per_case)
                    row = {"step": step, **metrics}
                    history.append({"validation": True, **row})
                    logger.write("validation_log", row)
                    value = metrics.get("mae")
                    if value is not None and (best["mae"] is None or value < best["mae"]):
                        best = {"mae": value, "step": step, "metrics": metrics}
                        best_state = pack_state(distributed.unwrap(train_nets), tuple(family.inference_networks()))
                        save_file(best_state, str(best_file))
                if ctx.is_main and (step % config.checkpoint_interval == 0 or step == total):
                    checkpoint.save_checkpoint(ckpt_dir, nets, optimizers,
                                               {"step": step, "best": best, "history": history,
                                                "seconds": earlier_seconds + time.monotonic() - started}, sampler.rng)
            if best_state is None:  # no validation data: the last weights are the result
                best_state = pack_state(nets, tuple(family.inference_networks()))
        distributed.barrier(ctx)
        package, metrics_on, held_out = None, "none", {}
        if ctx.is_main:
            tracker.stage("evaluate", "measuring held-out metrics")
            unpack_state(nets, best_state, tuple(family.inference_networks()))
            held_cases, metrics_on = (data.test, "test") if data.test else (data.val, "validation")
            per_case = evaluate_prepared(family, nets, card, held_cases, device, tracker) if held_cases else []
            held_out = card_builder.aggregate_metrics(per_case)
            if not per_case:
                metrics_on = "none"
            subjects = sorted({c.name for c in held_cases}) if per_case else []
            tracker.stage("export", "writing the model package")
            final = card_builder.final_card(
                card, config, split=data.split, metrics=held_out, metrics_on=metrics_on,
                metrics_subjects=subjects, seconds=earlier_seconds + time.monotonic() - started, device=str(device), steps=step,
                references=[c.reference for c in data.train])
            from MedTranslateLib.models.export import export_package

            package = export_package(best_state, final, Path(config.output), half=config.export_half,
                                     as_zip=config.export_zip)
            tracker.done(f"saved {package}")
        logger.close()
        distributed.barrier(ctx)
        return TrainResult(package, held_out, metrics_on, best["step"], step,
                           earlier_seconds + time.monotonic() - started, history)
    finally:
        distributed.cleanup(ctx)
