"""Dataset readers (SynthRAD 2023/2025, BraTS 2021/2023, IXI, paired folders, CSV, unpaired folders),
layout detection, and splits BY SUBJECT (never by slice) or a z-slab hold-out of a single volume.

Every reader returns a list of :class:`Case`. Unpaired layouts return cases with only a source or only
a target path (sources and targets come from different subjects). Readers that skip incomplete cases tell their
``warn`` callable which ones and why, in one message.
"""

from __future__ import annotations

import csv
import io
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.io.atomic import FILE_SUFFIXES as VOLUME_SUFFIXES
from MedTranslateLib.io.atomic import files_below, find_volume, same_file, volume_stem

LAYOUTS = ("synthrad2023", "synthrad2025", "brats2021", "brats2023", "ixi", "paired_folder", "csv", "unpaired")

#: card modality -> file stem per layout family
SYNTHRAD_NAMES = {"MR": "mr", "T1": "mr", "CT": "ct", "CBCT": "cbct"}
BRATS2021_NAMES = {"T1": "t1", "T1C": "t1ce", "T2": "t2", "FLAIR": "flair", "MR": "t1"}
BRATS2023_NAMES = {"T1": "t1n", "T1C": "t1c", "T2": "t2w", "FLAIR": "t2f", "MR": "t1n"}
IXI_NAMES = {"T1": "T1", "T2": "T2", "PD": "PD", "MR": "T1", "MRA": "MRA"}

#: receives one message per reader that skipped cases (the training loop prints it and records it in the card)
Warn = Callable[[str], None]
#: skipped cases named in a warning (the rest are counted)
MAX_LISTED = 10


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


def _missing(folder: Path, stem: str, suffixes: Sequence[str], label: str = "") -> str:
    """Why ``folder`` lacks ``<stem><suffix>``: "no mr", or a near miss ("has mr.nii, not mr.nii.gz")."""
    near = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.lower().startswith(f"{stem.lower()}."))
    if not near:
        return f"no {label or stem}"
    return f"has {', '.join(near)}, not {stem}{'/'.join(suffixes)}"


def _report_skipped(warn: Warn | None, skipped: Sequence[str], total: int, what: str, root: Path) -> None:
    """One message to ``warn`` naming the skipped ``what`` (e.g. "case folders") of ``root`` and why."""
    if warn is None or not skipped:
        return
    more = f" and {len(skipped) - MAX_LISTED} more" if len(skipped) > MAX_LISTED else ""
    warn(f"{len(skipped)} of {total} {what} in {root} skipped: {', '.join(skipped[:MAX_LISTED])}{more}.")


def _case_folders(files: Sequence[Path], root: Path, stems: Sequence[str]) -> list[Path]:
    """Folders of ``files`` (below ``root``, not hidden) holding a file named ``<stem>.*`` (any case) for one of
    ``stems``."""
    prefixes = tuple(f"{stem.lower()}." for stem in stems)
    return sorted({p.parent for p in files if p.name.lower().startswith(prefixes) and not _hidden(p, root)})


#: where a case folder's subject id comes from: its own name, or its parent folder's (``P01/fraction1``)
SUBJECT_FOLDERS = ("case", "parent")


def _case_names(folder: Path, subject_folder: str) -> tuple[str, str]:
    """(subject id, case id) of a case folder: ``case1`` for both, or with ``subject_folder="parent"`` the parent's
    name and ``parent/case``."""
    if subject_folder == "parent":
        return folder.parent.name, f"{folder.parent.name}/{folder.name}"
    return folder.name, folder.name


