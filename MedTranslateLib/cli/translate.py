"""``medtranslate translate``: one volume to a file, or several volumes into a folder."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from MedTranslateLib.progress import emit_json, emit_warning, progress_display
from MedTranslateLib.errors import ConfigError, OutputError


def run_translate(args: argparse.Namespace) -> int:
    """``medtranslate translate``: one input or a batch; returns the exit code."""
    from MedTranslateLib.families.base import InferenceOptions
    from MedTranslateLib.io.atomic import FILE_SUFFIXES, full_suffix, volume_stem
    from MedTranslateLib.io.naming import batch_outputs
    from MedTranslateLib.io.path_checks import check_name_length
    from MedTranslateLib.pipeline import check_outputs, read_inputs, translate_batch

    if args.deterministic:
        _make_deterministic(args.seed)
    if any(value is not None and value < 1 for value in (args.steps, args.samples)):
        raise ConfigError("--steps and --samples must be at least 1.", "Use for example --steps 20 --samples 4.")
    # the model's family validates --sampler (a diffusion sampler, or the bridge's own) before anything runs;
    # steps, sampler and samples left out (None) take the model card's sampling defaults
    options = InferenceOptions(steps=args.steps, sampler=args.sampler or None, samples=args.samples, seed=args.seed)
    jsonl = args.progress == "jsonl"
    many = len(args.inputs) > 1
    if many and (args.uncertainty or args.scene):
        raise ConfigError("--uncertainty and --scene take one input.", "Translate the volumes one at a time.")
    output = Path(args.output)
    check_name_length(output, OutputError, reading=False)  # before the first look at it (OSError: name too long)
    if many and not output.is_dir() and full_suffix(output) in FILE_SUFFIXES:
        raise ConfigError(f"With {len(args.inputs)} inputs, -o is the folder the outputs go to, but "
                          f"'{args.output}' is a file name.",
                          f"Give a folder, e.g. -o {volume_stem(output) or 'synthetic'}/ (one output per input).")
    if many:
        _refuse_repeated_inputs(args.inputs)
    jobs = list(zip(args.inputs, batch_outputs(args.inputs, output) if many else [output]))
    if args.scene:
        from MedTranslateLib.scene import check_scene_path

        check_scene_path(args.scene, args.inputs[0], args.output)
    made_folders = _make_output_folder(output) if many else []
    try:  # every output, and a single input, is checked before the model loads
        check_outputs(args.inputs, [out for _, out in jobs] + ([args.uncertainty] if args.uncertainty else []),
                      args.mask)
        first = None if many else read_inputs(args.inputs[0], args.mask, args.series_uid)
        translator = _load_translator(args, jobs, jsonl)
    except BaseException:
        _remove_empty(made_folders)
        raise
    labels = {str(path): (f"{k}/{len(jobs)} " if many else "") + Path(path).name
              for k, (path, _) in enumerate(jobs, start=1)}  # a batch's bar says which input of how many
    items = translate_batch(jobs, translator, progress_for=lambda path: progress_display(args.progress, labels[str(path)]),
                            first=first, mask_path=args.mask, uncertainty_path=args.uncertainty, options=options,
                            series_uid=args.series_uid, output_type=args.output_type)
    failed = []
    try:
        for item in items:
            if item.error is not None:
                failed.append(item)
                _report_failure(item, jsonl, many)
                continue
            _report_done(item, args, translator.card.target_modality, jsonl, many)
    finally:
        _remove_empty(made_folders)  # nothing was written: leave none of the folders made for it behind
    if not failed:
        return 0
    if not many:
        raise failed[0].error
    names = [str(item.input) for item in failed]
    summary = f"{len(jobs) - len(failed)} of {len(jobs)} inputs translated; failed: {', '.join(names)}"
    if jsonl:  # the protocol's last word on a failed run is an error event, as for a single input
        emit_json("error", message=summary, exit_code=failed[0].error.exit_code, failed=names, final=True)
    else:
        print(f"error: {summary}", file=sys.stderr)
    return failed[0].error.exit_code


def _load_translator(args: argparse.Namespace, jobs: list[tuple[str, Path]], jsonl: bool) -> Any:
    """The model (or ensemble) on its device, with the warnings that concern the whole run."""
    from MedTranslateLib.io import is_dicom_output
    from MedTranslateLib.models.registry import ModelRegistry
    from MedTranslateLib.pipeline import Translator

    registry = ModelRegistry()
    packages = [registry.resolve(name) for name in [args.model, *(args.ensemble or [])]]
    for warning in registry.warnings:  # a newer package of that id that cannot be read was passed over
        _warn(warning, jsonl)
    if args.ensemble:  # members that cannot form an ensemble are refused before any download
        from MedTranslateLib.ensemble import EnsembleTranslator, check_members

        check_members([package.card for package in packages])
    for package in packages:
        _download_weights(package, args.progress)
    if args.ensemble:
        translator = EnsembleTranslator(packages, device=args.device)
    else:
        translator = Translator(packages[0], device=args.device)
    if translator.device.type == "cpu" and args.device != "cpu":
        _warn("Running on the CPU (no CUDA GPU found): this is slower.", jsonl)
    if args.output_type == "float32" and translator.card.target_modality.upper() == "CT" and \
            any(is_dicom_output(out) for _, out in jobs):
        _warn("A DICOM CT series stores whole Hounsfield units: --output-type float32 applies to file outputs only.",
              jsonl)
    return translator


def _download_weights(package: Any, mode: str) -> None:
    """Weights the package lacks, downloaded first on a progress display of their own (the first use of a model
    whose card gives ``weights.url``; later runs read the cached copy)."""
    from MedTranslateLib.progress import ProgressTracker

    if package.has_weights() or not package.card.weights_url:
        return
    with progress_display(mode, "download") as callback:
        tracker = ProgressTracker([("download", 1.0)], callback)
        tracker.stage("download", f"downloading the weights of {package.card.id}")
        package.ensure_weights(progress=lambda received, total: tracker.update(
            received / total if total else 0.0, f"downloading the weights of {package.card.id}: "
                                                f"{received / 2**20:.1f} MB"))


def _report_done(item, args: argparse.Namespace, target_modality: str, jsonl: bool, many: bool = False) -> None:
    """Warnings, the optional scene, and the ``done`` line (or event) of one written output. A batch's warning lines
    name their input, as its error lines do (standard output, with the ``wrote`` lines, is buffered apart)."""
    result = item.result
    for warning in result.warnings:
        _warn(f"{item.input}: {warning}" if many and not jsonl else warning, jsonl, item.input)
    uncertainty = args.uncertainty if result.uncertainty is not None else None  # only a map that was written
    scene = None
    if args.scene:
        from MedTranslateLib.scene import export_scene_mrb

        scene = str(export_scene_mrb(item.input, item.output, args.scene, uncertainty_path=uncertainty,
                                     provenance=result.provenance, series_uid=args.series_uid,
                                     target_modality=target_modality))
    if jsonl:
        emit_json("done", input=str(item.input), output=str(item.output), uncertainty=uncertainty, scene=scene,
                  provenance=result.provenance, warnings=result.warnings,
                  seconds={k: round(v, 3) for k, v in result.seconds.items()}, stats=result.stats)
    else:
        total = sum(result.seconds.values())
        print(f"wrote {item.output} ({total:.1f} s)" + (f", uncertainty {uncertainty}" if uncertainty else "")
              + (f", scene {scene}" if scene else ""))




def _make_output_folder(folder: Path) -> list[Path]:
    """Create the batch's output folder and any missing folders above it; returns those it created, deepest first."""
    missing = [path for path in [folder, *folder.parents] if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=folder.is_dir())
    except OSError as error:
        _remove_empty(missing)
        raise OutputError(f"Cannot create the output folder '{folder}': {error.strerror or error}.",
                          "Choose a folder you can write to.") from None
    return missing


