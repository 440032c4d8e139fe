"""The translation pipeline: one straight line from an input volume to a synthetic volume on the
input's exact grid.

    read -> validate -> prepare (recorded) -> predict -> restore (inverse of the record) -> write

:class:`Translator` keeps a loaded model so that batch translation and the Slicer worker load the
weights once; :func:`translate_file` is the path-to-path entry point the command line uses.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Sequence

import numpy as np

from MedTranslateLib.errors import ConfigError, InputError, OutputError
from MedTranslateLib.families import SAMPLED_FAMILIES
from MedTranslateLib.families.base import InferenceOptions, sample_count
from MedTranslateLib.progress import CancelToken, ProgressCallback, ProgressTracker

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future

    import SimpleITK as sitk

    from MedTranslateLib.models.package import ModelPackage

#: Stages of one translation and their expected share of the run time.
STAGES: tuple[tuple[str, float], ...] = (
    ("read", 0.05), ("preprocess", 0.08), ("inference", 0.75), ("restore", 0.07), ("write", 0.05),
)


@dataclass
class TranslationResult:
    """A synthetic volume on the input grid, its optional uncertainty map, warnings and provenance."""

    output: "sitk.Image"
    uncertainty: "sitk.Image | None"
    warnings: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # model grid shape and the engine's work counts


class Translator:
    """A loaded model ready to translate volumes (weights verified and loaded once)."""

    def __init__(self, package: "ModelPackage", device: str = "auto") -> None:
        from MedTranslateLib.families import load_networks
        from MedTranslateLib.inference.device import select_device, tune_for_inference
        from MedTranslateLib.inference.optimize import optimize_for_inference

        self.package = package
        self.card = package.card
        self.device = select_device(device)
        tune_for_inference(self.device)
        self.family, self.nets = load_networks(package)
        self.layouts = {}
        for name, net in self.nets.items():
            net.to(self.device).eval()
            self.layouts[name] = optimize_for_inference(net, self.device)  # batch norms folded, memory layout

    def provenance(self) -> dict[str, Any]:
        card = self.card.to_dict()
        return {
            "synthetic": "true",
            "model_id": card["id"],
            "model_version": card["version"],
            "model_sha256": card["weights"]["sha256"],
            "model_family": card["family"],
            "source_modality": card["source_modality"],
            "target_modality": card["target_modality"],
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "software": f"MedTranslate {_version()}",
            "clinical_use": "not for clinical use",
        }

    def translate(
        self,
        image: "sitk.Image",
        mask: "sitk.Image | None" = None,
        options: InferenceOptions | None = None,
        tracker: ProgressTracker | None = None,
        uncertainty: bool = False,
    ) -> TranslationResult:
        """Translate an in-memory volume; the result has exactly ``image``'s grid."""
        import SimpleITK as sitk

        from MedTranslateLib.evaluation.ood import check_input
        from MedTranslateLib.inference.engine import predict_volume
        from MedTranslateLib.io import validate_volume
        from MedTranslateLib.preprocess import (automatic_body, check_modality, in_model_orientation, on_input_grid,
                                                prepare, restore, restore_array)

        tracker = tracker or ProgressTracker(STAGES)
        options = options or InferenceOptions()
        card = self.card.to_dict()
        asked = options.samples
        if asked is None:  # the card's sampling.samples for sampled models, else one pass
            options = replace(options, samples=sample_count(options, card) if self.card.family in SAMPLED_FAMILIES
                              else 1)
        notes = []
        if uncertainty:
            options = _with_uncertainty(options, self.card.family)
            if asked is not None and asked < options.samples:  # --samples 1 too: the mean of 4 was not asked for
                notes.append(f"--samples {asked} was raised to {options.samples}: an uncertainty map needs at least "
                             f"{options.samples} samples.")
        seconds: dict[str, float] = {}

        start = time.perf_counter()
        tracker.stage("preprocess", "normalising and resampling")
        validate_volume(image, "input volume")
        prepared = prepare(image, card, mask=mask, role="input")
        body = prepared.record.input_mask()  # not Prepared's cached copy: freed after the input checks
        check_modality(sitk.GetArrayViewFromImage(image), body, card["source_modality"])
        warnings = notes + list(prepared.record.warnings)
        if self.card.family not in SAMPLED_FAMILIES and (options.steps or options.sampler or options.samples > 1):
            warnings.append(f"Sampling steps, sampler and samples apply to diffusion and bridge models; "
                            f"{self.card.id} is a {self.card.family} model, so they were ignored.")
        # the card's statistics were taken inside the automatic body mask: a given mask would compare other regions
        # (the pork model warned on its own training volume with the data set's mask)
        region = automatic_body(image, card) if mask is not None else in_model_orientation(image, body,
                                                                                           prepared.record)
        warnings += [w.message for w in check_input(*region, card)]
        del body, region  # input-grid masks (and with a given mask maybe the volume in float32): not kept to the end
        seconds["preprocess"] = time.perf_counter() - start

        start = time.perf_counter()
        tracker.stage("inference", f"running {card['family']} on {self.device.type}")
        predictor = self.family.make_predictor(self.nets, card, options)
        out_spec = card["normalization"]["output"]
        # with an uncertainty map, each pass is put back on the input grid and the spread taken there
        restore_pass = (lambda array: restore_array(array, prepared.record, out_spec)) if uncertainty else None
        prediction = predict_volume(prepared.array, prepared.mask, card, predictor, options, self.device, tracker,
                                    restore_pass)
        warnings += list(getattr(prediction, "warnings", []) or [])
        stats = {"model_shape": list(prepared.record.model_shape), **dict(getattr(prediction, "stats", {}) or {})}
        mean, std = prediction.mean, prediction.std
        del prediction  # with an uncertainty map both are volumes on the input grid: each is freed once an image
        seconds["inference"] = time.perf_counter() - start

        start = time.perf_counter()
        tracker.stage("restore", "putting the result back on the input grid")
        output = on_input_grid(mean, prepared.record) if uncertainty else restore(mean, prepared.record, out_spec)
        del mean
        std_image = None
        if uncertainty and std is not None:
            std_image = on_input_grid(std, prepared.record)
        elif uncertainty:
            warnings.append("This model and these options give no uncertainty map.")
        del std
        seconds["restore"] = time.perf_counter() - start
        if not np.isfinite(sitk.GetArrayViewFromImage(output)).all():
            raise InputError("The model produced non-finite values for this input.",
                             "Check that the input matches the model's modality and field of view.")
        provenance = {**self.provenance(), "device": str(stats.get("device", self.device.type))}  # the one that ran
        return TranslationResult(output, std_image, warnings, provenance, seconds, stats)


