"""``medtranslate translate``: one volume to a file, or several volumes into a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from MedTranslateLib.cli.progress_display import emit_json, progress_display
from MedTranslateLib.errors import ConfigError

def run_translate(args: argparse.Namespace) -> int:
    from MedTranslateLib.families.base import InferenceOptions
    from MedTranslateLib.models.registry import ModelRegistry
    from MedTranslateLib.pipeline import Translator, translate_batch

    if args.deterministic:
        _make_deterministic(args.seed)
    if args.steps is not None and args.steps < 1 or args.samples < 1:
        raise ConfigError("--steps and --samples must be at least 1.", "Use for example --steps 20 --samples 4.")
    # the model's family validates --sampler (a diffusion sampler, or the bridge's own) before anything runs
    options = InferenceOptions(steps=args.steps, sampler=args.sampler or None, samples=args.samples, seed=args.seed)
    jsonl = args.progress == "jsonl"
    many = len(args.inputs) > 1
    if many and (args.uncertainty or args.scene):
        raise ConfigError("--uncertainty and --scene take one input.", "Translate the volumes one at a time.")
    if args.ensemble:
        from MedTranslateLib.ensemble import EnsembleTranslator

        translator = EnsembleTranslator([args.model, *args.ensemble], device=args.device)
    else:
        translator = Translator(ModelRegistry().resolve(args.model), device=args.device)
    if translator.device.type == "cpu" and args.device != "cpu":
        _warn("Running on the CPU (no CUDA GPU found): this is slower.", jsonl)

    output = Path(args.output)
    if many:
        output.mkdir(parents=True, exist_ok=True)
    jobs = [(path, output / f"{Path(path).name.split('.')[0]}_synthetic.nii.gz" if many else output)
            for path in args.inputs]
    results = translate_batch(jobs, translator, progress_for=lambda path: progress_display(args.progress, Path(path).name),
                              mask_path=args.mask, uncertainty_path=args.uncertainty, options=options,
                              series_uid=args.series_uid, output_type=args.output_type)
    for (path, _), (out_path, result) in zip(jobs, results):
        for warning in result.warnings:
            _warn(warning, jsonl)
        scene = None
        if args.scene:
            from MedTranslateLib.scene import export_scene_mrb

            scene = str(export_scene_mrb(path, out_path, args.scene, uncertainty_path=args.uncertainty,
                                         provenance=result.provenance,
                                         target_modality=translator.card.target_modality))
        if jsonl:
            emit_json("done", output=str(out_path), uncertainty=args.uncertainty, scene=scene,
                      provenance=result.provenance, warnings=result.warnings,
                      seconds={k: round(v, 3) for k, v in result.seconds.items()}, stats=result.stats)
        else:
            total = sum(result.seconds.values())
            print(f"wrote {out_path} ({total:.1f} s)" + (f", uncertainty {args.uncertainty}" if args.uncertainty else "")
                  + (f", scene {scene}" if scene else ""))
    return 0


def _warn(message: str, jsonl: bool) -> None:
    if jsonl:
        emit_json("warning", message=message)
    else:
        print(f"warning: {message}", file=sys.stderr)


def _make_deterministic(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
