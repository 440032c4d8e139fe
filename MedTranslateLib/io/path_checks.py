"""Names a file system cannot hold, and paths that cannot be looked at: one clear error (InputError or OutputError)
instead of ``OSError: [Errno 36] File name too long`` from the first ``Path.exists`` or ``Path.is_dir``.

Standard library only, so :mod:`MedTranslateLib.io.atomic` can use it before SimpleITK is imported."""

from __future__ import annotations

import os
from pathlib import Path

from MedTranslateLib.errors import InputError, MedTranslateError, OutputError

#: the longest name (one folder or file, bytes) of ext4, XFS, APFS and NTFS (UTF-16 units there)
DEFAULT_NAME_MAX = 255
#: what the hidden staging and backup names add to a target's name (``.<name>.<8 random>.partial``)
_STAGING_EXTRA = len("..12345678.partial")


def name_limit(path: str | os.PathLike) -> int:
    """The longest file name the file system of ``path`` (its nearest existing folder) allows."""
    folder = Path(os.path.abspath(path))
    while folder.parent != folder:
        try:
            if folder.is_dir():
                break
        except OSError:
            pass
        folder = folder.parent
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError, TypeError):  # no pathconf (Windows) or no answer
        return DEFAULT_NAME_MAX


def _name_length(name: str) -> int:
    return len(name) if os.name == "nt" else len(os.fsencode(name))


def _shown(name: str) -> str:
    return name if len(name) <= 60 else f"{name[:40]}...{name[-12:]}"


def check_name_length(path: str | os.PathLike, error: type[MedTranslateError], reading: bool) -> None:
    """Raise ``error`` when a name in ``path`` is longer than its file system allows."""
    limit = name_limit(path)
    for part in Path(path).parts:
        if _name_length(part) > limit:
            action = "read" if reading else "write"
            hint = ("Check the path: no file or folder name can be that long." if reading else
                    "Choose a shorter name (a batch names each output after its input, <input name>_synthetic"
                    ".nii.gz: shorten that input's file name).")
            raise error(f"Cannot {action} '{_shown(part)}': its name is {_name_length(part)} bytes long, more than "
                        f"the {limit} this file system allows (the name is too long).", hint)


def looked_up(path: str | os.PathLike, error: type[MedTranslateError] = InputError) -> bool:
    """``Path(path).exists()``, with a name that is too long, or a path that cannot be looked at (a folder on the
    way without permission), raised as one clear ``error`` instead of an OSError."""
    check_name_length(path, error, reading=error is not OutputError)
    try:
        return Path(path).exists()
    except OSError as exc:
        what = "read" if error is not OutputError else "write"
        raise error(f"Cannot {what} '{path}': {exc.strerror or exc}.",
                    "Check the path and that you may open the folders on the way to it.") from None


def staging_prefix(name: str) -> str:
    """The prefix of a hidden staging or backup name next to ``name``: ``.<name>.``, with ``name`` shortened so that
    the whole hidden name fits wherever ``name`` itself does."""
    room = DEFAULT_NAME_MAX - _STAGING_EXTRA
    while _name_length(name) > room:
        name = name[:-1]
    return f".{name}."
