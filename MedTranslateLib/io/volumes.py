"""Reading, validating and writing volumes (NIfTI, NRRD, MetaImage and DICOM series).

Headers are checked before any pixel is read, so a broken or hostile file is refused quickly with an
:class:`~MedTranslateLib.errors.InputError` that says what is wrong and what to do.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from MedTranslateLib.errors import InputError, OutputError, plain_numbers
from MedTranslateLib.io.atomic import (
    FILE_SUFFIXES, atomic_output, check_writable, dicom_output_folder, full_suffix, is_dicom_output, volume_stem,
)
from MedTranslateLib.io.data_size import (check_declared_bytes, check_written, nifti_bytes_per_voxel, non_finite_counts,
                                        read_nifti_float)
from MedTranslateLib.io.dicom_series import check_slice_positions, keep_main_orientation
from MedTranslateLib.io.itk_messages import itk_reason, quiet_itk
from MedTranslateLib.io.itk_paths import itk_path
from MedTranslateLib.io.path_checks import looked_up
from MedTranslateLib.io.source import DICOM_TAGS, SourceInfo

#: Default limit on the number of voxels a volume may declare (2**31, about 8 GiB as float32).
MAX_VOXELS = 2**31
#: Largest integer magnitude float32 represents exactly.
FLOAT32_EXACT = 2**24
#: Magnitudes beyond this are not plausible intensities of any medical image.
ABSURD_MAGNITUDE = 1e9
READABLE = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) or a DICOM series folder"
_BYTES_PER_VOXEL = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
}
_INTEGER_TYPES = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32,
                  sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64}


# ----------------------------------------------------------------------------------------- checks
def _geometry_problems(dimension: int, components: int, size: tuple[int, ...], spacing: tuple[float, ...],
                       direction: tuple[float, ...], what: str, max_voxels: int) -> None:
    """Refuse shapes and geometry no translation can use (shared by header and in-memory checks)."""
    if dimension != 3:
        kind = "a 2D image" if dimension == 2 else f"a {dimension}D image"
        extra = " (e.g. a time series or several volumes in one file)" if dimension > 3 else ""
        raise InputError(f"The {what} is {kind}{extra}; MedTranslate needs one 3D volume.",
                         "Export a single 3D volume (one time point, all slices) and try again.")
    if components != 1:
        raise InputError(f"The {what} has {components} components per voxel (a vector or RGB image); "
                         "MedTranslate needs a scalar (grey-value) volume.",
                         "Convert it to a single-channel scalar volume first.")
    if any(n <= 0 for n in size):
        raise InputError(f"The {what} is empty: its size is {tuple(size)} (an axis has no voxels).",
                         "Check that the file holds the whole volume.")
    if any(n < 2 for n in size):
        raise InputError(f"The {what} has size {tuple(size)}: a single slice is a 2D image, not a 3D volume.",
                         "Use the complete 3D series.")
    voxels = math.prod(int(n) for n in size)
    if voxels > max_voxels:
        raise InputError(f"The {what} declares {tuple(size)} = {voxels:,} voxels, more than the limit of "
                         f"{max_voxels:,}; the header is probably corrupt or the volume is far too large.",
                         "Check the file, or crop/downsample the volume before translating it.")
    if any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise InputError(f"The {what} has invalid voxel spacing {tuple(spacing)}: spacing must be positive "
                         "and finite (zero, negative or NaN spacing).", "Fix the spacing in the file header.")
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-6:
        raise InputError(f"The {what} has a singular (degenerate) direction matrix {tuple(direction)}.",
                         "Fix the orientation (direction cosines) in the file header.")
    if np.max(np.abs(matrix.T @ matrix - np.eye(3))) > 1e-3:
        raise InputError(f"The {what} has a non-orthogonal direction matrix {tuple(round(d, 4) for d in direction)} "
                         "(sheared axes); MedTranslate needs orthonormal direction cosines.",
                         "Resample the volume onto an orthogonal grid first.")


def _content_problems(image: sitk.Image, what: str, pixel_id: int | None = None) -> None:
    """Refuse NaN/Inf, empty or constant volumes and intensities float32 or medicine cannot hold."""
    pixel_id = image.GetPixelID() if pixel_id is None else pixel_id
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    low, high = stats.GetMinimum(), stats.GetMaximum()
    if pixel_id not in _INTEGER_TYPES:
        n_nan, n_inf = non_finite_counts(sitk.GetArrayViewFromImage(image).reshape(-1))
        if n_nan or n_inf:
            raise InputError(f"The {what} contains {n_nan} NaN and {n_inf} Inf (infinite) voxels.",
                             "Replace the invalid voxels (e.g. by the background value) and try again.")
    if low == high:
        kind = "all zero (empty)" if low == 0 else f"constant (every voxel is {low:g})"
        raise InputError(f"The {what} is {kind}; there is no image content to work with.",
                         "Check that the right file was chosen and that it was exported correctly.")
    magnitude = max(abs(low), abs(high))
    if pixel_id in _INTEGER_TYPES and magnitude > FLOAT32_EXACT:
        raise InputError(f"The {what} holds integer values up to {magnitude:.0f} (range [{low:.0f}, {high:.0f}]), "
                         f"beyond 2**24 = {FLOAT32_EXACT}: they cannot be represented exactly in float32 and are "
                         "not plausible intensities.", "Rescale the intensities to a sensible range first.")
    if magnitude > ABSURD_MAGNITUDE:
        raise InputError(f"The {what} has an absurd intensity range [{low:g}, {high:g}] for a medical image.",
                         "Check the file (wrong data type or byte order?) and rescale the intensities.")


def validate_volume(image: sitk.Image, what: str = "input volume", max_voxels: int = MAX_VOXELS) -> None:
    """Raise :class:`InputError` unless ``image`` is a usable scalar 3D volume with finite, varying values."""
    _geometry_problems(image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize(),
                       image.GetSpacing(), image.GetDirection(), what, max_voxels)
    _content_problems(image, what)


# ------------------------------------------------------------------------------------------- read
def _unreadable(path: Path, exc: Exception | None = None, detail: str = "") -> InputError:
    reason = detail or (itk_reason(exc) if exc is not None else "")
    return InputError(f"Cannot read '{path}': the file is unreadable, truncated or not a valid "
                      f"{_format_name(path)} file" + (f" ({reason})." if reason else "."),
                      f"Check the file (re-export it if needed); readable formats: {READABLE}.")


#: ITK's ImageIO per suffix: set explicitly, since ITK recognises lower-case suffixes only ("x.MHA")
_IMAGE_IO = {".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO", ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO",
             ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}


def _format_name(path: Path) -> str:
    return {".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage",
            ".mhd": "MetaImage", ".dcm": "DICOM"}.get(full_suffix(path), "image")


def _read_file(path: Path, max_voxels: int, what: str) -> tuple[sitk.Image, int]:
    """Read one image file after checking its header; returns the image and its original pixel type. ``what``
    names the file in messages ("reference 'ct.nii.gz'")."""
    if full_suffix(path) not in FILE_SUFFIXES:
        raise InputError(f"Cannot read '{path}': unknown file type '{full_suffix(path) or '(none)'}'.",
                         f"Use {READABLE}.")
    if path.stat().st_size == 0:
        raise InputError(f"Cannot read '{path}': the file is empty (0 bytes).", "Re-export or re-download the volume.")
    reader = sitk.ImageFileReader()
    reader.SetFileName(itk_path(path))
    if full_suffix(path) in _IMAGE_IO:
        reader.SetImageIO(_IMAGE_IO[full_suffix(path)])
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(path, exc) from None
    _geometry_problems(reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize(),
                       reader.GetSpacing(), reader.GetDirection(), what, max_voxels)
    pixel_id = reader.GetPixelID()
    voxel_bytes = _BYTES_PER_VOXEL.get(pixel_id, 1)
    if full_suffix(path) in (".nii", ".nii.gz"):  # stored bytes, not the scaled type ITK reports
        voxel_bytes = nifti_bytes_per_voxel(path) or voxel_bytes
    declared = math.prod(reader.GetSize()) * voxel_bytes
    check_declared_bytes(path, declared)
    # ITK's NIfTI reader turns NaN and Inf into zeros: float NIfTI voxels are read here, NaN and Inf kept for the
    # content checks
    voxels = read_nifti_float(path, math.prod(reader.GetSize())) \
        if full_suffix(path) in (".nii", ".nii.gz") and pixel_id not in _INTEGER_TYPES else None
    if voxels is not None:
        image = sitk.GetImageFromArray(voxels.reshape(tuple(reader.GetSize())[::-1]))
        image.SetSpacing(reader.GetSpacing())
        image.SetOrigin(reader.GetOrigin())
        image.SetDirection(reader.GetDirection())
        return image, pixel_id
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _unreadable(path, exc) from None
    return image, pixel_id


def _dicom_series(folder: Path) -> dict[str, list[str]]:
    """Series UID -> file names (sorted by slice position) of every DICOM series in ``folder``."""
    try:
        name = itk_path(folder)
        with quiet_itk():  # no "WARNING: ... No Series were found" beside the error that says so
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(name)
    except RuntimeError as exc:
        raise InputError(f"Cannot scan '{folder}' for DICOM files ({itk_reason(exc)}).",
                         "Check that the folder is readable.") from None
    return {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(name, uid)) for uid in uids}


def _dicom_header(file_name: str) -> Any:
    """The file's data set without the pixels."""
    import pydicom

    return pydicom.dcmread(file_name, stop_before_pixels=True, force=True)


