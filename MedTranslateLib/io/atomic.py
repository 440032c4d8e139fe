"""Atomic output: write into a hidden temporary folder next to the target, then rename into place.

Nothing is left behind when the writer fails or the user cancels, and an existing output is only
replaced once the new one is complete.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from MedTranslateLib.errors import InputError, OutputError
from MedTranslateLib.io.headers import named_data_files
from MedTranslateLib.io.path_checks import check_name_length, staging_prefix
from MedTranslateLib.signals import signals_deferred

#: Suffixes written as a single image file (plus a companion data file for ``.mhd``/``.nhdr``).
FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Data files a ``.mhd``/``.nhdr`` header may point to (``a.mhd`` -> ``a.raw``).
COMPANION_SUFFIXES = (".raw", ".zraw", ".raw.gz")

#: Moves of the outputs written inside :func:`output_group` (None outside one).
_PENDING: contextvars.ContextVar[list[tuple[Callable[[], None], Callable[[], None]]] | None] = \
    contextvars.ContextVar("medtranslate_pending_outputs", default=None)


def find_volume(folder: str | os.PathLike, stem: str, suffixes: Iterable[str] = FILE_SUFFIXES) -> Path | None:
    """``folder/<stem><suffix>`` for the first of ``suffixes`` (volume formats) that exists, else None."""
    for suffix in suffixes:
        candidate = Path(folder) / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def files_below(root: str | os.PathLike) -> list[Path]:
    """Every file at any depth below ``root``, sorted, following linked folders (a dataset of links to case
    folders) but not a link back to a folder it is inside, which would loop. ``Path.rglob`` skips linked
    folders before Python 3.13. A folder that cannot be read is an :class:`InputError`, not a silent gap in the
    data."""
    found: list[Path] = []
    above: dict[str, frozenset[str]] = {}  # folder -> the real paths of it and of the folders above it
    for folder, folders, files in os.walk(os.path.normpath(os.fspath(root)), onerror=_unreadable_folder,
                                           followlinks=True):  # "ds/": "ds"
        real = os.path.realpath(folder)
        chain = above.get(os.path.dirname(folder), frozenset())
        if real in chain:
            folders[:] = []
            continue
        above[folder] = chain | {real}
        found.extend(Path(folder, name) for name in files)
    return sorted(p for p in found if p.is_file())


def _unreadable_folder(error: OSError) -> None:
    """``os.walk``'s error handler: stop with the folder and the reason instead of skipping it."""
    raise InputError(f"Cannot read the folder {error.filename}: {error.strerror or error}.",
                     "Give this user permission to read it, or move it out of the data folder.") from error


def full_suffix(path: str | os.PathLike) -> str:
    """The known image suffix of ``path`` (``.nii.gz`` counts as one), else its last suffix, lower case."""
    name = Path(path).name.lower()
    for suffix in FILE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def volume_stem(path: str | os.PathLike) -> str:
    """The file name without its volume suffix (``1PA001_mr.nii.gz`` -> ``1PA001_mr``); other names unchanged."""
    name = Path(path).name
    suffix = full_suffix(name)
    return name[: -len(suffix)] if suffix in FILE_SUFFIXES else name


def is_dicom_output(path: str | os.PathLike) -> bool:
    """True when ``path`` asks for a DICOM series folder: trailing separator, no suffix, ``.dcm`` or a folder."""
    text = os.fspath(path)
    if text.endswith(("/", os.sep)):
        return True
    suffix = full_suffix(text)
    if suffix in FILE_SUFFIXES:
        return False
    return suffix in ("", ".dcm") or Path(text).is_dir()


def dicom_output_folder(path: str | os.PathLike) -> Path:
    """The folder a DICOM output path stands for (``out.dcm`` -> ``out``)."""
    target = Path(os.fspath(path).rstrip("/" + os.sep) or os.fspath(path))
    if target.suffix.lower() == ".dcm" and not target.is_dir():
        target = target.with_suffix("")
    return target


def check_writable(path: str | os.PathLike) -> None:
    """Raise :class:`OutputError` unless ``path`` can be written (folder exists and is writable, type fits, no name
    longer than the file system allows)."""
    check_name_length(path, OutputError, reading=False)
    try:
        _check_writable(path)
    except OSError as exc:  # e.g. a folder on the way that may not be looked into
        raise OutputError(f"Cannot write '{path}': {exc.strerror or exc}.",
                          "Check the path and that you may write to its folder.") from None