def _with_uncertainty(options: InferenceOptions, family: str) -> InferenceOptions:
    """Options that make the engine return a per-voxel standard deviation."""
    from MedTranslateLib.families import NO_UNCERTAINTY_FAMILIES

    if family in SAMPLED_FAMILIES:
        return replace(options, samples=max(options.samples, 4))
    if family in NO_UNCERTAINTY_FAMILIES:
        raise ConfigError(f"{family} models give no uncertainty map (their features do not change under the "
                          "flips that measure it for networks).",
                          "Leave out --uncertainty, or use an ensemble (-m A --ensemble B C) or a network model.")
    return replace(options, tta=True)


def _version() -> str:
    from MedTranslateLib import __version__

    return __version__


OUTPUT_TYPES = ("auto", "float32", "int16")


def as_output_type(image: "sitk.Image", output_type: str, target_modality: str) -> "sitk.Image":
    """``image`` in the voxel type of the written file (see :func:`translate_file`); rounds for int16.

    Values int16 cannot hold are never cut off: ``auto`` then keeps float32, and an explicit ``int16`` raises
    :class:`OutputError` before anything is written."""
    from MedTranslateLib.preprocess.modality import CT_LIKE

    if output_type == "float32" or (output_type == "auto" and target_modality.upper() not in CT_LIKE):
        return image
    import SimpleITK as sitk

    values = sitk.GetArrayViewFromImage(image)
    low, high = float(np.rint(values.min())), float(np.rint(values.max()))  # rint keeps the order
    if low < -32768 or high > 32767:
        if output_type == "auto":
            return image
        raise OutputError(f"The synthetic volume holds values from {low:g} to {high:g}, outside the int16 range "
                          "(-32768 to 32767).", "Write it as float32 (--output-type float32 or auto).")
    rounded = np.empty(values.shape, np.int16)  # rounded straight into int16: no rounded float32 copy
    np.rint(values, out=rounded, casting="unsafe")
    out = sitk.GetImageFromArray(rounded, isVector=False)
    out.CopyInformation(image)
    return out


@dataclass
class LoadedInput:
    """An input volume read from disk with what writing its result needs (see :func:`read_inputs`)."""

    image: "sitk.Image"
    source_info: Any
    mask: "sitk.Image | None"
    seconds: float


