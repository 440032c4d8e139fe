"""Declared against actual pixel data of volume files, and the NaN / Inf voxels ITK's NIfTI reader hides.

Reading: a header that declares more voxel bytes than its (raw or deflated) data holds is refused before ITK
reads it (ITK zero-fills truncated data silently, and gigantic declared sizes exhaust memory). Writing: ITK's
NIfTI writer only prints an error when the disk fills up, so a written file is checked the same way before it
is kept. A gzip stream is checked from its ISIZE trailer first, and inflated in chunks only when that disagrees.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from MedTranslateLib.errors import InputError, OutputError
from MedTranslateLib.io.atomic import full_suffix
from MedTranslateLib.io.headers import read_text_header

MAX_DEFLATE_RATIO = 1100  # more than zlib's best ratio (about 1032): a larger declared size is a lie
GZIP_MAGIC = b"\x1f\x8b"


def gzipped_nifti(path: Path) -> bool:
    """True for a ``.nii.gz`` file whose bytes are gzip; one whose gzip encoding was undone on the way (a browser
    that kept the name) is a plain NIfTI, which ITK reads as such, and is checked as one."""
    if full_suffix(path) != ".nii.gz":
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == GZIP_MAGIC
    except OSError:
        return True  # its reader says why it cannot be read


def _data_file(path: Path, data_path: Path) -> tuple[Path, int]:
    """The data file a ``.mhd``/``.nhdr`` header names, and its size (InputError when it is missing)."""
    if not data_path.is_file():
        raise InputError(f"Cannot read '{path}': its data file '{data_path}' is missing.",
                         "Keep the header and its data file together in one folder.")
    return data_path, data_path.stat().st_size


def check_declared_bytes(path: Path, declared: int) -> None:
    """Refuse a header that declares more pixel data than its (raw or deflated) data can hold."""
    suffix = full_suffix(path)
    if suffix == ".nii.gz" and not gzipped_nifti(path):
        suffix = ".nii"
    data_bytes, compressed, data_path, length = path.stat().st_size, False, None, 0
    if suffix == ".nii.gz":
        compressed = True
    elif suffix == ".nii":
        data_bytes -= 348  # the NIfTI-1 header precedes the voxels
    elif suffix in (".mha", ".mhd", ".nrrd", ".nhdr"):
        header = read_text_header(path)
        length = header.length
        if suffix in (".mha", ".mhd"):
            compressed = header.values.get("compresseddata", "false").lower() == "true"
        else:
            encoding = header.values.get("encoding", "raw").lower()
            if encoding in ("txt", "text", "ascii", "bz2", "bzip2", "hex"):
                return
            compressed = encoding in ("gz", "gzip")
        if header.holds_its_data:
            data_bytes = path.stat().st_size - length
        elif header.single_data_file is None:  # a LIST or a pattern of slice files: not checked here
            return
        else:
            data_path, data_bytes = _data_file(path, header.single_data_file)
    capacity = data_bytes * MAX_DEFLATE_RATIO if compressed else data_bytes
    if declared <= capacity and compressed:  # ITK zero-fills a truncated stream silently: inflate to check
        stream_path = data_path if data_path is not None else path
        start = 0 if data_path is not None or suffix == ".nii.gz" else length
        wbits = 15 if suffix in (".mha", ".mhd") else 31
        if wbits == 31 and gzip_trailer_matches(stream_path, declared, nifti=suffix == ".nii.gz"):
            return
        inflated, complete = inflated_size(stream_path, start, wbits)
        if not complete or inflated < declared:
            raise InputError(f"Cannot read '{path}': its compressed data is truncated or corrupt (it inflates to "
                             f"{inflated:,} of the {declared:,} bytes its header declares).",
                             "Re-export or re-download the volume.")
    if declared > capacity:
        raise InputError(f"Cannot read '{path}': its header declares {declared:,} bytes of pixel data but the "
                         f"file holds only {max(data_bytes, 0):,} bytes{' (compressed)' if compressed else ''}; "
                         "the file is truncated or its header is corrupt (gigantic dimensions?).",
                         "Re-export or re-download the volume.")


def gzip_trailer_matches(path: Path, declared: int, nifti: bool) -> bool:
    """Fast completeness check of a single-member gzip stream: its trailer (ISIZE, the inflated size mod 2^32)
    equals the size the header implies (``declared`` pixel bytes, plus the NIfTI header and extensions up to
    ``vox_offset``). A truncated file ends in arbitrary bytes and fails this, as do multi-member streams, which
    then get the full inflating check. Saves one whole decompression of every large compressed volume."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", handle.read(4))[0]
        expected = declared
        if nifti:
            with gzip.open(path, "rb") as stream:
                head = stream.read(540)
            size_le = struct.unpack("<i", head[:4])[0]
            endian = "<" if size_le in (348, 540) else ">"
            if struct.unpack(endian + "i", head[:4])[0] == 348:
                offset = int(struct.unpack(endian + "f", head[108:112])[0])
            else:
                offset = int(struct.unpack(endian + "q", head[168:176])[0])
            expected += offset
    except (OSError, EOFError, struct.error, ValueError, zlib.error):
        return False
    return isize == expected % (1 << 32)


