"""Check that a NIfTI file was written completely.

ITK's NIfTI writer reports a full disk on standard error but does not fail, leaving a truncated file that
SimpleITK even reads back; every other format raises. A complete file holds its header's ``vox_offset`` plus
every voxel: for ``.nii`` the file size says so, for ``.nii.gz`` the gzip trailer's ISIZE (the uncompressed
size modulo 2^32), with a full decompression only when the trailer disagrees.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

from MedTranslateLib.errors import OutputError

_CHUNK = 1 << 20


def _vox_offset(header: bytes) -> int:
    """The byte offset of the voxel data from a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        size = struct.unpack(order + "i", header[:4])[0]
        if size == 348:
            return int(struct.unpack(order + "f", header[108:112])[0])
        if size == 540:
            return int(struct.unpack(order + "q", header[168:176])[0])
    raise ValueError("not a NIfTI header")


def _gzip_total(path: Path) -> int:
    """Uncompressed size of a gzip file, reading it all (raises on a truncated or corrupt stream)."""
    total = 0
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            total += len(chunk)
    return total


def check_nifti_complete(path: str | os.PathLike, data_bytes: int, target: str | os.PathLike) -> None:
    """Raise :class:`OutputError` (naming ``target``) unless ``path`` holds a whole NIfTI image of
    ``data_bytes`` voxel bytes."""
    path = Path(path)
    compressed = path.name.lower().endswith(".gz")
    try:
        opener = gzip.open if compressed else open
        with opener(path, "rb") as stream:
            header = stream.read(544)
        expected = _vox_offset(header) + data_bytes
        if compressed:
            with open(path, "rb") as raw:
                raw.seek(-4, os.SEEK_END)
                stored = struct.unpack("<I", raw.read(4))[0]
            complete = stored == expected % (1 << 32) or _gzip_total(path) == expected
        else:
            complete = path.stat().st_size >= expected
    except (OSError, EOFError, ValueError, zlib.error, struct.error):
        complete = False
    if not complete:
        raise OutputError(f"Cannot write '{target}': the file came out incomplete (is the disk full?).",
                          "Free disk space or choose another folder, then run again.")