def _check_writable(path: str | os.PathLike) -> None:
    dicom = is_dicom_output(path)
    target = dicom_output_folder(path) if dicom else Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not dicom and full_suffix(target) not in FILE_SUFFIXES:
        raise OutputError(
            f"Cannot write '{target}': unknown output format '{full_suffix(target)}'.",
            "Use .nii.gz, .nii, .nrrd, .nhdr, .mha or .mhd, or a folder path (ending in '/') for a DICOM series.",
        )
    suffix = target.name[len(target.name) - len(full_suffix(target)):]
    if not dicom and full_suffix(target) in (".nii", ".nii.gz") and suffix not in (suffix.lower(), suffix.upper()):
        raise OutputError(f"Cannot write '{target}': NIfTI readers refuse a mixed-case suffix ('{suffix}').",
                          f"End the name in '{suffix.lower()}' (or '{suffix.upper()}').")
    if not dicom and target.is_dir():
        raise OutputError(f"Cannot write '{target}': it is an existing folder, but a file is expected.",
                          "Choose a file name such as out.nii.gz, or end the path with '/' for a DICOM series.")
    if dicom and target.exists() and not target.is_dir():
        raise OutputError(f"Cannot write a DICOM series to '{target}': a file with that name exists.",
                          "Choose a new folder name for the DICOM series.")
    check_folder_writable(parent, f"'{target}'")
    if dicom and target.is_dir():
        _check_replaceable_folder(target)


def check_folder_writable(folder: Path, what: str) -> None:
    """Raise :class:`OutputError` (about writing ``what``) unless ``folder`` exists and is writable."""
    if not folder.is_dir():
        raise OutputError(f"Cannot write {what}: the folder '{folder}' does not exist.",
                          "Create the folder first or choose an existing one.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write {what}: the folder '{folder}' is not writable.",
                          "Choose a folder you have write permission for.")


def _check_replaceable_folder(folder: Path) -> None:
    """Only an empty folder or one holding nothing but ``.dcm`` files may be replaced by a DICOM series."""
    entries = list(folder.iterdir())
    foreign = [e.name for e in entries if not (e.is_file() and e.suffix.lower() == ".dcm")]
    if foreign:
        raise OutputError(
            f"Cannot write a DICOM series into '{folder}': the folder holds other files "
            f"(e.g. {', '.join(sorted(foreign)[:3])}) that would be replaced.",
            "Choose a new or empty folder for the DICOM series.",
        )


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are one file (the same path, a link to it, or a hard link)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inside(child: Path, folder: Path) -> bool:
    try:
        child.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a path that cannot be looked at (its reader then says why)."""
    try:
        return path.is_file()
    except OSError:
        return False


def companion_files(path: str | os.PathLike) -> list[Path]:
    """The data files a ``.mhd``/``.nhdr`` header may have next to it (none for other formats)."""
    path = Path(path)
    if full_suffix(path) not in (".mhd", ".nhdr"):
        return []
    return [path.parent / f"{volume_stem(path)}{companion}" for companion in COMPANION_SUFFIXES]


def ensure_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Raise :class:`OutputError` when writing ``output`` (or the data file of a ``.mhd``/``.nhdr`` output)
    would overwrite (or delete) one of ``inputs`` or their data files."""
    dicom = is_dicom_output(output)
    target = dicom_output_folder(output) if dicom else Path(output)
    written = [target] + ([] if dicom else companion_files(target))
    protected: list[Path] = []
    for item in inputs:
        path = Path(item)
        protected.append(path)
        if path.suffix.lower() == ".dcm" and _is_file(path):
            protected.append(path.parent)  # a .dcm input stands for its whole series folder
        protected.extend(companion_files(path))
        protected.extend(named_data_files(path))  # `ElementDataFile = other.raw` in input.mhd
    for path in protected:
        clash = any(same_file(out, path) for out in written) or (dicom and _inside(path, target))
        if clash:
            raise OutputError(f"Refusing to write '{target}': it would overwrite the input '{path}'.",
                              "Choose a different output path; inputs are never modified.")