def _refuse_duplicate_names(cases: Sequence[Case], folders: Sequence[Path], root: Path, subject_folder: str) -> None:
    """Case names come from folder names: two folders of one name would silently become one case (and, with
    ``subject_folder="parent"``, two subject folders of one name one subject)."""
    subjects: dict[str, Path] = {}
    for folder in folders if subject_folder == "parent" else ():
        other = subjects.setdefault(folder.parent.name, folder.parent)
        if other != folder.parent:
            raise ConfigError(f"Two subject folders in {root} have the same name, {other.name!r}: {other} and "
                              f"{folder.parent}; with subject_folder = \"parent\" they would be one person.",
                              "Rename one if they hold different people; if they are the same person, list the "
                              "cases in a CSV (layout csv, header subject,source,target,case) with one subject.")
    seen: dict[str, Path] = {}
    for case, folder in zip(cases, folders):
        if case.name not in seen:
            seen[case.name] = folder
            continue
        other = seen[case.name]
        if subject_folder == "case" and other.parent.name != folder.parent.name:
            fix = ("If each parent folder is one person and these are that person's scans (P01/fraction1, "
                   "P02/fraction1), set subject_folder = \"parent\"; otherwise rename one folder.")
        else:
            fix = ("Rename one if they hold different cases; if they are the same person, list the cases in a CSV "
                   "(layout csv, header subject,source,target,case) with one subject.")
        raise ConfigError(f"Two case folders in {root} give the same case name, {case.name!r}: {other} and {folder}.",
                          fix)


def read_case_folders(root: Path, source_name: str, target_name: str, mask_name: str = "mask",
                      suffixes: Sequence[str] = VOLUME_SUFFIXES, warn: Warn | None = None,
                      subject_folder: str = "case") -> list[Case]:
    """Folders (at any depth) holding ``<source_name>.<ext>`` and ``<target_name>.<ext>`` (SynthRAD, generic); the
    source must have one of ``suffixes``. Folders with a source file but no usable pair (no target, or a source of
    another suffix) are skipped, and ``warn`` told which; folders with a target alone belong to another task.
    The subject id is the case folder's name, or with ``subject_folder="parent"`` its parent folder's."""
    root = Path(root)
    if subject_folder not in SUBJECT_FOLDERS:
        raise ConfigError(f"Unknown subject_folder {subject_folder!r}.",
                          "Use \"case\" (each case folder is a subject) or \"parent\" (case folders inside one "
                          "folder per subject, e.g. P01/fraction1).")
    cases, used, skipped = [], [], []
    # folders with a trace of the source, and folders with a target beside them: a target alone elsewhere is
    # another task's case (SynthRAD's Task2 for MR -> CT), not a case missing its source
    files = files_below(root)  # one walk of the tree for both
    with_source = _case_folders(files, root, (source_name,))
    beside = {folder.parent for folder in with_source}
    folders = sorted({*with_source, *(f for f in _case_folders(files, root, (target_name,)) if f.parent in beside)})
    for folder in folders:
        source, target = find_volume(folder, source_name, suffixes), find_volume(folder, target_name)
        if source is None or target is None:
            why = [_missing(folder, name, wanted) for name, wanted, found
                   in ((source_name, suffixes, source), (target_name, VOLUME_SUFFIXES, target)) if found is None]
            skipped.append(f"{folder.relative_to(root).as_posix()} ({'; '.join(why)})")
            continue
        subject, case_id = _case_names(folder, subject_folder)
        cases.append(Case(subject, source, target, find_volume(folder, mask_name), case_id))
        used.append(folder)
    _refuse_duplicate_names(cases, used, root, subject_folder)
    _report_skipped(warn, skipped, len(folders), "case folders", root)
    return cases


def read_synthrad(root: Path, source: str = "MR", target: str = "CT", version: int = 2023,
                  source_name: str | None = None, target_name: str | None = None,
                  warn: Warn | None = None, subject_folder: str = "case") -> list[Case]:
    """SynthRAD2023 (``Task1/brain/1BA001/{mr,ct,mask}.nii.gz``) or 2025 (``.mha``)."""
    suffixes = (".nii.gz",) if version == 2023 else (".mha",)
    return read_case_folders(root, _name_for(source, SYNTHRAD_NAMES, source_name),
                             _name_for(target, SYNTHRAD_NAMES, target_name), suffixes=suffixes, warn=warn,
                             subject_folder=subject_folder)