def inflated_size(path: Path, start: int, wbits: int) -> tuple[int, bool]:
    """Bytes a zlib (``wbits`` 15) or gzip (31, all members) stream from ``start`` inflates to, and whether
    it ends properly. Streams in chunks, so hostile files cannot exhaust memory."""
    total, inflater = 0, zlib.decompressobj(wbits)
    with open(path, "rb") as handle:
        handle.seek(start)
        chunk = handle.read(1 << 20)
        while chunk:
            try:
                while chunk and not inflater.eof:
                    total += len(inflater.decompress(chunk, 1 << 24))
                    chunk = inflater.unconsumed_tail
            except zlib.error:
                return total, False
            if inflater.eof:
                if wbits != 31:
                    return total, True
                rest = inflater.unused_data or handle.read(1 << 20)
                if not rest.strip(b"\0"):
                    return total, True
                inflater, chunk = zlib.decompressobj(wbits), rest
                continue
            chunk = handle.read(1 << 20)
    return total, inflater.eof


def check_written(path: str | os.PathLike, data_bytes: int, target: str | os.PathLike) -> None:
    """Raise :class:`OutputError` (naming ``target``) unless the freshly written ``path`` holds all
    ``data_bytes`` of its voxels."""
    try:
        check_declared_bytes(Path(path), data_bytes)
    except InputError:
        raise OutputError(f"Cannot write '{target}': the file came out incomplete (is the disk full?).",
                          "Free disk space or choose another folder, then run again.") from None


#: NIfTI datatype code -> numpy float type (the only types that can hold NaN or Inf).
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _file_bytes(path: Path, limit: int, chunk: int = 1 << 22) -> Iterator[bytes]:
    """The first ``limit`` (decompressed, for ``.nii.gz``: across gzip members) bytes of a file, in pieces of at most
    ``chunk`` bytes, so a stream that inflates to more than its header declares cannot exhaust memory. zlib
    directly, which inflates about 15 % faster than the ``gzip`` module."""
    gzipped = gzipped_nifti(path)
    with open(path, "rb") as handle:
        if not gzipped:
            while limit > 0 and (data := handle.read(min(chunk, limit))):
                limit -= len(data)
                yield data
            return
        inflater = zlib.decompressobj(31)
        while limit > 0 and (data := handle.read(chunk)):
            while data and limit > 0:
                piece = inflater.decompress(data, min(chunk, limit))
                limit -= len(piece)
                yield piece
                if inflater.eof:  # another gzip member may follow
                    data, inflater = inflater.unused_data, zlib.decompressobj(31)
                else:
                    data = inflater.unconsumed_tail