def _checked_dicom_header(file_name: str) -> Any:
    """:func:`_dicom_header`, refusing a file whose pixel data runs past its end (older GDCM reads such a file
    without error): pydicom stops at the pixel data element's start, whose tag and length are read here."""
    import struct

    import pydicom

    with open(file_name, "rb") as handle:
        header = pydicom.dcmread(handle, stop_before_pixels=True, force=True)
        start = handle.tell()
        element = handle.read(12)
    syntax = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "")
    if not syntax or syntax == "1.2.840.10008.1.2.2" or len(element) < 12 \
            or struct.unpack("<HH", element[:4]) != (0x7FE0, 0x0010):
        return header  # no pixel data here, or an encoding not checked (big endian, no file meta): nothing to say
    implicit = syntax == "1.2.840.10008.1.2"
    length_bytes, header_size = (element[4:8], 8) if implicit else (element[8:12], 12)
    length = struct.unpack("<I", length_bytes)[0]
    if length != 0xFFFFFFFF and start + header_size + length > os.path.getsize(file_name):
        raise _unreadable(Path(file_name), detail="the file ends before its pixel data does")
    return header


def _series_label(uid: str, files: list[str]) -> str:
    try:
        description = str(getattr(_dicom_header(files[0]), "SeriesDescription", "") or "no description")
    except Exception:  # noqa: BLE001 - a label only
        description = "unreadable header"
    return f"{uid} ({len(files)} files, {description})"