def read_brats(root: Path, source: str = "T1", target: str = "T2", version: int = 2023,
               source_name: str | None = None, target_name: str | None = None,
               warn: Warn | None = None) -> list[Case]:
    """BraTS 2021 (``<case>/<case>_t1.nii.gz``) or 2023 (``<case>/<case>-t1n.nii.gz``). No mask (skull-stripped).
    Cases with only one of the two contrasts are skipped, and ``warn`` told which."""
    table, sep = (BRATS2023_NAMES, "-") if version == 2023 else (BRATS2021_NAMES, "_")
    src, tgt = _name_for(source, table, source_name), _name_for(target, table, target_name)
    files = files_below(root)
    found = sorted({(p.parent, p.name[: p.name.rindex(f"{sep}{stem}.")])
                    for stem in (src, tgt) for p in files if f"{sep}{stem}." in p.name})
    cases, skipped = [], []
    for folder, case_id in found:
        source_path, target_path = (folder / f"{case_id}{sep}{stem}.nii.gz" for stem in (src, tgt))
        if not (source_path.is_file() and target_path.is_file()):
            why = [_missing(folder, f"{case_id}{sep}{stem}", (".nii.gz",), stem)
                   for stem, path in ((src, source_path), (tgt, target_path)) if not path.is_file()]
            skipped.append(f"{case_id} ({'; '.join(why)})")
            continue
        # BraTS 2023 ids end in a time point (-000, -001): the same patient is one subject.
        subject = re.sub(r"-\d{3}$", "", case_id) if version == 2023 else case_id
        cases.append(Case(subject, source_path, target_path, None, case_id))
    _report_skipped(warn, skipped, len(found), "cases", Path(root))
    return cases


_IXI = re.compile(r"^(IXI\d+)-(.+)-(\d+)-(T1|T2|PD|MRA)\.nii(\.gz)?$")


def read_ixi(root: Path, source: str = "T2", target: str = "PD", source_name: str | None = None,
             target_name: str | None = None, warn: Warn | None = None) -> list[Case]:
    """IXI: flat files ``IXI002-Guys-0828-T1.nii.gz``; the subject is ``IXI002``. Subjects with only one of the
    two contrasts are skipped, and ``warn`` told which."""
    src, tgt = _name_for(source, IXI_NAMES, source_name), _name_for(target, IXI_NAMES, target_name)
    found: dict[str, dict[str, Path]] = {}
    for path in files_below(root):
        match = _IXI.match(path.name)
        if match:
            found.setdefault(match.group(1), {})[match.group(4)] = path
    relevant = {subject: files for subject, files in sorted(found.items()) if src in files or tgt in files}
    skipped = [f"{subject} (no {src if src not in files else tgt})" for subject, files in relevant.items()
               if src not in files or tgt not in files]
    _report_skipped(warn, skipped, len(relevant), "subjects", Path(root))
    return [Case(subject, files[src], files[tgt], None, subject)
            for subject, files in relevant.items() if src in files and tgt in files]


def read_csv(path: Path) -> list[Case]:
    """A CSV with columns ``subject,source,target[,mask]``; relative paths are relative to the CSV's folder.
    UTF-8 (with or without the byte-order mark spreadsheets write), separated by commas, semicolons or tabs."""
    path = Path(path)
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
        return [_csv_case(row, f"row {reader.line_num} of {path}", path.parent) for row in reader]


def _csv_path(value: str | None, base: Path) -> Path | None:
    """A CSV cell's path (relative to ``base``), or None for an empty cell."""
    if not value or not value.strip():
        return None
    path = Path(value.strip())
    return path if path.is_absolute() else base / path