def _nifti_header(chunks: Iterator[bytes]) -> tuple[bytes, bool, str]:
    """The header bytes read so far (at least the whole NIfTI-1 or -2 header), whether it is NIfTI-1, and the
    byte order."""
    head = b""
    while len(head) < 348:
        head += next(chunks)
    endian = "<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">"
    nifti1 = struct.unpack(endian + "i", head[:4])[0] == 348
    while not nifti1 and len(head) < 540:
        head += next(chunks)
    return head, nifti1, endian


def nifti_bytes_per_voxel(path: Path) -> int | None:
    """The bytes one voxel takes in a NIfTI file (its ``bitpix``), None when the header cannot say. ITK reports a
    scaled integer file (``scl_slope``/``scl_inter``, e.g. int16 CT from dcm2niix) as float32, twice its size."""
    try:
        head, nifti1, endian = _nifti_header(_file_bytes(path, 544))
        bitpix = struct.unpack(endian + "h", head[72:74] if nifti1 else head[14:16])[0]
    except (OSError, StopIteration, struct.error, ValueError, zlib.error):
        return None
    return bitpix // 8 if bitpix >= 8 and bitpix % 8 == 0 else None


def read_nifti_float(path: Path, n_voxels: int) -> np.ndarray | None:
    """The voxels (x fastest, intensity scaling applied) of a float NIfTI file as a native-endian flat array, NaN and
    Inf kept; None for other data types or data ITK should report on (a short or unreadable stream).

    ITK's NIfTI reader replaces NaN and Inf by 0 without a word (a NaN block in an MR became bone in the synthetic
    CT), so float NIfTI voxels are read here, where the content checks see them. The offset and the intensity
    scaling follow niftilib and ITK: ``vox_offset`` at least the header size, a zero or non-finite ``scl_slope``
    is 1 and a non-finite ``scl_inter`` 0."""
    try:
        probe = _file_bytes(path, 544)
        head, nifti1, endian = _nifti_header(probe)
        datatype = struct.unpack(endian + "h", head[70:72] if nifti1 else head[12:14])[0]
        if datatype not in _NIFTI_FLOATS:
            return None
        if nifti1:
            offset = max(int(struct.unpack(endian + "f", head[108:112])[0]), 352)
            slope, inter = struct.unpack(endian + "2f", head[112:120])
        else:
            offset = max(int(struct.unpack(endian + "q", head[168:176])[0]), 544)
            slope, inter = struct.unpack(endian + "2d", head[176:192])
        voxels = np.empty(n_voxels, dtype=np.dtype(endian + _NIFTI_FLOATS[datatype]))
        target, got = memoryview(voxels).cast("B"), 0
        chunks = _file_bytes(path, offset + len(target))
        skipped = 0
        for piece in chunks:
            view = memoryview(piece)
            if skipped < offset:
                drop = min(offset - skipped, len(view))
                skipped, view = skipped + drop, view[drop:]
            target[got:got + len(view)] = view
            got += len(view)
        if got < len(target):
            return None
    except (OSError, StopIteration, struct.error, ValueError, zlib.error):
        return None
    voxels = voxels.astype(voxels.dtype.newbyteorder("="), copy=False)
    slope = slope if math.isfinite(slope) and slope != 0 else 1.0
    inter = inter if math.isfinite(inter) else 0.0
    if (slope, inter) != (1.0, 0.0):
        for start in range(0, voxels.size, 1 << 22):  # in double precision, as ITK does
            part = voxels[start:start + (1 << 22)]
            part[:] = part.astype(np.float64) * slope + inter
    return voxels


def non_finite_counts(values: np.ndarray, chunk: int = 1 << 22) -> tuple[int, int]:
    """(NaN, Inf) counts of a flat float array, in chunks (no full-size temporary)."""
    nan = inf = 0
    for start in range(0, values.size, chunk):
        part = values[start:start + chunk]
        finite = np.isfinite(part)
        if not finite.all():
            nan_here = int(np.isnan(part).sum())
            nan, inf = nan + nan_here, inf + int((~finite).sum()) - nan_here
    return nan, inf