def _refuse_repeated_inputs(inputs: list[str]) -> None:
    """Raise :class:`OutputError` (both outputs would be one file) naming an input given twice, e.g. by a glob and a
    name that overlap (``*.nii.gz a.nii.gz``, ``a.nii.gz ./a.nii.gz``)."""
    seen: dict[str, str] = {}
    for text in inputs:
        key = os.path.normcase(os.path.realpath(text))
        if key in seen:
            also = "" if seen[key] == text else f" (also as '{text}')"
            raise OutputError(f"The input '{seen[key]}' is given twice{also}: its two outputs would be one file.",
                              "Give each input once.")
        seen[key] = text


def _remove_empty(folders: list[Path]) -> None:
    """Remove the ``folders`` (deepest first) that are still empty; one in use by now is kept."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            return  # not empty (outputs were written) or gone: the folders above it stay too


def _report_failure(item, jsonl: bool, many: bool) -> None:
    if not many:
        return  # the error is raised once, as for any single translation
    if jsonl:
        emit_json("error", message=f"{item.input}: {item.error.message}", exit_code=item.error.exit_code,
                  input=str(item.input), final=False)
    else:
        print(f"error: {item.input}: {item.error.message}", file=sys.stderr)


def _warn(message: str, jsonl: bool, source: object = None) -> None:
    """A warning; in the worker protocol with the input it is about (a batch translates several)."""
    emit_warning(message, jsonl, **({"input": str(source)} if source is not None else {}))


def _make_deterministic(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
