"""The training loop: data -> steps (or ``fit`` for the random forest) -> validation through the inference
engine in physical units -> best model -> checkpoints / resume -> export of a model package."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.progress import ProgressTracker
from MedTranslateLib.signals import signals_deferred
from MedTranslateLib.training import card_builder, checkpoint, distributed
from MedTranslateLib.training.config import TrainConfig
from MedTranslateLib.training.datasets import resolve_layout
from MedTranslateLib.training.run_data import evaluate_prepared, load_data
from MedTranslateLib.training.sampling import Sampler, default_slice_size, oversized_crop
from MedTranslateLib.training.workspace import (Logger, check_destinations, first_missing_folder, remove_empty_folders,
                                                remove_unfinished_work)

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
    warnings: list[str] = field(default_factory=list)  # what the run said about its data (also in the card)


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


def _autocast_factory(device: Any, amp: bool) -> Callable[[], Any]:
    """bf16 autocast on CUDA when asked (no gradient scaler needed); a no-op elsewhere."""
    import torch

    if amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _to_device(batch: Mapping[str, np.ndarray], device: Any) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


def lr_factor(config: TrainConfig, step: int, total: int) -> float:
    """Learning-rate multiplier before optimisation step ``step`` (0-based) of ``total``: linear warm-up, then
    constant or cosine decay to ``min_lr_fraction``. Stateless, so a resumed run continues the same curve."""
    warmup = int(config.warmup_steps)
    if step < warmup:
        return (step + 1) / warmup
    if config.lr_schedule != "cosine":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    low = float(config.min_lr_fraction)
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_finite(losses: Mapping[str, float], step: int, lr: float) -> None:
    """Stop a diverged run (a NaN or infinite loss) instead of training on and exporting broken weights."""
    bad = [key for key, value in losses.items() if not math.isfinite(value)]
    if bad:
        raise ConfigError(f"Training diverged at step {step}: the {', '.join(bad)} loss is not finite; nothing was "
                          "exported.", f"Lower the learning rate (lr = {lr:g} now), e.g. by 10x, and train again.")


def _set_learning_rates(optimizers: Mapping[str, Any], factor: float) -> None:
    """Scale every parameter group's base rate (``initial_lr``, recorded on first use) by ``factor``."""
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


