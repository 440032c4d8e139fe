"""Dataset readers (SynthRAD 2023/2025, BraTS 2021/2023, IXI, paired folders, CSV, unpaired folders),
layout detection, and splits BY SUBJECT (never by slice) or a z-slab hold-out of a single volume.

Every reader returns a list of :class:`Case`. Unpaired layouts return cases with only a source or only
a target path (sources and targets come from different subjects).
"""

from __future__ import annotations

import csv
import io
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.io.atomic import FILE_SUFFIXES as VOLUME_SUFFIXES
from MedTranslateLib.io.atomic import find_volume as _find_volume
from MedTranslateLib.io.atomic import volume_stem

LAYOUTS = ("synthrad2023", "synthrad2025", "brats2021", "brats2023", "ixi", "paired_folder", "csv", "unpaired")

#: card modality -> file stem per layout family
SYNTHRAD_NAMES = {"MR": "mr", "T1": "mr", "CT": "ct", "CBCT": "cbct"}
BRATS2021_NAMES = {"T1": "t1", "T1C": "t1ce", "T2": "t2", "FLAIR": "flair", "MR": "t1"}
BRATS2023_NAMES = {"T1": "t1n", "T1C": "t1c", "T2": "t2w", "FLAIR": "t2f", "MR": "t1n"}
IXI_NAMES = {"T1": "T1", "T2": "T2", "PD": "PD", "MR": "T1", "MRA": "MRA"}


@dataclass(frozen=True)
class Case:
    """One training case. ``subject_id`` groups cases of the same person (splits never separate them)."""

    subject_id: str
    source_path: Path | None
    target_path: Path | None
    mask_path: Path | None = None
    case_id: str = ""

    @property
    def name(self) -> str:
        return self.case_id or self.subject_id


def _is_volume(path: Path) -> bool:
    return path.is_file() and path.name.endswith(VOLUME_SUFFIXES)


def _name_for(modality: str, table: dict[str, str], override: str | None) -> str:
    if override:
        return override
    key = modality.upper()
    if key not in table:
        raise ConfigError(f"The layout has no file for modality {modality!r}.",
                          f"Use one of {sorted(table)} or give the file name with source_name/target_name.")
    return table[key]