def _choose_series(path: Path, folder: Path, series: dict[str, list[str]],
                   series_uid: str | None) -> tuple[str, list[str]]:
    """The series to read (``series_uid``, the series of a given ``.dcm`` file, else the largest) and a note
    naming it when the folder holds several; two largest series of the same size are refused as ambiguous."""
    def available() -> str:
        return "; ".join(_series_label(uid, files) for uid, files in series.items())

    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"DICOM series '{series_uid}' is not in '{folder}'. Available series: {available()}.",
                             "Pass one of the listed series UIDs (or none to use the largest series).")
        return series_uid, []
    if path.is_file():  # a .dcm file means its own series
        uid = next((u for u, files in series.items() if any(Path(f).samefile(path) for f in files)), None)
        if uid is not None:
            return uid, []
    if len(series) == 1:
        return next(iter(series)), []
    largest = max(len(files) for files in series.values())
    tied = [uid for uid, files in series.items() if len(files) == largest]
    if len(tied) > 1:
        raise InputError(f"'{folder}' holds {len(series)} DICOM series and {len(tied)} of them have {largest} "
                         f"files: {available()}.", "Choose one with --series-uid.")
    uid = tied[0]
    return uid, [f"'{folder}' holds {len(series)} DICOM series; translating the largest, {_series_label(uid, series[uid])}. "
                 "Choose another with --series-uid."]