class _Run:
    """The state of one training run (rank-local), with one method per phase."""

    def __init__(self, config: TrainConfig, tracker: ProgressTracker, device: Any,
                 ctx: distributed.DistContext, on_warning: Callable[[str], None] | None = None) -> None:
        from MedTranslateLib.families import get_family

        self.config, self.tracker, self.device, self.ctx = config, tracker, device, ctx
        self.started = time.monotonic()
        self.family = get_family(config.family)
        self.card = card_builder.base_card(config)
        self.warnings: list[str] = []
        self._on_warning = on_warning
        if config.contrast_augment and not getattr(self.family, "trains_on_source", True):
            self.warn(f"contrast_augment remaps the source's contrast, but {config.family} trains on target images "
                      "only: it has no effect here.")
        tracker.stage("load", "reading and preparing the training data")
        self.data = load_data(config, self.card, tracker, self.warn)
        self.gradient_trained = bool(getattr(self.family, "gradient_trained", True))
        # families fitted once (random forest) learn their architecture from the data: built after fit
        self.nets = self._build(self.card["architecture"]) if self.gradient_trained else {}
        self.inference_names = tuple(self.family.inference_networks())
        self.work = config.work_path
        if ctx.is_main:
            self.work.mkdir(parents=True, exist_ok=True)
        self.logger = Logger(self.work, config.log, ctx.is_main and config.log != "none", config.resume)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"mae": None, "step": None, "metrics": {}}
        self.best_state: dict[str, Any] | None = None
        self.step, self.earlier_seconds = 0, 0.0
        self.first_step = self.total_steps = 0  # this process's first step, and the run's last

    def warn(self, message: str) -> None:
        """Tell the user now (rank 0) and keep it for the card's ``training.warnings``."""
        self.warnings.append(message)
        if self._on_warning is not None and self.ctx.is_main:
            self._on_warning(message)

    @property
    def seconds(self) -> float:
        return self.earlier_seconds + time.monotonic() - self.started

    def _build(self, architecture: Mapping[str, Any]) -> dict[str, Any]:
        built = self.family.build(architecture, self.config.spatial_dims)
        return {name: net.to(self.device) for name, net in built.items()}

    def fit(self) -> None:
        """Families fitted once (random forest): ``family.fit(samples, options)`` gives the weights, and
        ``family.architecture(weights, options)`` (when the family has it) the card's architecture."""
        from MedTranslateLib.families.base import pack_state, unpack_state

        self.tracker.stage("train", f"fitting {self.config.family}")
        options = {"dimensionality": self.config.dimensionality, "seed": self.config.seed,
                   **self.config.family_options}
        samples = [(c.source, c.target, c.mask) for c in self.data.train]
        state = self.family.fit(samples, options, progress=self.tracker.update)
        if hasattr(self.family, "architecture"):
            self.card["architecture"] = {**self.card["architecture"], **self.family.architecture(state, options)}
        self.nets = self._build(self.card["architecture"])
        prefixed = all(any(k.startswith(n + ".") for n in self.inference_names) for k in state)
        if prefixed:
            unpack_state(self.nets, state, self.inference_names)
        else:  # the state dict of the single inference network
            self.nets[self.inference_names[0]].load_state_dict(state, strict=True)
        self.best_state = pack_state(self.nets, self.inference_names)
        self.tracker.update(1.0, "fitted")

    def _sampler(self) -> Sampler:
        config = self.config
        size = (config.patch_size if config.spatial_dims == 3 else
                (config.slice_size or default_slice_size(self.data.train, config.slice_axis)))
        oversized = oversized_crop(self.data.train, size, config.spatial_dims, config.slice_axis)
        if oversized:
            self.warn(oversized)
        # a family that learns from pairs never gets here with unpaired cases (run_data refuses them up front)
        paired = all(c.source is not None and c.target is not None for c in self.data.train)
        # each rank its share of the subjects (unpaired data: every rank keeps sources AND targets)
        cases = distributed.shard(self.data.train, self.ctx) if paired else self.data.train
        return Sampler(cases, config.dimensionality, size, config.slice_axis, config.n_context,
                       config.body_fraction, config.seed + 7919 * (self.ctx.rank + 1), config.augment,
                       config.contrast_augment, unpaired=not self.family.paired)

    def _total_steps(self, sampler: Sampler) -> int:
        config = self.config
        if not config.epochs:
            return int(config.steps)
        if config.steps_per_epoch:
            return int(config.epochs) * max(1, int(config.steps_per_epoch) // self.ctx.world_size)
        per_rank = math.ceil(sampler.samples_per_epoch() / config.batch_size)
        if len(sampler.cases) == len(self.data.train):  # not sharded: the ranks share one epoch
            per_rank = per_rank // self.ctx.world_size
        return int(config.epochs) * max(1, per_rank)

    def gradient_train(self) -> None:
        """Optimisation steps with logging, periodic validation, best-model selection and checkpoints."""
        import torch

        from MedTranslateLib.errors import Cancelled, DeviceError
        from MedTranslateLib.families.base import pack_state

        config, family = self.config, self.family
        sampler = self._sampler()
        total = self.total_steps = self._total_steps(sampler)
        optimizers = family.configure_optimizers(self.nets, config.lr)
        ckpt_dir = self.work / "checkpoint"
        running: dict[str, list[float]] = {}  # the losses of the steps since the last log row
        if config.resume:  # the same settings (but for the run's length, logs...) and the same split only
            unchecked = checkpoint.check_resume(ckpt_dir, self.data.split)
            if unchecked:
                self.warn(unchecked)
            saved = checkpoint.load_checkpoint(ckpt_dir, self.nets, optimizers, sampler.generators)
            self.step, self.best = int(saved["step"]), dict(saved["best"])
            self.history = list(saved.get("history", []))
            running = {key: list(values) for key, values in saved.get("running", {}).items()}
            self.earlier_seconds = float(saved.get("seconds", 0.0))
            if self.step >= total:
                self.warn(f"The checkpoint is at step {self.step}, and this run has {total} steps: nothing is left "
                          "to train, so its weights are exported as they are. Give more steps (--steps) to train on.")
            best_file = self.work / "best.safetensors"  # an earlier run's when this one recorded no best yet
            if self.best["step"] is not None and best_file.is_file():
                self.best_state = checkpoint.read_tensors(best_file)
        train_nets = distributed.wrap_networks(self.nets, self.ctx, self.device)
        distributed.seed_rank(self.ctx, config.seed, self.step)
        autocast = _autocast_factory(self.device, config.amp)
        options = dict(config.family_options)
        self.tracker.stage("train", f"training {config.family} for {total} steps on {self.device}")
        recorded = {"config": checkpoint.recorded_config(config), "split": self.data.split}  # checked on resume
        save = lambda: checkpoint.save_checkpoint(  # noqa: E731
            ckpt_dir, self.nets, optimizers, {"step": self.step, "best": self.best, "history": self.history,
                                              "running": running, "seconds": self.seconds, **recorded},
            sampler.generators)
        first = self.first_step = self.step
        if config.resume and self.ctx.is_main and self.data.val and self._validation_missed(total):
            self.validate()  # the run stopped between a step and the validation due after it
        for net in self.nets.values():
            net.train()
        try:
            while self.step < total:
                # a step and its log are whole or not done: a resumed run matches an uninterrupted one
                with signals_deferred():
                    batch = _to_device(sampler.batch(config.batch_size), self.device)
                    _set_learning_rates(optimizers, lr_factor(config, self.step, total))
                    losses = {key: float(value) for key, value in  # one device sync per step
                              family.training_step(train_nets, optimizers, batch, autocast, options).items()}
                    self.step += 1
                    for key, value in losses.items():
                        running.setdefault(key, []).append(value)
                    _check_finite(losses, self.step, config.lr)
                    last = self.step == total
                    if self.step % config.log_interval == 0 or last:
                        row = {"step": self.step, "seconds": round(self.seconds, 2),
                               **{k: float(np.mean(v)) for k, v in running.items()}}
                        self.history.append(row)
                        self.logger.write("train_log", row)
                        running = {}
                    message = f"step {self.step}/{total} " + " ".join(f"{k} {v:.4f}" for k, v in losses.items())
                    self.tracker.update((self.step - first) / max(1, total - first), message)
                if self.ctx.is_main and self.data.val and (self.step % config.val_interval == 0 or last):
                    self.validate()
                if self.ctx.is_main and (self.step % config.checkpoint_interval == 0 or last):
                    save()
        except (Cancelled, KeyboardInterrupt, SystemExit, BrokenPipeError):  # cancel, Ctrl-C, SIGTERM, closed output
            if self.ctx.is_main and self.step > first:
                save()  # keep the progress so the run can be resumed
                print(f"training stopped at step {self.step}; resume with --resume (checkpoint in {ckpt_dir})",
                      file=sys.stderr)
            raise
        except RuntimeError as error:
            from MedTranslateLib.inference.engine import is_out_of_memory

            if not is_out_of_memory(error):
                raise
            if self.ctx.is_main and self.step > first:
                save()
            where = "GPU" if torch.device(self.device).type == "cuda" else "computer"
            raise DeviceError(f"The {where} ran out of memory at training step {self.step + 1} (batch_size "
                              f"{config.batch_size}); the progress so far is saved in {ckpt_dir}.",
                              "Lower train.batch_size or model.slice_size / patch_size (or set train.amp = true on "
                              "a GPU), then run again with --resume.") from None
        if self.best_state is None:  # no validation data: the last weights are the result
            self.best_state = pack_state(self.nets, self.inference_names)

    def _validation_missed(self, total: int) -> bool:
        """True when the checkpoint's step was due a validation that its history does not hold."""
        due = self.step > 0 and (self.step % self.config.val_interval == 0 or self.step == total)
        return due and not any(row.get("validation") and row.get("step") == self.step for row in self.history)

    def validate(self) -> None:
        """Validation metrics in physical units; keeps the weights with the lowest MAE."""
        from safetensors.torch import save_file

        from MedTranslateLib.families.base import pack_state

        done, total, first = self.step, self.total_steps, self.first_step

        def report(fraction: float, message: str) -> None:  # the train stage stays at the step's progress
            self.tracker.update((done - first) / max(1, total - first), f"step {done}/{total}: validation {message}")

        per_case = evaluate_prepared(self.family, self.nets, self.card, self.data.val, self.device, self.tracker,
                                     report)
        metrics = card_builder.aggregate_metrics(per_case)
        self.history.append({"validation": True, "step": self.step, **metrics})
        self.logger.write("validation_log", {"step": self.step, **metrics})
        value = metrics.get("mae")
        if value is not None and (self.best["mae"] is None or value < self.best["mae"]):
            self.best = {"mae": value, "step": self.step, "metrics": metrics}
            self.best_state = pack_state(self.nets, self.inference_names)
            save_file(self.best_state, str(self.work / "best.safetensors"))

    def export(self) -> tuple[Path, dict[str, float | None], str]:
        """Held-out metrics of the best weights (test if any, else validation) and the model package."""
        from MedTranslateLib.families.base import unpack_state
        from MedTranslateLib.models.export import as_shipped, export_package

        trained_seconds = self.seconds  # the card's training time: the held-out evaluation below is not training
        self.tracker.stage("evaluate", "measuring held-out metrics")
        # the weights as the package will hold them (float16 with export_half): the card's figures are theirs
        unpack_state(self.nets, as_shipped(self.best_state, self.config.export_half), self.inference_names)
        held_cases, metrics_on = (self.data.test, "test") if self.data.test else (self.data.val, "validation")
        per_case = evaluate_prepared(self.family, self.nets, self.card, held_cases, self.device, self.tracker,
                                     lambda fraction, message: self.tracker.update(fraction, f"held-out {message}"))
        held_out = card_builder.aggregate_metrics(per_case)
        if not per_case:
            metrics_on = "none"
        self.tracker.stage("export", "writing the model package")
        final = card_builder.final_card(
            self.card, self.config, split=self.data.split, metrics=held_out, metrics_on=metrics_on,
            metrics_subjects=sorted({c.name for c in held_cases}) if per_case else [], seconds=trained_seconds,
            device=str(self.device), steps=self.step, references=[c.reference for c in self.data.train],
            warnings=self.warnings)
        package = export_package(self.best_state, final, Path(self.config.output), half=self.config.export_half,
                                 as_zip=self.config.export_zip)
        self.tracker.done(f"saved {package}")
        return Path(package), held_out, metrics_on


def train(config: TrainConfig, progress: ProgressTracker | None = None,
          on_warning: Callable[[str], None] | None = None) -> TrainResult:
    """Train a model as configured and export the best weights as a model package. ``on_warning(message)`` hears
    what the run has to say about its data as soon as it is found (the card keeps it too).

    Under ``torchrun`` every rank trains on its share of the data; only rank 0 validates, checkpoints,
    logs and exports (other ranks return a result with ``package=None``).
    """
    import torch

    from MedTranslateLib.inference.device import select_device

    config.validate()
    if str(config.output).lower().endswith(".zip") and not config.export_zip:
        config = replace(config, export_zip=True)  # "--output model.zip" means a zipped package, not a folder
    card_builder.check_card(config)
    if config.resume and not (config.work_path / "checkpoint" / "state.json").is_file():
        raise ConfigError(f"No checkpoint to resume from in {config.work_path / 'checkpoint'}.",
                          "Start without --resume, or give the --output (or work_dir) of the run to continue.")
    check_destinations(config)  # creates nothing: a run refused later leaves no folders behind
    # the card records the layout that was read, so its config reproduces the run even where "auto" would not
    config = replace(config, layout=resolve_layout(config.data, config.layout, config.source_modality,
                                                   config.target_modality, config.source_name, config.target_name))
    made = first_missing_folder(config.work_path)  # with the folders above it that this run creates
    if config.resume:  # changed settings are refused before the data is read (the split is compared after)
        checkpoint.check_resume_settings(config.work_path / "checkpoint", config)
    tracker = progress or ProgressTracker(STAGES)
    device = select_device(config.device)
    ctx = distributed.init_distributed(device)
    device = distributed.rank_device(device, ctx)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    new_work = ctx.is_main and not config.work_path.exists()  # a folder this run makes: removed if it fails early
    run: _Run | None = None
    try:
        _seed_everything(config.seed, config.deterministic)
        run = _Run(config, tracker, device, ctx, on_warning)
        if run.gradient_trained:
            run.gradient_train()
        else:
            run.fit()
        distributed.barrier(ctx)
        package, held_out, metrics_on = run.export() if ctx.is_main else (None, {}, "none")
        run.logger.close()
        distributed.barrier(ctx)
        return TrainResult(package, held_out, metrics_on, run.best["step"], run.step, run.seconds, run.history,
                           run.warnings)
    except BaseException:
        if new_work:
            remove_unfinished_work(config.work_path, run.logger if run is not None else None)
            if made is not None:
                remove_empty_folders(config.work_path.parent, made)
        raise
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        distributed.cleanup(ctx)