def _hidden(path: Path, root: Path) -> bool:
    """True for a path inside a hidden folder below ``root`` (.ipynb_checkpoints, .cache, ...)."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def read_case_folders(root: Path, source_name: str, target_name: str, mask_name: str = "mask",
                      suffixes: Sequence[str] = VOLUME_SUFFIXES) -> list[Case]:
    """Folders (at any depth) holding ``<source_name>.<ext>`` and ``<target_name>.<ext>`` (SynthRAD, generic)."""
    cases = []
    root = Path(root)
    for folder in sorted({p.parent for p in root.rglob(f"{target_name}.*") if not _hidden(p, root)}):
        source = _find_volume(folder, source_name)
        target = _find_volume(folder, target_name)
        if source is None or target is None or not source.name.endswith(tuple(suffixes)):
            continue
        cases.append(Case(folder.name, source, target, _find_volume(folder, mask_name), folder.name))
    return cases


def read_synthrad(root: Path, source: str = "MR", target: str = "CT", version: int = 2023,
                  source_name: str | None = None, target_name: str | None = None) -> list[Case]:
    """SynthRAD2023 (``Task1/brain/1BA001/{mr,ct,mask}.nii.gz``) or 2025 (``.mha``)."""
    suffixes = (".nii.gz",) if version == 2023 else (".mha",)
    return read_case_folders(root, _name_for(source, SYNTHRAD_NAMES, source_name),
                             _name_for(target, SYNTHRAD_NAMES, target_name), suffixes=suffixes)


def read_brats(root: Path, source: str = "T1", target: str = "T2", version: int = 2023,
               source_name: str | None = None, target_name: str | None = None) -> list[Case]:
    """BraTS 2021 (``<case>/<case>_t1.nii.gz``) or 2023 (``<case>/<case>-t1n.nii.gz``). No mask (skull-stripped)."""
    table, sep = (BRATS2023_NAMES, "-") if version == 2023 else (BRATS2021_NAMES, "_")
    src, tgt = _name_for(source, table, source_name), _name_for(target, table, target_name)
    cases = []
    for target_path in sorted(Path(root).rglob(f"*{sep}{tgt}.nii.gz")):
        case_id = target_path.name[: -len(f"{sep}{tgt}.nii.gz")]
        source_path = target_path.parent / f"{case_id}{sep}{src}.nii.gz"
        if source_path.is_file():
            # BraTS 2023 ids end in a time point (-000, -001): the same patient is one subject.
            subject = re.sub(r"-\d{3}$", "", case_id) if version == 2023 else case_id
            cases.append(Case(subject, source_path, target_path, None, case_id))
    return cases


_IXI = re.compile(r"^(IXI\d+)-(.+)-(\d+)-(T1|T2|PD|MRA)\.nii(\.gz)?$")


def read_ixi(root: Path, source: str = "T2", target: str = "PD",
             source_name: str | None = None, target_name: str | None = None) -> list[Case]:
    """IXI: flat files ``IXI002-Guys-0828-T1.nii.gz``; the subject is ``IXI002``."""
    src, tgt = _name_for(source, IXI_NAMES, source_name), _name_for(target, IXI_NAMES, target_name)
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(Path(root).rglob("IXI*")):
        match = _IXI.match(path.name)
        if match:
            found.setdefault(match.group(1), {})[match.group(4)] = path
    return [Case(subject, files[src], files[tgt], None, subject)
            for subject, files in sorted(found.items()) if src in files and tgt in files]


def read_csv(path: Path) -> list[Case]:
    """A CSV with columns ``subject,source,target[,mask]``; relative paths are relative to the CSV's folder.
    UTF-8 (with or without the byte-order mark spreadsheets write), separated by commas, semicolons or tabs."""
    path = Path(path)
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}).",
                          "Save the CSV with the UTF-8 encoding (in a spreadsheet: 'CSV UTF-8').") from None
    header = text.splitlines()[0] if text.strip() else ""
    delimiter = max(",;\t", key=header.count)  # spreadsheets in many locales separate with ';'
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        missing = {"subject", "source", "target"} - set(reader.fieldnames)
        if missing:
            raise ConfigError(f"{path} lacks the column(s) {sorted(missing)}.",
                              "Write a header line 'subject,source,target[,mask]'.")
        cases = []
        for row in reader:
            def resolve(value: str | None) -> Path | None:
                if not value or not value.strip():
                    return None
                p = Path(value.strip())
                return p if p.is_absolute() else base / p
            subject = (row["subject"] or "").strip()
            cases.append(Case(subject, resolve(row["source"]), resolve(row["target"]),
                              resolve(row.get("mask")), (row.get("case") or "").strip() or subject))
    return cases


def read_unpaired(root: Path, source_name: str, target_name: str) -> list[Case]:
    """Unpaired folders ``<root>/<source_name>/*`` and ``<root>/<target_name>/*`` (different subjects)."""
    root = Path(root)
    cases: list[Case] = []
    for folder_name, is_source in ((source_name, True), (target_name, False)):
        folder = root / folder_name
        if not folder.is_dir():
            raise ConfigError(f"Unpaired data needs the folder {folder}.",
                              f"Put source volumes in {root / source_name} and targets in {root / target_name}.")
        for path in sorted(p for p in folder.iterdir() if _is_volume(p)):
            subject = volume_stem(path)
            cases.append(Case(subject, path if is_source else None, None if is_source else path, None, subject))
    return cases


def detect_layout(root: Path, source_name: str | None = None, target_name: str | None = None) -> str:
    """Guess the dataset layout of ``root`` (one of :data:`LAYOUTS`). With ``source_name`` and ``target_name``
    (file or folder names, e.g. "mr" and "ct"), folders ``<root>/<source_name>`` and ``<root>/<target_name>``
    of volumes are the unpaired layout, whatever else lies beside them."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        return "csv"
    if not root.is_dir():
        raise ConfigError(f"The training data {root} does not exist.", "Give an existing folder or CSV file.")
    names = [p.name for p in root.rglob("*") if p.is_file()]
    if any(_IXI.match(n) for n in names):
        return "ixi"
    if any(n.endswith(("-t1n.nii.gz", "-t2w.nii.gz", "-t2f.nii.gz")) for n in names):
        return "brats2023"
    if any(n.endswith(("_t1ce.nii.gz", "_flair.nii.gz")) for n in names):
        return "brats2021"
    if "ct.mha" in names:
        return "synthrad2025"
    if "ct.nii.gz" in names and ("mr.nii.gz" in names or "cbct.nii.gz" in names):
        return "synthrad2023"
    # hidden folders (.ipynb_checkpoints, .DS_Store's kin) are never cases
    subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    volume_counts = {p.name: sum(_is_volume(f) for f in p.iterdir()) for p in subfolders}
    if source_name and target_name and volume_counts.get(source_name) and volume_counts.get(target_name):
        return "unpaired"
    if subfolders and all(count >= 2 for count in volume_counts.values()):
        return "paired_folder"
    if len(subfolders) == 2 and all(volume_counts.values()):
        return "unpaired"
    raise ConfigError(f"Cannot recognise the dataset layout of {root}.",
                      f"Set layout to one of {', '.join(LAYOUTS)} (see the documentation for each layout).")


def resolve_layout(root: Path | str, layout: str = "auto", source: str = "MR", target: str = "CT",
                   source_name: str | None = None, target_name: str | None = None) -> str:
    """``layout``, or for "auto" the layout :func:`detect_layout` finds in ``root``."""
    if layout not in ("auto", "", None):
        return layout
    # generic layouts name files or folders after the modality unless told otherwise
    return detect_layout(Path(root), source_name or source.lower(), target_name or target.lower())


def load_cases(root: Path | str, layout: str = "auto", source: str = "MR", target: str = "CT",
               source_name: str | None = None, target_name: str | None = None) -> list[Case]:
    """All cases of a dataset; raises :class:`ConfigError` when none are found."""
    root = Path(root)
    source_file, target_file = source_name or source.lower(), target_name or target.lower()
    layout = resolve_layout(root, layout, source, target, source_name, target_name)
    if layout in ("synthrad2023", "synthrad2025"):
        cases = read_synthrad(root, source, target, int(layout[-4:]), source_name, target_name)
    elif layout in ("brats2021", "brats2023"):
        cases = read_brats(root, source, target, int(layout[-4:]), source_name, target_name)
    elif layout == "ixi":
        cases = read_ixi(root, source, target, source_name, target_name)
    elif layout == "csv":
        cases = read_csv(root)
    elif layout == "paired_folder":
        cases = read_case_folders(root, source_file, target_file)
    elif layout == "unpaired":
        cases = read_unpaired(root, source_file, target_file)
    else:
        raise ConfigError(f"Unknown dataset layout {layout!r}.", f"Use auto or one of {', '.join(LAYOUTS)}.")
    if not cases:
        raise ConfigError(f"No {source} -> {target} cases found in {root} (layout {layout}).",
                          "Check the folder, the layout and the source/target modality or file names.")
    return cases


@dataclass
class Split:
    """Cases per split plus a JSON-able description (recorded in the model card)."""

    train: list[Case]
    val: list[Case]
    test: list[Case]
    description: dict[str, Any] = field(default_factory=dict)

    def subjects(self, name: str) -> list[str]:
        return sorted({c.subject_id for c in getattr(self, name)})


def split_by_subject(cases: Sequence[Case], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                     train_subjects: Sequence[str] | None = None, val_subjects: Sequence[str] | None = None,
                     test_subjects: Sequence[str] | None = None) -> Split:
    """Seeded split BY SUBJECT: every case of a subject lands in exactly one split.

    Explicit subject lists win over fractions (unlisted subjects go to train when ``train_subjects`` is None).
    Only subjects with a complete pair can be held out (held-out metrics compare a prediction with its target):
    with fractions, subjects without one (unpaired data) always train, and the fractions count paired subjects;
    val and test get at least one subject each when their fraction is > 0 and enough paired subjects remain.
    """
    subjects = sorted({c.subject_id for c in cases})
    paired = sorted({c.subject_id for c in cases if c.source_path is not None and c.target_path is not None})
    if val_subjects is not None or test_subjects is not None or train_subjects is not None:
        val_set, test_set = set(val_subjects or ()), set(test_subjects or ())
        unknown = (val_set | test_set | set(train_subjects or ())) - set(subjects)
        if unknown:
            raise ConfigError(f"Split lists unknown subject(s): {sorted(unknown)}.", f"Known subjects: {subjects}.")
        unpaired = sorted((val_set | test_set) - set(paired))
        if unpaired:
            raise ConfigError(f"Held-out subject(s) {unpaired[:5]} have no source/target pair, so they cannot be "
                              "evaluated.", "Hold out subjects that have both volumes, or leave val/test empty.")
        if val_set & test_set:
            raise ConfigError(f"Subject(s) {sorted(val_set & test_set)} are in both val and test.",
                              "Give each subject one split.")
        train_set = set(train_subjects) if train_subjects is not None else set(subjects) - val_set - test_set
        overlap = train_set & (val_set | test_set)
        if overlap:
            raise ConfigError(f"Subject(s) {sorted(overlap)} are in train and in a held-out split.",
                              "Give each subject one split.")
        description: dict[str, Any] = {"method": "subject lists"}
    else:
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1.",
                              "For example val_fraction=0.1, test_fraction=0.1.")
        order = paired[:]
        random.Random(seed).shuffle(order)
        n = len(order)

        def count(fraction: float, available: int) -> int:
            return 0 if fraction <= 0 or available < 2 else min(max(1, round(fraction * n)), available - 1)

        n_test = count(test_fraction, n)
        n_val = count(val_fraction, n - n_test)
        test_set, val_set = set(order[:n_test]), set(order[n_test:n_test + n_val])
        train_set = set(subjects) - test_set - val_set
        description = {"method": "by subject", "seed": seed, "val_fraction": val_fraction,
                       "test_fraction": test_fraction}
        if len(paired) < len(subjects):
            description["unpaired_subjects_in_train"] = len(subjects) - len(paired)
    if not train_set:
        raise ConfigError("The split leaves no subject for training.", "Lower val/test fractions or add data.")
    split = Split([c for c in cases if c.subject_id in train_set], [c for c in cases if c.subject_id in val_set],
                  [c for c in cases if c.subject_id in test_set])
    description.update({name: split.subjects(name) for name in ("train", "val", "test")})
    split.description = description
    return split


def zslab_holdout(n_slices: int, test_fraction: float = 0.2, val_fraction: float = 0.0,
                  gap: int = 4) -> dict[str, Any]:
    """Z-slab hold-out of ONE volume: ``train [0, a) | gap | val | gap | test (top slab)``.

    Returns ``{"method": "z-slab", "gap", "train": [z0, z1], "val": [z0, z1] | None, "test": [z0, z1]}``
    (half-open slice ranges along the volume's first axis).
    """
    n_test = max(1, round(test_fraction * n_slices)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n_slices)) if val_fraction > 0 else 0
    gaps = gap * ((n_test > 0) + (n_val > 0))
    n_train = n_slices - n_test - n_val - gaps
    if n_train < 1:
        raise ConfigError(f"A volume of {n_slices} slices is too thin for the z-slab hold-out.",
                          "Lower test_fraction, val_fraction or slab_gap.")
    val = [n_train + gap, n_train + gap + n_val] if n_val else None
    test_start = (val[1] if val else n_train) + gap
    test = [test_start, test_start + n_test] if n_test else None
    return {"method": "z-slab", "gap": gap, "n_slices": n_slices, "train": [0, n_train], "val": val, "test": test}
