"""File names for ITK (SimpleITK) on Windows.

ITK opens files with narrow-character calls, which Windows reads in the system's ANSI code page: unless that
code page is UTF-8, a path with a character outside ASCII (a user folder ``C:\\Users\\José``) is "not found".
:func:`itk_path` hands ITK an ASCII spelling of such a path (the Windows short 8.3 names of its existing folders,
or the path relative to the working folder) and, where there is none, raises one clear error.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from MedTranslateLib.errors import InputError, MedTranslateError

UTF8_CODE_PAGE = 65001


@functools.lru_cache(maxsize=1)
def narrow_paths_lose_characters() -> bool:
    """True on Windows when the ANSI code page is not UTF-8 (ITK then cannot open non-ASCII paths)."""
    if os.name != "nt":
        return False
    try:
        import ctypes

        return int(ctypes.windll.kernel32.GetACP()) != UTF8_CODE_PAGE  # type: ignore[attr-defined]
    except (AttributeError, OSError):  # pragma: no cover - no way to ask: assume the worst
        return True


def short_path(path: str) -> str | None:
    """The Windows short (8.3) spelling of an existing path, or None."""
    try:
        import ctypes

        size = ctypes.windll.kernel32.GetShortPathNameW(path, None, 0)  # type: ignore[attr-defined]
        if not size:
            return None
        buffer = ctypes.create_unicode_buffer(size)
        ctypes.windll.kernel32.GetShortPathNameW(path, buffer, size)  # type: ignore[attr-defined]
        return buffer.value
    except (AttributeError, OSError):
        return None


def _ascii_spellings(text: str) -> list[str | None]:
    """Candidate spellings of ``text``: its deepest existing folder (or itself) in short names plus the rest of
    the path, then the path relative to the working folder."""
    path = Path(os.path.abspath(text))
    existing, rest = path, []
    while not existing.exists() and existing.parent != existing:
        existing, rest = existing.parent, [existing.name, *rest]
    short = short_path(str(existing))
    candidates = [os.path.join(short, *rest) if short else None]
    try:
        candidates.append(os.path.relpath(path))
    except ValueError:  # another drive
        pass
    return candidates


def itk_path(path: str | os.PathLike[str], error: type[MedTranslateError] = InputError) -> str:
    """``path`` as a string ITK can open: itself, except on a Windows whose code page loses its characters."""
    text = os.fspath(path)
    if text.isascii() or not narrow_paths_lose_characters():
        return text
    for candidate in _ascii_spellings(text):
        if candidate and candidate.isascii():
            return candidate
    raise error(f"'{text}' has characters outside ASCII, and SimpleITK cannot open such paths on this Windows "
                "system (its code page is not UTF-8).",
                "Use a folder and file name with only ASCII letters, or turn on 'Beta: Use Unicode UTF-8 for "
                "worldwide language support' (Windows settings > Region > Administrative) and restart.")
