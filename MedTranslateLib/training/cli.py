"""``medtranslate train``: arguments and the entry point (heavy imports only when training runs)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from MedTranslateLib.training.config import TrainConfig

#: explicit flags -> TrainConfig fields
FLAGS: dict[str, tuple[str, Any, str]] = {
    "family": ("family", str, "model family (unet, pix2pix, cyclegan, diffusion, contourdiff, bridge, random_forest)"),
    "dimensionality": ("dimensionality", str, "2d, 2.5d or 3d"),
    "data": ("data", str, "dataset folder or CSV (subject,source,target[,mask])"),
    "layout": ("layout", str, "dataset layout (auto, synthrad2023, synthrad2025, brats2021, brats2023, ixi, "
                              "paired_folder, csv, unpaired)"),
    "source": ("source_modality", str, "source modality (MR, CBCT, T1, T2, ...)"),
    "target": ("target_modality", str, "target modality (CT, T2, FLAIR, ...)"),
    "steps": ("steps", int, "training steps (clears an epochs of the config file or --set)"),
    "epochs": ("epochs", int, "epochs (overrides --steps)"),
    "batch_size": ("batch_size", int, "batch size"),
    "lr": ("lr", float, "learning rate"),
    "val_interval": ("val_interval", int, "validate every N steps"),
    "seed": ("seed", int, "random seed"),
    "device": ("device", str, "auto (the first CUDA GPU, else the CPU), cpu, cuda or cuda:N"),
    "output": ("output", str, "model package to write (a folder, or a zipped package when it ends in .zip)"),
    "work_dir": ("work_dir", str, "folder for checkpoints and logs (default <output>.work)"),
    "id": ("model_id", str, "model id in the card"),
    "title": ("title", str, "model title in the card"),
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` options to ``parser``."""
    parser.add_argument("--config", help="training config (TOML or JSON file), or the name of a bundled one: "
                                         "example_train or one in MedTranslateLib/configs/, the shipped and benchmarked "
                                         "models' ids (e.g. mr2ct-phantom-unet2d)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (repeatable), e.g. --set lr=1e-4")
    for flag, (_, kind, help_text) in FLAGS.items():
        parser.add_argument("--" + flag.replace("_", "-"), dest=f"flag_{flag}", type=kind, help=help_text,
                            metavar=flag.upper())
    parser.add_argument("--resume", action="store_true", default=None, help="continue from the last checkpoint")
    parser.add_argument("--deterministic", action="store_true", default=None, help="deterministic algorithms")
    parser.add_argument("--progress", choices=("rich", "jsonl", "none"), default="rich", help="progress display")


def config_from_args(args: argparse.Namespace) -> "TrainConfig":
    """The :class:`TrainConfig` of parsed arguments (file, then --set, then explicit flags)."""
    from MedTranslateLib.training.config import load_config

    explicit = {field: getattr(args, f"flag_{flag}", None) for flag, (field, _, _) in FLAGS.items()}
    explicit["resume"] = getattr(args, "resume", None)
    explicit["deterministic"] = getattr(args, "deterministic", None)
    return load_config(getattr(args, "config", None), getattr(args, "overrides", []), **explicit)


def run_train(args: argparse.Namespace) -> int:
    """Train and export; prints where the package went and the held-out metrics. Errors propagate
    as :class:`~MedTranslateLib.errors.MedTranslateError` (the CLI prints them and exits with their code)."""
    import sys

    from MedTranslateLib.progress import ProgressTracker, emit_json, emit_warning, progress_display
    from MedTranslateLib.training.loop import STAGES, train

    config = config_from_args(args)
    mode = getattr(args, "progress", "rich")
    with progress_display(mode, "train") as callback:
        result = train(config, ProgressTracker(STAGES, callback), lambda text: emit_warning(text, mode == "jsonl"))
    if result.package is None:  # not rank 0 of a distributed run
        return 0
    metrics = {k: v for k, v in result.best_metrics.items() if v is not None}
    if mode == "jsonl":
        emit_json("done", output=str(result.package), metrics=metrics, metrics_on=result.metrics_on,
                  steps=result.steps, seconds=round(result.seconds, 1))
    else:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in ("mae", "psnr", "ssim", "ms_ssim",
                                                                               "psnr_norm", "ssim_norm"))
        print(f"Saved {result.package} after {result.steps} steps ({result.seconds:.0f} s). "
              f"Held-out ({result.metrics_on}): {shown or 'none'}", file=sys.stderr)
    return 0