def read_inputs(input_path: str | Path, mask_path: str | Path | None = None,
                series_uid: str | None = None) -> LoadedInput:
    """Read (and validate) an input volume and its optional mask."""
    from MedTranslateLib.io import read_mask, read_volume

    start = time.perf_counter()
    try:
        image, source_info = read_volume(input_path, series_uid=series_uid)
        mask = read_mask(mask_path, image) if mask_path else None
    except MemoryError:
        raise too_large_for_memory(input_path) from None
    return LoadedInput(image, source_info, mask, time.perf_counter() - start)


def too_large_for_memory(input_path: str | Path, image: "sitk.Image | None" = None) -> InputError:
    """The error of an input whose working copies do not fit in this computer's memory (MemoryError)."""
    size = f" ({image.GetNumberOfPixels():,} voxels)" if image is not None else ""
    return InputError(f"'{Path(input_path).name}'{size} is too large for this computer's memory.",
                      "Close other programs, crop or downsample the volume, or use a computer with more memory.")


def check_outputs(input_paths: Sequence[str | Path], output_paths: Sequence[str | Path],
                  mask_path: str | Path | None = None) -> None:
    """Raise :class:`OutputError` unless every output can be written, is written once, and overwrites none of
    the inputs (nor the mask, nor their data files)."""
    from MedTranslateLib.io import check_writable, ensure_not_input
    from MedTranslateLib.io.atomic import companion_files, dicom_output_folder, is_dicom_output

    protected = [Path(p) for p in input_paths] + ([Path(mask_path)] if mask_path else [])
    seen: dict[str, Path] = {}
    for out in map(Path, output_paths):
        check_writable(out)
        ensure_not_input(out, protected)
        target = dicom_output_folder(out) if is_dicom_output(out) else out
        for written in [target] + ([] if is_dicom_output(out) else companion_files(target)):
            key = str(written.resolve()).casefold()  # macOS and Windows file names ignore letter case
            if key in seen:
                same = seen[key].resolve() == written.resolve()
                raise OutputError(f"Two outputs would be written to the same file '{written}'"
                                  + ("." if same else f" ('{seen[key]}' differs only in letter case, which "
                                                      "macOS and Windows ignore)."),
                                  "Give each output (and the uncertainty map) its own file name.")
            seen[key] = written


def write_outputs(result: TranslationResult, loaded: LoadedInput, card: dict[str, Any], output_path: str | Path,
                  uncertainty_path: str | Path | None = None, output_type: str = "auto",
                  check: Callable[[], None] | None = None) -> float:
    """Write the synthetic volume (and its uncertainty map) atomically; returns the seconds it took.

    ``check`` (optional) is called before each file (the tracker's cancel check)."""
    from MedTranslateLib.io import write_volume

    from MedTranslateLib.io import output_group

    start = time.perf_counter()
    model = result.provenance.get("model_id", card["id"])  # an ensemble's: every member's, joined by "+"
    version = result.provenance.get("model_version", card["version"])
    description = (f"SYNTHETIC {card['target_modality']} from {card['source_modality']} "
                   f"(MedTranslate {model} {version}) - not for clinical use")
    with output_group():  # both files appear together, or neither does
        if check is not None:
            check()
        write_volume(as_output_type(result.output, output_type, card["target_modality"]), output_path,
                     source=loaded.source_info, modality=card["target_modality"], description=description,
                     provenance=result.provenance)
        if uncertainty_path is not None and result.uncertainty is not None:
            if check is not None:
                check()
            write_volume(result.uncertainty, uncertainty_path, source=loaded.source_info,
                         modality=card["target_modality"], description=f"UNCERTAINTY (std) of {description}",
                         provenance=result.provenance, uncertainty=True)
        if check is not None:
            check()
    return time.perf_counter() - start