def _read_dicom(path: Path, series_uid: str | None, max_voxels: int) -> tuple[sitk.Image, int, SourceInfo]:
    folder = path if path.is_dir() else path.parent
    if path.is_dir() and not any(folder.iterdir()):
        raise InputError(f"The folder '{folder}' is empty.", f"Choose a folder holding a DICOM series, or a file: {READABLE}.")
    series = _dicom_series(folder)
    if not series:
        volumes = sorted(p.name for p in folder.iterdir() if full_suffix(p) in FILE_SUFFIXES and p.is_file())
        if volumes and path.is_dir():  # a folder of NIfTI files is no batch: its files are
            raise InputError(f"'{folder}' holds no DICOM series but {len(volumes)} volume file(s) ("
                             f"{', '.join(volumes[:3])}{', ...' if len(volumes) > 3 else ''}).", "Give the volume "
                             f"files as the inputs, one input each (e.g. {folder / volumes[0]}; several: -o FOLDER).")
        inner = next((p.parent for p in folder.rglob("*.dcm")), None) if path.is_dir() else None
        raise InputError(f"No DICOM series found in '{folder}'" + (f" (there are DICOM files in '{inner}')."
                                                                   if inner else "."),
                         "Give the folder that holds the DICOM files themselves (sub-folders are not searched), "
                         f"or a volume file: {READABLE}.")
    uid, notes = _choose_series(path, folder, series, series_uid)
    files = series[uid]
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        first.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(Path(files[0]), exc) from None
    size = first.GetSize()
    what = f"DICOM series {uid}"
    declared_size = (size[0], size[1], len(files) if len(files) > 1 else (size[2] if len(size) > 2 else 1))
    _geometry_problems(3, first.GetNumberOfComponents(), declared_size, (1.0, 1.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1),
                       what, max_voxels)
    headers = []
    for name in files:
        try:
            headers.append(_checked_dicom_header(name))
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
            raise _unreadable(Path(name), detail=str(exc)[:200]) from None
    files, headers, left_out = keep_main_orientation(files, headers, what)  # scouts stored in the series
    check_slice_positions(headers, what)
    notes = notes + left_out
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    if first.GetPixelID() == sitk.sitkFloat64:  # a rescale slope: read as the float32 it becomes, not a float64 copy
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _unreadable(folder, exc) from None
    tags = {name: str(getattr(headers[0], name, "") or "") for name in DICOM_TAGS}
    instances = [(str(getattr(h, "SOPClassUID", "")), str(getattr(h, "SOPInstanceUID", ""))) for h in headers]
    return image, image.GetPixelID(), SourceInfo(str(folder), "dicom", tags, instances, notes)


def _read_any(path: str | os.PathLike, series_uid: str | None, max_voxels: int, what: str,
              check_content: bool) -> tuple[sitk.Image, SourceInfo]:
    """The checked image in the pixel type it was read in."""
    source = Path(path)
    if not looked_up(source):  # a name too long for the file system: InputError, not OSError
        raise InputError(f"Cannot read '{source}': no such file or folder.", "Check the path and try again.")
    if source.is_dir() or full_suffix(source) == ".dcm":
        image, pixel_id, info = _read_dicom(source, series_uid, max_voxels)
    else:
        image, pixel_id = _read_file(source, max_voxels, what)
        info = SourceInfo(str(source), _format_name(source).lower())
    _geometry_problems(image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize(),
                       image.GetSpacing(), image.GetDirection(), what, max_voxels)
    if check_content:
        _content_problems(image, what, pixel_id)
    return image, info


def _float32(image: sitk.Image) -> sitk.Image:
    """``image`` as float32 (itself if it is: a cast would copy it)."""
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


def read_volume(path: str | os.PathLike, series_uid: str | None = None,
                max_voxels: int = MAX_VOXELS, role: str = "input volume") -> tuple[sitk.Image, SourceInfo]:
    """Read and validate a scalar 3D volume as float32 with its geometry unchanged.

    ``path`` is a NIfTI/NRRD/MetaImage file, a DICOM folder or a ``.dcm`` file (its series). In a folder the
    series with most files is used unless ``series_uid`` names another. ``role`` names the volume in messages
    ("The reference 'ct.nii.gz' ..."). Raises :class:`InputError`.
    """
    image, info = _read_any(path, series_uid, max_voxels, f"{role} '{Path(path).name}'", check_content=True)
    return _float32(image), info