def _csv_case(row: dict[str, str | None], where: str, base: Path) -> Case:
    """The case of one CSV row (``where`` names it in errors): a subject and a source, a target or both."""
    subject = (row["subject"] or "").strip()
    if not subject:
        raise ConfigError(f"{where}: empty subject.",
                          "Give every row a subject (the person scanned; rows of one person share it).")
    source, target = _csv_path(row["source"], base), _csv_path(row["target"], base)
    if source is None and target is None:
        raise ConfigError(f"{where}: neither a source nor a target.",
                          "Give the row a source and a target path (one of them for unpaired data), or delete it.")
    return Case(subject, source, target, _csv_path(row.get("mask"), base), (row.get("case") or "").strip() or subject)


def _unpaired_folder(root: Path, name: str, role: str) -> list[Path]:
    """The volumes directly in ``root/name``; raises :class:`ConfigError` when the folder is missing or has none."""
    folder = root / name
    if not folder.is_dir():
        raise ConfigError(f"Unpaired data needs the {role} folder {folder}.",
                          f"Put the {role} volumes in {folder}, or set {role}_name to the folder's name.")
    volumes = sorted(p for p in folder.iterdir() if _is_volume(p))
    if not volumes:
        others = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        held = f"it holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}" if others else "it is empty"
        raise ConfigError(f"The unpaired {role} folder {folder} holds no volumes ({held}).",
                          f"Put the {role} volumes there, one file each ({' '.join(VOLUME_SUFFIXES)}).")
    return volumes


def read_unpaired(root: Path, source_name: str, target_name: str) -> list[Case]:
    """Unpaired folders ``<root>/<source_name>/*`` and ``<root>/<target_name>/*`` (different subjects)."""
    root = Path(root)
    if (root / source_name).resolve() == (root / target_name).resolve():
        raise ConfigError(f"The unpaired source and target folders are one, {root / source_name}: the model "
                          "would learn to copy its input.",
                          "Put sources and targets in two folders and name them with source_name / target_name.")
    sources, targets = _unpaired_folder(root, source_name, "source"), _unpaired_folder(root, target_name, "target")
    return ([Case(volume_stem(p), p, None, None, volume_stem(p)) for p in sources]
            + [Case(volume_stem(p), None, p, None, volume_stem(p)) for p in targets])