def translate_file(
    input_path: str | Path,
    model: str | Path,
    output_path: str | Path,
    *,
    mask_path: str | Path | None = None,
    uncertainty_path: str | Path | None = None,
    device: str = "auto",
    options: InferenceOptions | None = None,
    series_uid: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    translator: Translator | None = None,
    output_type: str = "auto",
    loaded: LoadedInput | None = None,
) -> TranslationResult:
    """Translate a volume file (NIfTI, NRRD, MHA/MHD or a DICOM folder) into ``output_path``.

    ``output_type``: the voxel type of the written file: ``"float32"``, ``"int16"`` (rounded), or ``"auto"``
    (int16 for CT-like targets, which are whole Hounsfield units clipped to [-1024, 3071]: half the bytes and
    about 2.5x faster to compress than float32; float32 otherwise). The in-memory result is always float32.
    ``loaded``: the input already read by :func:`read_inputs` (batch read-ahead). Nothing is written unless the
    whole translation succeeds; the input is never modified.
    """
    from MedTranslateLib.models.registry import ModelRegistry

    if output_type not in OUTPUT_TYPES:
        raise ConfigError(f"Unknown output type '{output_type}'.", f"Use one of {', '.join(OUTPUT_TYPES)}.")
    tracker = ProgressTracker(STAGES, progress, cancel)
    check_outputs([input_path], [output_path] + ([uncertainty_path] if uncertainty_path else []), mask_path)
    tracker.stage("read", f"reading {Path(input_path).name}")
    loaded = loaded or read_inputs(input_path, mask_path, series_uid)
    if translator is None:
        translator = Translator(ModelRegistry().resolve(str(model)), device=device)
    result = translator.translate(loaded.image, loaded.mask, options, tracker, uncertainty=uncertainty_path is not None)
    result.warnings[:0] = getattr(loaded.source_info, "notes", [])  # how the input was read comes first
    result.seconds["read"] = loaded.seconds
    tracker.stage("write", f"writing {Path(output_path).name}")
    result.seconds["write"] = write_outputs(result, loaded, translator.card.to_dict(), output_path, uncertainty_path,
                                            output_type, tracker.check)
    tracker.done()
    return result


@dataclass
class BatchItem:
    """One input of a batch: its output and result, or the error that stopped it."""

    input: Path
    output: Path
    result: TranslationResult | None = None
    error: InputError | OutputError | None = None


def _in_background(function: Callable[..., Any], *args: Any) -> "Future[Any]":
    """``function(*args)`` in a daemon thread: a stop (Ctrl-C, Cancel) does not wait for a read-ahead to finish
    (a pool's worker thread would be joined at exit, seconds for a large volume)."""
    from concurrent.futures import Future

    future: Future[Any] = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(function(*args))
            except BaseException as error:  # handed to whoever waits for the result
                future.set_exception(error)

    threading.Thread(target=run, name="medtranslate-read", daemon=True).start()
    return future


def translate_batch(jobs: Sequence[tuple[str | Path, str | Path]], translator: Translator, *,
                    progress_for: Callable[[str | Path], ContextManager[ProgressCallback | None]] | None = None,
                    first: LoadedInput | None = None, **kwargs: Any) -> Iterator[BatchItem]:
    """Translate ``(input, output)`` pairs with one loaded model, reading the next input while the current one
    is translated (overlapped I/O: a GPU, or the second CPU core, is not left waiting for the disk).

    ``progress_for(path)`` (optional) gives a context manager yielding the progress callback of one input;
    ``first``: the first input, already read by :func:`read_inputs`; ``kwargs`` go to :func:`translate_file`.
    Yields a :class:`BatchItem` per input, in order, once it is written or has failed: a bad input or an
    unwritable output (InputError, OutputError; an input too large for memory is an InputError) is reported in its
    item and the batch goes on; any other error (a
    model or device failure, cancel) stops it, without waiting for the read-ahead. Outputs already written stay;
    nothing half-written is left."""
    from concurrent.futures import Future

    mask_path, series_uid = kwargs.get("mask_path"), kwargs.get("series_uid")
    upcoming: Future[LoadedInput] | None = None
    if first is not None:
        upcoming = Future()
        upcoming.set_result(first)
    elif jobs:
        upcoming = _in_background(read_inputs, jobs[0][0], mask_path, series_uid)
    for index, (input_path, output_path) in enumerate(jobs):
        item = BatchItem(Path(input_path), Path(output_path))
        assert upcoming is not None
        try:
            loaded = upcoming.result()
        except (InputError, OutputError) as error:
            loaded, item.error = None, error
        upcoming = (_in_background(read_inputs, jobs[index + 1][0], mask_path, series_uid)
                    if index + 1 < len(jobs) else None)
        if loaded is not None:
            context = progress_for(input_path) if progress_for else contextlib.nullcontext(None)
            try:
                with context as callback:
                    item.result = translate_file(input_path, None, output_path, translator=translator,
                                                 progress=callback, loaded=loaded, **kwargs)
            except (InputError, OutputError) as error:
                item.error = error
            except MemoryError:  # this input's working copies did not fit: the next input may
                item.error = too_large_for_memory(input_path, loaded.image)
        yield item