#: grids agreeing to this fraction (of the larger of 1 and the largest value: mm, direction cosines) are one grid
GRID_TOLERANCE = 1e-4
#: A mask or label map has at most this many different values; more is an image given as the mask.
MAX_MASK_LABELS = 256


def grid_differences(image: sitk.Image, reference: sitk.Image, tolerance: float = GRID_TOLERANCE) -> list[str]:
    """How ``image``'s grid differs from ``reference``'s ("size (...) vs (...)", "origin ... vs ..."); [] when
    size, spacing, origin and direction agree up to header round-off (``tolerance``, relative)."""
    differences = []
    if image.GetSize() != reference.GetSize():
        differences.append(f"size {image.GetSize()} vs {reference.GetSize()}")
    for name in ("Spacing", "Origin", "Direction"):
        mine = np.asarray(getattr(image, f"Get{name}")(), float)
        theirs = np.asarray(getattr(reference, f"Get{name}")(), float)
        scale = max(1.0, float(np.max(np.abs(theirs))))
        if mine.shape != theirs.shape or np.max(np.abs(mine - theirs)) > tolerance * scale:
            differences.append(f"{name.lower()} {plain_numbers(mine)} vs {plain_numbers(theirs)}")
    return differences


def _distinct_values(values: np.ndarray, high: float) -> int:
    """How many different whole values of 0 or more ``values`` holds (a count per value when they are small)."""
    if high <= 1:
        return int(high) + 1
    if high >= 2 ** 24:
        return int(np.unique(values).size)
    seen = np.zeros(int(high) + 1, bool)
    for start in range(0, values.shape[0], 8):  # counted a slab at a time: no whole-volume int64 copy
        seen[np.bincount(values[start:start + 8].astype(np.int64).ravel()).nonzero()[0]] = True
    return int(np.count_nonzero(seen))


def read_mask(path: str | os.PathLike, reference: sitk.Image, tolerance: float = GRID_TOLERANCE) -> sitk.Image:
    """Read a mask as uint8 0/1 on exactly ``reference``'s grid; refuse other grids, empty masks and images
    (negative, fractional or more than ``MAX_MASK_LABELS`` different values)."""
    image, _ = _read_any(path, None, MAX_VOXELS, f"mask '{Path(path).name}'", check_content=False)
    differences = grid_differences(image, reference, tolerance)
    if differences:
        raise InputError(f"The mask '{Path(path).name}' is not on the volume's grid (ITK's LPS coordinates, mm): "
                         + "; ".join(differences) + ".",
                         "Resample the mask onto the input volume (nearest neighbour) or use the matching mask.")
    if image.GetPixelID() in _INTEGER_TYPES:  # whole and finite already: neither cast, cleaned nor rounded
        values = sitk.GetArrayViewFromImage(image)
        whole = True
    else:
        values = sitk.GetArrayFromImage(_float32(image))
        values[~np.isfinite(values)] = 0  # NaN / Inf outside a mask mean outside (as ITK's NIfTI reader made them)
        whole = np.array_equal(values, np.round(values))
    low, high = float(values.min()), float(values.max())
    if low < 0 or not whole:
        raise InputError(f"The mask '{Path(path).name}' holds values other than whole numbers of 0 or more "
                         f"(range {low:g} to {high:g}): it looks like a probability map or an image, not a mask.",
                         "Give a mask that is 0 outside the body and 1 (or a label number) inside, e.g. a "
                         "probability map thresholded at 0.5.")
    labels = _distinct_values(values, high)
    if labels > MAX_MASK_LABELS:
        raise InputError(f"The mask '{Path(path).name}' holds {labels:,} different values (range {low:g} to "
                         f"{high:g}): it looks like an image (a scan), not a mask or label map.",
                         "Give the mask (0 outside the body, 1 or a label number inside), not an image volume.")
    binary = values != 0
    if not binary.any():
        raise InputError(f"The mask '{Path(path).name}' is empty (no voxel is set).",
                         "Use a mask that covers the body, or run without a mask.")
    mask = sitk.GetImageFromArray(binary.astype(np.uint8))
    mask.CopyInformation(reference)
    return mask


