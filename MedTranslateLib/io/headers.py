"""The text headers of MetaImage (``.mha``/``.mhd``) and NRRD (``.nrrd``/``.nhdr``) files, and the data files they
name, read by one parser. Standard library only: :mod:`MedTranslateLib.io.atomic` protects an input's data files
with it and :mod:`MedTranslateLib.io.data_size` checks their sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: suffixes whose header is NRRD text (``key: value``); the other text headers are MetaImage (``Key = Value``)
NRRD_SUFFIXES = (".nrrd", ".nhdr")
TEXT_HEADER_SUFFIXES = (".mha", ".mhd", *NRRD_SUFFIXES)
#: the (lower-case) keys that name the data file, per format
_DATA_FILE_KEYS = {True: ("data file", "datafile"), False: ("elementdatafile",)}


@dataclass(frozen=True)
class TextHeader:
    """A parsed text header: ``values`` by lower-case key, ``length`` the bytes up to the data of a header that
    holds its own, ``data_file`` the data file entry as written (None when there is none), and ``listed`` the file
    names on the lines after a ``LIST`` entry."""

    path: Path
    values: dict[str, str]
    length: int
    data_file: str | None = None
    listed: tuple[str, ...] = ()

    @property
    def holds_its_data(self) -> bool:
        """True when the voxels follow the header in its own file (no data file entry, empty or ``LOCAL``)."""
        return not self.data_file or self.data_file.upper() == "LOCAL"

    @property
    def single_data_file(self) -> Path | None:
        """The one data file named (not a ``LIST`` or a ``%d`` pattern), relative to the header's folder."""
        if self.holds_its_data or self._is_list or "%" in str(self.data_file):
            return None
        return self.path.parent / str(self.data_file)

    @property
    def data_files(self) -> list[Path]:
        """Every data file named: one file, a ``%d`` pattern with min, max and step, or a LIST."""
        if self.holds_its_data:
            return []
        if self._is_list:
            names = list(self.listed)
        elif "%" in str(self.data_file):
            names = _pattern_names(str(self.data_file))
        else:
            names = [str(self.data_file)]
        return [self.path.parent / name for name in names]

    @property
    def _is_list(self) -> bool:
        return str(self.data_file).upper().startswith("LIST")


def _is_nrrd(path: Path) -> bool:
    return path.name.lower().endswith(NRRD_SUFFIXES)


def read_text_header(path: str | Path, limit: int = 65536) -> TextHeader:
    """Parse the MetaImage or NRRD text header of ``path`` (its first ``limit`` bytes). A MetaImage header ends at
    its ``ElementDataFile`` line, an NRRD header at its first empty line; raises OSError when unreadable."""
    path = Path(path)
    nrrd = _is_nrrd(path)
    with open(path, "rb") as handle:
        lines = handle.read(limit).split(b"\n")
    values: dict[str, str] = {}
    offset, data_file = 0, None
    for index, raw_line in enumerate(lines):
        offset += len(raw_line) + 1
        line = raw_line.decode("latin-1").strip()
        if nrrd and not line and values:
            break
        key, sep, value = line.partition(":" if nrrd else "=")
        if not sep or (nrrd and value.startswith("=")):  # NRRD's "key:=value" lines are not fields
            continue
        key, value = key.strip().lower(), value.strip()
        values[key] = value
        if key not in _DATA_FILE_KEYS[nrrd]:
            continue
        data_file = value
        if value.upper().startswith("LIST"):  # the file names fill the lines after it
            listed = (other.decode("latin-1").strip() for other in lines[index + 1:])
            return TextHeader(path, values, offset, value, tuple(entry for entry in listed if entry))
        if not nrrd:  # a MetaImage header ends here (its data follows); NRRD fields may come in any order
            break
    return TextHeader(path, values, offset, data_file)


def named_data_files(path: str | Path, limit: int = 65536) -> list[Path]:
    """The data files the header of ``path`` names, relative to the header's folder; none for a header holding its
    own data, for other formats, or for a file that cannot be read."""
    path = Path(path)
    try:
        if not path.name.lower().endswith(TEXT_HEADER_SUFFIXES) or not path.is_file():
            return []
        return read_text_header(path, limit).data_files
    except OSError:
        return []


def _pattern_names(value: str) -> list[str]:
    """The file names of ``<printf pattern> <min> <max> <step>`` (NRRD and MetaImage slice files)."""
    parts = value.split()
    try:
        first, last, step = (int(part) for part in parts[1:4])
        return [parts[0] % number for number in range(first, last + (1 if step > 0 else -1), step or 1)]
    except (ValueError, TypeError, IndexError):
        return []
