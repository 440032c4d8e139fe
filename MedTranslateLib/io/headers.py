"""The text headers of MetaImage (``.mha``/``.mhd``) and NRRD (``.nrrd``/``.nhdr``) files, and the data files they
name. Standard library only: :mod:`MedTranslateLib.io.atomic` protects an input's data files with it."""

from __future__ import annotations

from pathlib import Path

#: suffixes whose header is NRRD text (``key: value``); the other text headers are MetaImage (``Key = Value``)
NRRD_SUFFIXES = (".nrrd", ".nhdr")
TEXT_HEADER_SUFFIXES = (".mha", ".mhd", *NRRD_SUFFIXES)


def _is_nrrd(path: Path) -> bool:
    return path.name.lower().endswith(NRRD_SUFFIXES)


def text_header(path: Path, limit: int = 65536) -> tuple[dict[str, str], int]:
    """Key/value pairs of a MetaImage or NRRD text header and its length in bytes."""
    with open(path, "rb") as handle:
        head = handle.read(limit)
    values: dict[str, str] = {}
    offset = 0
    for raw_line in head.split(b"\n"):
        offset += len(raw_line) + 1
        line = raw_line.decode("latin-1").strip()
        if _is_nrrd(path):
            if not line and values:
                break
            key, sep, value = line.partition(":")
            if sep and not value.startswith("="):
                values[key.strip().lower()] = value.strip()
        else:
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                break
    return values, offset


def named_data_files(path: str | Path, limit: int = 65536) -> list[Path]:
    """The data files the header of ``path`` names (one file, a ``%d`` pattern with min, max and step, or a LIST
    of files on the lines after it), relative to the header's folder; none for a header holding its own data, for
    other formats, or for a file that cannot be read."""
    path = Path(path)
    if not path.name.lower().endswith(TEXT_HEADER_SUFFIXES) or not path.is_file():
        return []
    try:
        with open(path, "rb") as handle:
            lines = handle.read(limit).decode("latin-1").splitlines()
    except OSError:
        return []
    keys = ("data file", "datafile") if _is_nrrd(path) else ("elementdatafile",)
    separator = ":" if _is_nrrd(path) else "="
    for index, line in enumerate(lines):
        key, sep, value = line.partition(separator)
        if not sep or key.strip().lower() not in keys:
            continue
        value = value.strip()
        if not value or value.upper() == "LOCAL":
            return []
        if value.upper().startswith("LIST"):
            names = [entry.strip() for entry in lines[index + 1:] if entry.strip()]
        elif "%" in value:
            names = _pattern_names(value)
        else:
            names = [value]
        return [path.parent / name for name in names]
    return []


def _pattern_names(value: str) -> list[str]:
    """The file names of ``<printf pattern> <min> <max> <step>`` (NRRD and MetaImage slice files)."""
    parts = value.split()
    try:
        first, last, step = (int(part) for part in parts[1:4])
        return [parts[0] % number for number in range(first, last + (1 if step > 0 else -1), step or 1)]
    except (ValueError, TypeError, IndexError):
        return []