# ------------------------------------------------------------------------------------------ write
def _provenance_text(provenance: dict | None, description: str) -> str:
    record = {"SYNTHETIC": True, "description": description, **(provenance or {})}
    return json.dumps(record, sort_keys=True, default=str, separators=(",", ":"))


def _nifti_note(provenance: dict) -> str:
    """The provenance in NIfTI's 79 usable characters: id, version and the checksum's first 12 characters (an
    ensemble's ids and versions joined by "+" and its checksums by ","; checksums shortened to 6 characters, then
    the note cut, when they do not fit)."""
    sums = [part for part in str(provenance.get("model_sha256", "")).split(",") if part]
    for length in (12, 6):
        sha = ",".join(part[:length] for part in sums)
        note = " ".join(str(v) for v in ("SYNTHETIC MedTranslate", provenance.get("model_id", ""),
                                         provenance.get("model_version", ""), sha and f"sha256:{sha}") if v)
        if len(note) <= 79:
            break
    return note[:79]


def write_volume(image: sitk.Image, path: str | os.PathLike, *, source: SourceInfo | None = None,
                 modality: str = "CT", description: str = "", provenance: dict | None = None,
                 uncertainty: bool = False) -> Path:
    """Write ``image`` atomically with its exact geometry; the suffix picks the format.

    ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd`` write one file (plus its data file); a path
    without suffix or ending in ``/`` a DICOM series folder (:mod:`.dicom`). File formats carry ``provenance`` and
    the description (marked SYNTHETIC) in their header. Returns the path; :class:`OutputError` if it cannot be written.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise OutputError(f"Cannot write a {image.GetDimension()}D image with "
                          f"{image.GetNumberOfComponentsPerPixel()} components as a volume.",
                          "Only scalar 3D volumes can be written.")
    check_writable(path)
    if is_dicom_output(path):
        from MedTranslateLib.io.dicom import write_dicom_series

        return write_dicom_series(image, dicom_output_folder(path), source=source, modality=modality,
                                  description=description, provenance=provenance, uncertainty=uncertainty)
    target = Path(path)
    # a copy whose metadata is its own: SimpleITK (2.5) shares a copy's metadata until a write makes the copy
    # unique, and EraseMetaData is no such write, so erasing the tags of a plain copy erased the caller's
    output = sitk.Image(image)
    output.SetMetaData("ITK_FileNotes", "")
    for key in output.GetMetaDataKeys():
        output.EraseMetaData(key)
    label = description or f"SYNTHETIC {modality} (MedTranslate)"
    if "SYNTHETIC" not in label.upper():
        label = f"SYNTHETIC {label}"
    nifti = full_suffix(target) in (".nii", ".nii.gz")
    if provenance is not None or description:
        info = provenance or {}
        if nifti:  # NIfTI only has the 80-character 'descrip' field
            output.SetMetaData("ITK_FileNotes", _nifti_note(info))
        else:
            output.SetMetaData("ITK_FileNotes", label)
            output.SetMetaData("MedTranslate_Provenance", _provenance_text(provenance, label))
            output.SetMetaData("MedTranslate_Modality", modality)
            for key, value in info.items():
                if re.fullmatch(r"[A-Za-z0-9_]+", str(key)):
                    output.SetMetaData(f"MedTranslate_{key}", " ".join(str(value).split()))
    compress = full_suffix(target) in (".nii.gz", ".nrrd", ".mha")
    with atomic_output(target) as temp:
        # ITK picks the writer from a lower-case suffix only ("x.NII.GZ" fails) and its NIfTI writer cuts a name at an
        # inner .nii/.img/.hdr ("a.nii.gz.nii.gz" -> "a.nii.gz"): write a plain name, then rename
        lower = temp.with_name(("volume" if nifti else volume_stem(temp.name)) + full_suffix(temp))
        try:
            sitk.WriteImage(output, itk_path(lower, OutputError), compress)
            if lower != temp:
                os.replace(lower, temp)
        except RuntimeError as exc:
            raise OutputError(f"Cannot write '{target}' ({itk_reason(exc).replace(str(lower), str(target))}).",
                              "Check free disk space and permissions, or choose another format.") from None
        if nifti:  # ITK's NIfTI writer does not fail on a full disk
            check_written(temp, output.GetNumberOfPixels() * output.GetSizeOfPixelComponent(), target)
    return target
