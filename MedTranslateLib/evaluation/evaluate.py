"""Evaluate synthetic volumes against references: one case or a folder; CSV, JSON and HTML outputs.

Folder layouts for the references (``layout``):

* ``synthrad``: ``REF_ROOT/**/<case>/ct.(nii.gz|nii|mha)`` with ``mask.*`` (and ``mr.*`` / ``cbct.*`` shown
  as input in the report); CT metrics.
* ``brats``: ``REF_ROOT/<case>/<case>-<target>.nii.gz`` (``target`` e.g. ``t2w``; BraTS 2021 ``_t2``);
  mask = non-zero voxels of the (skull-stripped) reference; MR metrics.
* ``paired``: ``REF_ROOT/<case>.(nii.gz|nii|mha|nrrd)`` with an optional ``REF_ROOT/masks/<case>.*``.
* ``auto``: the first of these that finds cases.

Predictions: ``PRED_DIR/<case>.(nii.gz|nii|mha|nrrd)`` or ``PRED_DIR/<case>/sct.*``; an optional
uncertainty map ``PRED_DIR/<case>_std.*`` or ``PRED_DIR/<case>/std.*`` adds the uncertainty analysis.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from MedTranslateLib.errors import ConfigError, InputError, OutputError, plain_numbers
from MedTranslateLib.io.atomic import FILE_SUFFIXES as EXTENSIONS
from MedTranslateLib.io.atomic import atomic_write_text, files_below, output_group, volume_stem
from MedTranslateLib.io.atomic import find_volume as _find_volume
from MedTranslateLib.io.naming import batch_outputs
from MedTranslateLib.progress import ProgressTracker

STATS = ("mean", "std", "median", "q1", "q3")
#: Per-case columns that say which voxels were compared: not metrics, so not aggregated.
REGION_KEYS = ("region", "voxels")


@dataclass
class CaseArrays:
    """Arrays (z, y, x) of one case on one grid."""

    pred: np.ndarray
    ref: np.ndarray
    mask: np.ndarray
    spacing_xyz: tuple[float, float, float]
    input: np.ndarray | None = None
    std: np.ndarray | None = None


@dataclass
class CasePaths:
    """The files of one case in a folder evaluation."""

    case: str
    pred: Path
    ref: Path
    mask: Path | None = None
    input: Path | None = None
    std: Path | None = None
    modality: str = "CT"
    mask_from_reference: bool = False
    folder: str = ""  # the case folder below the reference root, when a prediction tree may mirror it


def read_image(path: str | os.PathLike, role: str = "volume") -> Any:
    """Read and validate a volume (``MedTranslateLib.io.read_volume``); ``role`` names it in messages."""
    from MedTranslateLib.io import read_volume

    return read_volume(path, role=role)[0]


def _grid_text(image: Any) -> str:
    return (f"size {image.GetSize()}, spacing {plain_numbers(image.GetSpacing())}, "
            f"origin {plain_numbers(image.GetOrigin())}, direction {plain_numbers(image.GetDirection(), '.3g')}")


def _array_on_grid(path: str | os.PathLike, reference: Any, what: str) -> np.ndarray:
    import SimpleITK as sitk

    from MedTranslateLib.io.volumes import grid_differences

    image = read_image(path, what)
    if grid_differences(image, reference):
        raise InputError(f"The {what} {path} is not on the reference's voxel grid ({_grid_text(image)} vs "
                         f"{_grid_text(reference)}).",
                         "Evaluate on the reference grid: resample or translate on that grid first.")
    return sitk.GetArrayFromImage(image).astype(np.float32)


def unmasked_region(ref: np.ndarray, modality: str) -> np.ndarray:
    """The voxels compared when no mask is given: for MR where the reference is non-zero (a skull-stripped
    brain's zero background left out, as BraTS is evaluated), for CT every voxel."""
    return ref != 0 if modality.upper() == "MR" else np.ones(ref.shape, bool)


def region_fields(mask: np.ndarray, region: str) -> dict[str, Any]:
    """The ``REGION_KEYS`` of a case's row: which voxels were compared (``region``) and how many."""
    return {"region": region, "voxels": int(np.count_nonzero(mask))}


def case_region(case: CasePaths) -> str:
    """What a folder case's metrics compare: the mask's voxels > 0, the reference's non-zero voxels, or all."""
    if case.mask is not None:
        return f"{case.mask.name} > 0"
    return "reference != 0" if case.mask_from_reference else "every voxel"


def load_case(pred_path: str | os.PathLike, ref_path: str | os.PathLike, mask_path: str | os.PathLike | None = None,
              input_path: str | os.PathLike | None = None, std_path: str | os.PathLike | None = None,
              mask_from_reference: bool = False) -> CaseArrays:
    """Read a case; every file must be on the reference's exact grid (else ``InputError``)."""
    import SimpleITK as sitk

    ref_image = read_image(ref_path, "reference")
    ref = sitk.GetArrayFromImage(ref_image).astype(np.float32)
    pred = _array_on_grid(pred_path, ref_image, "synthetic image")
    if mask_path is not None:
        mask = _array_on_grid(mask_path, ref_image, "mask") > 0
    elif mask_from_reference:
        mask = unmasked_region(ref, "MR")
    else:
        mask = np.ones(ref.shape, bool)
    return CaseArrays(
        pred=pred, ref=ref, mask=mask, spacing_xyz=tuple(float(s) for s in ref_image.GetSpacing()),
        input=_array_on_grid(input_path, ref_image, "input image") if input_path else None,
        std=_array_on_grid(std_path, ref_image, "uncertainty map") if std_path else None)


def resolve_modality(modality: str, ref: np.ndarray) -> str:
    """``modality`` (CT or MR), or for ``auto`` the reference's: CT when it holds Hounsfield units of air
    (values below -200), else MR."""
    if modality.upper() != "AUTO":
        return modality.upper()
    return "CT" if float(np.min(ref)) < -200.0 else "MR"


def reference_statistics(ref: np.ndarray, mask: np.ndarray, card: Mapping[str, Any]
                         ) -> tuple[np.ndarray, dict[str, Any] | None]:
    """A reference on the model's output scale (its card's output normalisation, per volume, and back: what the
    card's MR metrics compare with) and the statistics it was normalised with; CT stays in HU (None)."""
    from MedTranslateLib.preprocess.modality import CT_LIKE
    from MedTranslateLib.preprocess.normalization import denormalize, normalize

    if str(card["target_modality"]).upper() in CT_LIKE:
        return ref, None
    spec = card["normalization"]["output"]
    normalised, params = normalize(ref, mask, spec)
    return np.asarray(denormalize(normalised, spec), dtype=np.float32), params


def on_common_scale(arrays: CaseArrays, modality: str, card: Mapping[str, Any] | None = None) -> CaseArrays:
    """MR images have no unit: with the model's ``card`` the reference is put on the model's output scale (as in
    the card's metrics); without, each image goes on a 0-1000 scale between its own in-mask 0.5th/99.5th
    percentiles (the std map with the prediction). CT is returned as it is."""
    from dataclasses import replace

    from MedTranslateLib.evaluation.metrics import mr_window

    if modality.upper() != "MR":
        return arrays
    if card is not None:
        return replace(arrays, ref=reference_statistics(arrays.ref, arrays.mask, card)[0])
    (p_lo, p_hi), (r_lo, r_hi) = (mr_window(a, arrays.mask) for a in (arrays.pred, arrays.ref))
    std = None if arrays.std is None else arrays.std * np.float32(1000.0 / (p_hi - p_lo))
    return replace(arrays, pred=np.clip((arrays.pred - p_lo) * (1000.0 / (p_hi - p_lo)), 0.0, 1000.0),
                   ref=np.clip((arrays.ref - r_lo) * (1000.0 / (r_hi - r_lo)), 0.0, 1000.0), std=std)


def evaluate_arrays(arrays: CaseArrays, modality: str = "CT", card: Mapping[str, Any] | None = None,
                    figures: bool = False) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Metrics of one loaded case (plus the uncertainty relation when a std map is present) and, with
    ``figures``, its report figures: both on one scale (MR: :func:`on_common_scale`, computed once)."""
    from MedTranslateLib.evaluation.metrics import compute_metrics

    arrays = on_common_scale(arrays, modality, card)
    row: dict[str, Any] = compute_metrics(arrays.pred, arrays.ref, arrays.mask, modality=modality)
    relation = None
    if arrays.std is not None:
        from MedTranslateLib.evaluation.uncertainty import uncertainty_error_relation

        relation = uncertainty_error_relation(arrays.std, np.abs(arrays.pred - arrays.ref), arrays.mask)
        row.update({"unc_pearson": relation["pearson"], "unc_spearman": relation["spearman"],
                    "unc_error_ratio": relation["error_ratio"]})
    return row, (case_figures(arrays, row, modality, relation) if figures else {})


def metrics_for_arrays(arrays: CaseArrays, modality: str = "CT",
                       card: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metrics of :func:`evaluate_arrays` alone."""
    return evaluate_arrays(arrays, modality, card)[0]


def evaluate_case(pred_path: str | os.PathLike, ref_path: str | os.PathLike,
                  mask_path: str | os.PathLike | None = None, modality: str = "CT",
                  std_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Metrics of one synthetic volume against its reference (whole volume when no mask is given)."""
    return metrics_for_arrays(load_case(pred_path, ref_path, mask_path, std_path=std_path), modality)


def case_figures(arrays: CaseArrays, metrics: dict[str, Any], modality: str = "CT",
                 relation: dict[str, Any] | None = None) -> dict[str, bytes]:
    """The report figures of one case (PNG bytes by caption); ``arrays`` on the scale its metrics used;
    ``relation``: its uncertainty-vs-error relation (``uncertainty_error_relation``) when it has a std map."""
    from MedTranslateLib.evaluation.report import analysis_figure, slices_figure

    figures = {
        "Centre slices (axial, coronal, sagittal)": slices_figure(
            arrays.pred, arrays.ref, arrays.mask, arrays.spacing_xyz, arrays.input, modality),
        "Error analysis": analysis_figure(arrays.pred, arrays.ref, arrays.mask, metrics, modality),
    }
    if relation is not None:
        from MedTranslateLib.evaluation.uncertainty import uncertainty_figure

        figures["Uncertainty calibration"] = uncertainty_figure(relation, "HU" if modality == "CT" else "a.u.")
    return figures


# ----------------------------------------------------------------------------------------- folders

def _prediction_for(pred_dir: Path, case: str, batch_name: Path | None = None,
                    inputs: tuple[Path, Path] | None = None, folder: str = "") -> tuple[Path | None, Path | None]:
    """The prediction and uncertainty map of ``case`` in ``pred_dir``: ``<case>.<ext>``, ``<case>/sct.<ext>`` (or
    the same under the case's ``folder`` below the reference root: a tree of predictions), the ``batch_name`` a
    batch translate of the reference's inputs gives it, or a ``<case>_..._synthetic`` file (with ``inputs``, the
    case's folder and input file, one whose added folder names are the case's own)."""
    names = list(dict.fromkeys(name for name in (case, folder) if name))
    pred = next((found for name in names for found in (_find_volume(pred_dir, name),
                                                       _find_volume(pred_dir / name, "sct")) if found), None)
    if pred is None:
        pred = batch_name if batch_name is not None and batch_name.is_file() else \
            _batch_output(pred_dir, case, inputs)
    std = next((found for name in names for found in (_find_volume(pred_dir, f"{name}_std"),
                                                      _find_volume(pred_dir / name, "std")) if found), None)
    return pred, std


def _batch_output(pred_dir: Path, case: str, inputs: tuple[Path, Path] | None = None) -> Path | None:
    """The one ``<case>_..._synthetic.<ext>`` (or ``<case>-...``) that ``medtranslate translate`` writes for a
    batch (e.g. ``1PA001_mr_synthetic.nii.gz``, ``BraTS-GLI-00000-000-t1n_synthetic.nii.gz``). With ``inputs``
    (the case's folder and input), a name a batch gave to tell apart inputs of one name, ``fx1_mr_P01_synthetic``,
    is this case's only when the folders it adds (P01) are above this case: never another patient's fraction."""
    found = sorted(p for p in pred_dir.glob(f"{glob.escape(case)}[-_]*_synthetic.*")
                   if p.is_file() and any(p.name.endswith(f"_synthetic{ext}") for ext in EXTENSIONS))
    if inputs is not None:
        found = [p for p in found if _added_parts_fit(volume_stem(p), case, *inputs)]
    if len(found) > 1:
        raise InputError(f"{len(found)} predictions match case {case}: {', '.join(p.name for p in found)}.",
                         "Keep one prediction per case in the folder (e.g. evaluate each site from its own folder).")
    return found[0] if found else None


def _added_parts_fit(stem: str, case: str, folder: Path, source: Path) -> bool:
    """False for ``<case>_<input>_<added>_synthetic`` whose added parts are not folders above ``folder`` (or the
    input's format or a number, the batch's other tie-breakers)."""
    prefix = f"{case}_{volume_stem(source)}_"
    if not stem.startswith(prefix) or stem == f"{prefix}synthetic":
        return True
    allowed = {part for parent in folder.parents for part in parent.name.split("_")}
    allowed |= {token for suffix in EXTENSIONS for token in suffix.split(".") if token}  # in_mr_nii_gz
    return all(token in allowed or token.isdigit() for token in stem[len(prefix):-len("_synthetic")].split("_"))


def _synthrad_cases(ref_root: Path) -> list[CasePaths]:
    """Case folders holding ``ct.<ext>``, each named after its folder or, when folders share that name (``P01/fx1``,
    ``P02/fx1``: patients with fractions; one case id at two sites), after its last folders below ``ref_root``, as
    few as tell it apart from every other case."""
    names = {f"ct{ext}" for ext in EXTENSIONS}
    folders = list(dict.fromkeys(p.parent for p in files_below(ref_root) if p.name in names))
    tails = [folder.relative_to(ref_root).parts or (folder.name,) for folder in folders]
    counts: dict[int, Counter] = {}

    def unique(tail: tuple[str, ...], k: int) -> bool:
        if k not in counts:
            counts[k] = Counter(other[-k:] for other in tails)
        return counts[k][tail[-k:]] == 1

    cases = []
    for folder, tail in zip(folders, tails):
        depth = next((k for k in range(1, len(tail) + 1) if unique(tail, k)), len(tail))
        source = _find_volume(folder, "mr") or _find_volume(folder, "cbct")
        cases.append(CasePaths("/".join(tail[-depth:]), Path(), _find_volume(folder, "ct"),
                               _find_volume(folder, "mask"), source, modality="CT", folder="/".join(tail)))
    return cases


def _batch_names(cases: Sequence[CasePaths], pred_dir: Path) -> dict[str, Path]:
    """The output each case's input gets when all the cases' inputs are translated in one batch into
    ``pred_dir`` (names that tell apart inputs of one name: ``fx1_cbct_P01_synthetic.nii.gz``)."""
    with_input = [case for case in cases if case.input is not None]
    return dict(zip((case.case for case in with_input), batch_outputs([case.input for case in with_input], pred_dir)))


def _brats_cases(ref_root: Path, target: str) -> list[CasePaths]:
    cases = []
    for folder in sorted(p for p in ref_root.iterdir() if p.is_dir()):
        ref = _find_volume(folder, f"{folder.name}-{target}") or _find_volume(folder, f"{folder.name}_{target}")
        if ref is not None:
            cases.append(CasePaths(folder.name, Path(), ref, modality="MR", mask_from_reference=True))
    return cases


def _paired_cases(ref_root: Path, modality: str) -> list[CasePaths]:
    cases = []
    for ref in sorted(p for p in ref_root.iterdir() if p.is_file() and volume_stem(p) != p.name):
        case = volume_stem(ref)
        cases.append(CasePaths(case, Path(), ref, _find_volume(ref_root / "masks", case), modality=modality))
    return cases


def find_cases(pred_dir: str | os.PathLike, ref_root: str | os.PathLike, layout: str = "auto",
               target: str = "t2w", modality: str = "CT",
               on_failure: Callable[[str, InputError], None] | None = None,
               on_missing: Callable[[str], None] | None = None) -> list[CasePaths]:
    """Match predictions to references; cases without a prediction are skipped (each passed to ``on_missing``),
    none at all -> error. A case with several matching predictions raises, or with ``on_failure(case, error)``
    is reported there."""
    pred_dir, ref_root = Path(pred_dir), Path(ref_root)
    for folder, what in ((pred_dir, "prediction folder"), (ref_root, "reference folder")):
        if not folder.is_dir():
            raise ConfigError(f"The {what} {folder} does not exist.", "Check the path.")
    finders = {"synthrad": lambda: _synthrad_cases(ref_root), "brats": lambda: _brats_cases(ref_root, target),
               "paired": lambda: _paired_cases(ref_root, modality)}
    if layout != "auto" and layout not in finders:
        raise ConfigError(f"Unknown layout {layout!r}.", "Use auto, synthrad, brats or paired.")
    order = list(finders) if layout == "auto" else [layout]
    for name in order:
        matched, missing = [], []
        cases = finders[name]()
        batch_names = _batch_names(cases, pred_dir)
        for case in cases:
            try:
                inputs = (case.ref.parent, case.input) if case.input is not None else None
                pred, std = _prediction_for(pred_dir, case.case, batch_names.get(case.case), inputs, case.folder)
            except InputError as error:
                if on_failure is None:
                    raise
                on_failure(case.case, error)
                continue
            if pred is not None:
                case.pred, case.std = pred, std
                matched.append(case)
            else:
                missing.append(case.case)
        if matched:
            for case_name in missing if on_missing is not None else ():
                on_missing(case_name)
            return matched
    raise InputError(f"No prediction in {pred_dir} matches a reference case in {ref_root} (layout {layout}).",
                     "Name predictions <case>.nii.gz (or <case>/sct.nii.gz) after the reference case folders, "
                     "or keep the names a batch translate gives them (<case>_..._synthetic.nii.gz).")


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per metric: mean, std (population), median, q1, q3 and n over the cases' finite values.

    Infinite values (PSNR of a prediction identical to its reference) cannot enter a mean; they are counted
    as ``n_infinite`` (present only when > 0) so that a report can say so (:func:`infinite_notes`)."""
    out: dict[str, dict[str, float]] = {}
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and not isinstance(rows[0][k], bool)
            and k not in REGION_KEYS] if rows else []
    for key in keys:
        values = np.array([r.get(key, math.nan) for r in rows], dtype=np.float64)
        n_infinite = int(np.isinf(values).sum())
        values = values[np.isfinite(values)]
        if values.size == 0:
            out[key] = {s: math.nan for s in STATS} | {"n": 0}
        else:
            q1, median, q3 = np.percentile(values, (25, 50, 75))
            out[key] = {"mean": float(values.mean()), "std": float(values.std()), "median": float(median),
                        "q1": float(q1), "q3": float(q3), "n": int(values.size)}
        if n_infinite:
            out[key]["n_infinite"] = n_infinite
    return out


def infinite_notes(aggregates: Mapping[str, Mapping[str, float]]) -> list[str]:
    """One sentence per metric with infinite case values (left out of its statistics)."""
    return [f"{key}: {int(values['n_infinite'])} case(s) with an infinite value (a prediction identical to its "
            "reference inside the mask) are left out of the statistics; metrics.json stores them as null."
            for key, values in aggregates.items() if values.get("n_infinite")]


def _unmatched_predictions(pred_dir: Path, cases: Sequence[CasePaths]) -> list[str]:
    """Volume files below ``pred_dir`` that no case took as its prediction or uncertainty map."""
    used = {os.path.normpath(p) for case in cases for p in (case.pred, case.std) if p is not None}
    return [os.fspath(p.relative_to(pred_dir)) for p in files_below(pred_dir)
            if volume_stem(p) != p.name and os.path.normpath(p) not in used]


def evaluate_folder(pred_dir: str | os.PathLike, ref_root: str | os.PathLike, layout: str = "auto",
                    out_dir: str | os.PathLike | None = None, target: str = "t2w", modality: str = "CT",
                    figures: bool = True, on_failure: Callable[[str, InputError], None] | None = None,
                    card: Mapping[str, Any] | None = None, tracker: ProgressTracker | None = None,
                    on_missing: Callable[[str], None] | None = None,
                    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Evaluate every matched case; with ``out_dir`` write metrics.csv, metrics.json and report.html.

    A case that cannot be evaluated (InputError: a file off the reference grid, unreadable, empty) raises, or,
    with ``on_failure(case, error)``, is reported there and left out while the others go on. A reference case
    without a prediction goes to ``on_missing(case)``. The reports list the cases left out (``not_evaluated``:
    failed, without a prediction) and the prediction files no case took. ``tracker`` reports the cases done
    (and cancels between cases)."""
    rows, all_figures = [], {}
    failed: dict[str, str] = {}
    missing: list[str] = []

    def fail(case_name: str, error: InputError) -> None:
        failed[case_name] = str(error)
        if on_failure is None:
            raise error
        on_failure(case_name, error)

    def lack(case_name: str) -> None:
        missing.append(case_name)
        if on_missing is not None:
            on_missing(case_name)

    cases = find_cases(pred_dir, ref_root, layout, target, modality, fail, lack)
    for index, case in enumerate(cases):
        if tracker is not None:
            tracker.update(index / len(cases), f"case {index + 1}/{len(cases)}: {case.case}")
        try:
            arrays = load_case(case.pred, case.ref, case.mask, case.input, case.std, case.mask_from_reference)
        except InputError as error:
            fail(case.case, error)
            continue
        case.modality = resolve_modality(case.modality, arrays.ref)
        metrics, case_figs = evaluate_arrays(arrays, case.modality, card, figures and out_dir is not None)
        rows.append({"case": case.case, **metrics, **region_fields(arrays.mask, case_region(case))})
        if case_figs:
            all_figures[case.case] = case_figs
    if not rows:
        raise InputError(f"No case in {pred_dir} could be evaluated.", "See the errors above for each case.")
    if tracker is not None:
        tracker.update(1.0, f"{len(cases)} case(s) evaluated")
    aggregates = aggregate(rows)
    if out_dir is not None:
        left_out = {"failed": failed, "no_prediction": missing,
                    "unmatched_predictions": _unmatched_predictions(Path(pred_dir), cases)}
        write_outputs(rows, aggregates, out_dir, all_figures, left_out=left_out)
    return rows, aggregates


# ------------------------------------------------------------------------------------------ writing

def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def write_outputs(rows: Sequence[dict[str, Any]], aggregates: dict[str, dict[str, float]],
                  out_dir: str | os.PathLike, figures: dict[str, dict[str, bytes]] | None = None,
                  title: str = "MedTranslate evaluation", left_out: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``metrics.csv`` (one row per case), ``metrics.json`` and ``report.html`` into ``out_dir``;
    ``left_out`` (a folder's cases not evaluated: ``failed``, ``no_prediction``, ``unmatched_predictions``) goes
    into the JSON as ``not_evaluated`` and into the HTML report's notes."""
    from MedTranslateLib.evaluation.metrics import DEFINITIONS
    from MedTranslateLib.evaluation.report import left_out_notes, render_report

    out = Path(out_dir)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    paths = {"csv": out / "metrics.csv", "json": out / "metrics.json", "html": out / "report.html"}
    document = {"cases": list(rows), "aggregates": aggregates,
                "definitions": {k: v for k, v in DEFINITIONS.items()}}
    if left_out is not None:
        document["not_evaluated"] = dict(left_out)
    texts = {"csv": buffer.getvalue(), "json": json.dumps(_json_safe(document), indent=2),
             "html": render_report(rows, aggregates, figures, title=title,
                                   notes=infinite_notes(aggregates) + left_out_notes(left_out or {}))}
    try:
        with output_group():  # the three files are of one evaluation: all replaced together or none
            for key, path in paths.items():
                atomic_write_text(path, texts[key])
    except OSError as exc:  # moving them into place
        raise OutputError(f"Cannot write the report into {out}: {exc.strerror or exc}.",
                          "Choose a folder you can write to, with free space.") from exc
    return paths