def detect_layout(root: Path, source_name: str | None = None, target_name: str | None = None) -> str:
    """Guess the dataset layout of ``root`` (one of :data:`LAYOUTS`). With ``source_name`` and ``target_name``
    (file or folder names, e.g. "mr" and "ct"), folders ``<root>/<source_name>`` and ``<root>/<target_name>``
    are the unpaired layout, whatever else lies beside them."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        return "csv"
    if root.is_file():
        raise ConfigError(f"The training data {root} is a file but not a CSV list of cases.",
                          "Give the dataset folder, or a CSV file (.csv) with the header subject,source,target.")
    if not root.is_dir():
        raise ConfigError(f"The training data {root} does not exist.", "Give an existing folder or CSV file.")
    names = [p.name for p in files_below(root)]
    if not any(name.lower().endswith(VOLUME_SUFFIXES) for name in names):
        raise ConfigError(f"The training data folder {root} holds no volumes ({', '.join(VOLUME_SUFFIXES)}).",
                          "Point data at the folder with the cases, or copy the volumes there.")
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
    if source_name and target_name and source_name in volume_counts and target_name in volume_counts:
        return "unpaired"  # even with an empty folder: the reader says which
    if subfolders and all(count >= 2 for count in volume_counts.values()):
        return "paired_folder"
    if len(subfolders) == 2 and all(volume_counts.values()):
        return "unpaired"
    raise ConfigError(f"Cannot recognise the dataset layout of {root}.",
                      f"Set layout to one of {', '.join(LAYOUTS)} (see the documentation for each layout).")


def resolve_layout(root: Path | str, layout: str = "auto", source: str = "MR", target: str = "CT",
                   source_name: str | None = None, target_name: str | None = None) -> str:
    """``layout``, or for "auto" the layout :func:`detect_layout` finds in ``root``."""
    if not Path(root).exists():  # whatever the layout: a mistyped path is no permission problem
        raise ConfigError(f"The training data {root} does not exist.", "Give an existing folder or CSV file.")
    if layout not in ("auto", "", None):
        return layout
    # generic layouts name files or folders after the modality unless told otherwise
    return detect_layout(Path(root), source_name or source.lower(), target_name or target.lower())


def _read_layout(root: Path, layout: str, source: str, target: str, source_name: str | None,
                 target_name: str | None, warn: Warn, subject_folder: str) -> list[Case]:
    """The cases of ``root`` read with the reader of ``layout``."""
    source_file, target_file = source_name or source.lower(), target_name or target.lower()
    if subject_folder != "case" and layout not in ("synthrad2023", "synthrad2025", "paired_folder"):
        raise ConfigError(f"subject_folder = {subject_folder!r} applies to case folders (SynthRAD and paired_folder "
                          f"layouts), not to the {layout} layout.",
                          "Remove subject_folder, or list the cases in a CSV with a subject column.")
    if layout in ("synthrad2023", "synthrad2025"):
        return read_synthrad(root, source, target, int(layout[-4:]), source_name, target_name, warn, subject_folder)
    if layout in ("brats2021", "brats2023"):
        return read_brats(root, source, target, int(layout[-4:]), source_name, target_name, warn)
    if layout == "ixi":
        return read_ixi(root, source, target, source_name, target_name, warn)
    if layout == "csv":
        return read_csv(root)
    if layout == "paired_folder":
        return read_case_folders(root, source_file, target_file, warn=warn, subject_folder=subject_folder)
    if layout == "unpaired":
        return read_unpaired(root, source_file, target_file)
    raise ConfigError(f"Unknown dataset layout {layout!r}.", f"Use auto or one of {', '.join(LAYOUTS)}.")


def _refuse_identity_pairs(cases: Sequence[Case], root: Path, layout: str, source: str, target: str) -> None:
    """A case whose source and target are one file would train a model that copies its input."""
    for case in cases:
        if case.source_path is not None and case.target_path is not None \
                and same_file(case.source_path, case.target_path):
            who = case.subject_id + (f" (case {case.name})" if case.name != case.subject_id else "")
            fix = (f"Give its row in {root} different source and target files." if layout == "csv" else
                   f"Choose a source and a target that name different files ({source} and {target} both mean "
                   f"{case.source_path.name} in the {layout} layout), or set source_name / target_name.")
            files = str(case.source_path) if case.source_path == case.target_path else \
                f"{case.source_path} and {case.target_path} (one file)"
            raise ConfigError(f"Subject {who} has the same file as source and target, {files}: the model would "
                              "learn to copy its input.", fix)


def load_cases(root: Path | str, layout: str = "auto", source: str = "MR", target: str = "CT",
               source_name: str | None = None, target_name: str | None = None, *,
               warn: Warn | None = None, subject_folder: str = "case") -> list[Case]:
    """All cases of a dataset; raises :class:`ConfigError` when none are found or a case's source and target are
    one file. ``warn`` hears, in one message per reader, which incomplete cases were skipped and why.
    ``subject_folder="parent"`` takes case folders' subject ids from their parent folders (see
    :func:`read_case_folders`)."""
    root = Path(root)
    layout = resolve_layout(root, layout, source, target, source_name, target_name)
    notes: list[str] = []
    cases = _read_layout(root, layout, source, target, source_name, target_name, notes.append, subject_folder)
    if not cases:
        raise ConfigError(" ".join([f"No {source} -> {target} cases found in {root} (layout {layout}).", *notes]),
                          "Check the folder, the layout and the source/target modality or file names.")
    _refuse_identity_pairs(cases, root, layout, source, target)
    for note in notes if warn is not None else ():
        warn(note)
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