@contextlib.contextmanager
def output_group() -> Iterator[None]:
    """Outputs written with :func:`atomic_output` inside this block are moved into place together when it ends
    without error; after any failure or interruption none of them is (a synthetic volume never appears without
    the uncertainty map that was asked for)."""
    pending: list[tuple[Callable[[], None], Callable[[], None]]] = []
    token = _PENDING.set(pending)
    try:
        yield
    except BaseException:
        for _, discard in pending:
            discard()
        raise
    finally:
        _PENDING.reset(token)
    with signals_deferred():  # a Ctrl-C now would leave a new volume beside an old uncertainty map
        for index, (commit, _) in enumerate(pending):
            try:
                commit()
            except BaseException:
                for _, discard in pending[index:]:
                    discard()
                raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, folder: bool | None = None) -> Iterator[Path]:
    """Yield a temporary path to write to; move it to ``path`` on success, remove it on any failure.

    File mode yields ``<hidden temp folder>/<same name>`` in the target's folder, so writers pick the format
    from the suffix and companion files (``.raw`` of ``.mhd``) keep the names their header refers to; every
    file written there is moved next to ``path``, companions first, ``path`` last (inside :func:`output_group`,
    when the group ends). Folder mode
    (``folder=True``, DICOM) yields an empty temporary folder that replaces ``path`` as a whole; by default
    the mode follows :func:`is_dicom_output` (no suffix or a trailing ``/`` means a folder).
    """
    if folder is None:
        folder = is_dicom_output(path)
    target = dicom_output_folder(path) if folder else Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        staging = Path(tempfile.mkdtemp(prefix=staging_prefix(target.name), suffix=".partial", dir=parent))
    except OSError as exc:
        raise OutputError(f"Cannot write '{target}': {exc.strerror or exc}.",
                          "Choose a folder that exists and that you can write to.") from exc

    def discard() -> None:
        shutil.rmtree(staging, ignore_errors=True)

    try:
        if folder:
            chmod_like_new(staging)  # mkdtemp's 0700 would hide a DICOM series from other users
            yield staging

            def commit() -> None:
                _replace_folder(staging, target)
        else:
            temp_path = staging / target.name
            yield temp_path
            if not temp_path.is_file():
                raise OutputError(f"Writing '{target}' produced no file.", "Check the output format and try again.")

            def commit() -> None:
                companions = [p for p in staging.iterdir() if p != temp_path]
                for item in companions + [temp_path]:
                    replace_file(item, parent / item.name)
                staging.rmdir()
        pending = _PENDING.get()
        if pending is None:
            with signals_deferred():
                commit()
        else:
            pending.append((commit, discard))
    except BaseException:
        discard()
        raise


#: Windows: a virus scanner, the search indexer or a sync client may hold a new file for a moment
RETRY_HELD_FILES = os.name == "nt"


def replace_file(source: str | os.PathLike, target: str | os.PathLike, tries: int = 10, pause: float = 0.1) -> None:
    """``os.replace``, retried for up to a second on Windows while another program briefly holds the file."""
    for attempt in range(tries):
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if not RETRY_HELD_FILES or attempt == tries - 1:
                raise
            time.sleep(pause)


def chmod_like_new(path: Path) -> None:
    """Give a ``mkstemp`` file or ``mkdtemp`` folder (private: 0600 / 0700) the permissions a plain ``open`` or
    ``mkdir`` would have (0666 / 0777 less the umask), so other users can read what is moved into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)


def _replace_folder(staging: Path, target: Path) -> None:
    """Put ``staging`` in place of ``target``; an existing DICOM-only target is swapped out then deleted."""
    if target.exists():
        _check_replaceable_folder(target)
    swap_into_place(staging, target)


class SwapError(OutputError):
    """:func:`swap_into_place` failed. ``reason``: the system's; ``earlier``: what became of the target that was to
    be replaced ("the earlier output is unchanged." or where it is kept; empty when it was never moved), so a caller
    can say it in its own words."""

    def __init__(self, target: Path, reason: str, earlier: str = "", fix: str = "") -> None:
        problem = f"Cannot put the output in place at '{target}': {reason}"
        super().__init__(f"{problem}; {earlier}" if earlier else f"{problem} (is another process writing it at the "
                                                                "same time?).", fix)
        self.reason, self.earlier = reason, earlier


def swap_into_place(staging: Path, target: Path, noun: str = "output") -> None:
    """Atomically move ``staging`` to ``target``; an existing ``target`` is moved aside first and deleted
    only once the new one is in place (restored if the move fails). Stop signals wait until it is done.
    :class:`SwapError` when it cannot (``noun`` names the target in what it says became of the earlier one)."""
    clash = "Run one process per output path, and check that the folder is writable."
    with signals_deferred():
        try:
            if not target.exists():
                replace_file(staging, target)
                return
            backup = Path(tempfile.mkdtemp(prefix=staging_prefix(target.name), suffix=".old", dir=target.parent))
            backup.rmdir()
            replace_file(target, backup)
        except OSError as exc:  # e.g. another process replaced or removed the target meanwhile
            raise SwapError(target, str(exc.strerror or exc), fix=clash) from exc
        try:
            replace_file(staging, target)
        except OSError as exc:
            reason = str(exc.strerror or exc)
            try:
                replace_file(backup, target)
            except OSError:
                raise SwapError(target, reason, f"the earlier {noun} is kept in '{backup}'.", clash) from exc
            raise SwapError(target, reason, f"the earlier {noun} is unchanged.", clash) from exc
        if backup.is_dir():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            backup.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text (line endings as given) through :func:`atomic_output`: moved into place when complete,
    together with the other outputs of an enclosing :func:`output_group`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, folder=False) as temp:
            with open(temp, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}.",
                          "Choose a folder you can write to, with free space.") from exc
