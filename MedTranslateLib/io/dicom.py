"""DICOM output: a synthetic volume as a derived CT or MR Image Storage series (pydicom).

Every series is marked ``DERIVED\\SECONDARY`` with "SYNTHETIC" in its description, keeps the source
study, patient and frame of reference when the source was DICOM, and references the source series.
SimpleITK images use LPS patient coordinates, like DICOM, so positions are written unchanged.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from MedTranslateLib.errors import OutputError
from MedTranslateLib.io.atomic import atomic_output

if TYPE_CHECKING:
    import SimpleITK as sitk

    from MedTranslateLib.io.source import SourceInfo

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_MR_NAMES = ("MR", "MRI", "T1", "T1W", "T2", "T2W", "FLAIR", "PD")
_INT16_LIMIT = 32767


def dicom_modality(modality: str) -> str:
    """``CT`` or ``MR`` for a target modality name; :class:`OutputError` for anything DICOM output cannot hold."""
    name = modality.strip().upper()
    if name in ("CT", "SCT", "CBCT"):
        return "CT"
    if name in _MR_NAMES or name.startswith(("MR", "T1", "T2", "FLAIR")):
        return "MR"
    raise OutputError(f"DICOM output is available for CT and MR volumes, not for '{modality}'.",
                      "Write this volume as .nii.gz, .nrrd or .mha instead.")


def _rescale(low: float, high: float, modality: str) -> tuple[float, float]:
    """(slope, intercept) for values from ``low`` to ``high``: HU with slope 1 for CT, a precision-keeping ramp for
    MR (and "OT", an uncertainty map)."""
    if modality == "CT":
        return 1.0, 0.0
    if high - low < 1e-12:  # every value is stored as 0
        return 1.0, low
    return (high - low) / (2 * _INT16_LIMIT), (high + low) / 2.0


def _stored(plane: np.ndarray, modality: str, slope: float, intercept: float) -> np.ndarray:
    """One slice's int16 stored values for :func:`_rescale`'s (slope, intercept), computed in float64."""
    values = plane.astype(np.float64)
    if modality == "CT":
        return np.clip(np.rint(values), -32768, _INT16_LIMIT).astype(np.int16)
    return np.clip(np.rint((values - intercept) / slope), -_INT16_LIMIT, _INT16_LIMIT).astype(np.int16)


def _ds_number(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) as precise as fits."""
    for digits in range(12, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6e}"[:16]


def _percentiles(array: np.ndarray, percents: tuple[float, ...]) -> np.ndarray:
    """``np.percentile(array.astype(np.float64), percents)`` (linear; NaN-free, one value or more, percents below
    100) to the last bit, without its float64 copy: the order statistics are selected in the array's own type (the
    cast keeps their order) and interpolated in float64 as numpy does."""
    flat = np.array(array).reshape(-1)  # a copy, for the partition
    positions = (flat.size - 1) * np.true_divide(percents, 100)
    below = np.floor(positions)
    index = below.astype(np.intp)
    above = np.minimum(index + 1, flat.size - 1)  # one value: itself
    flat.partition(np.unique(np.concatenate((index, above))))
    low, high = flat[index].astype(np.float64), flat[above].astype(np.float64)
    weight, step = positions - below, high - low
    return np.where(weight >= 0.5, high - step * (1 - weight), low + step * weight)


def _window(array: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "CT":
        return 40.0, 400.0
    low, high = _percentiles(array, (1, 99))
    return float((low + high) / 2), float(max(high - low, 1e-3))


def write_dicom_series(image: "sitk.Image", folder: str | os.PathLike, *, source: "SourceInfo | None" = None,
                       modality: str = "CT", description: str = "", provenance: dict | None = None,
                       uncertainty: bool = False) -> Path:
    """Write ``image`` as a DICOM series (one file per slice) into ``folder``, atomically.

    CT becomes CT Image Storage (int16 HU, slope 1, intercept 0); MR targets MR Image Storage with a linear
    rescale over the volume's range. An ``uncertainty`` map (a standard deviation in the target's units) gets its
    own series number and a window over its own values, not the CT window. Returns the folder.
    """
    import SimpleITK as sitk
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    kind = dicom_modality(modality)
    array = sitk.GetArrayViewFromImage(image)  # rescaled slice by slice: no float64 copy of the volume
    low, high = float(array.min()), float(array.max())
    if not (math.isfinite(low) and math.isfinite(high)):  # a NaN makes both NaN, an Inf is the minimum or maximum
        raise OutputError("Cannot write DICOM: the volume contains NaN or Inf values.",
                          "Check the translation result; write it as .nii.gz to inspect it.")
    # an uncertainty map of a CT keeps its fractions of a HU (whole HU would cut a 2 HU spread by up to 25 %)
    scale = "OT" if uncertainty else kind
    slope, intercept = _rescale(low, high, scale)
    center, width = _window(array, scale)
    spacing = image.GetSpacing()
    matrix = np.asarray(image.GetDirection(), float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), float)
    tags = dict(source.dicom_tags) if source is not None and source.is_dicom else {}
    references = list(source.referenced_instances) if source is not None and source.is_dicom else []
    model = (provenance or {}).get("model_id", "")
    label = description or f"SYNTHETIC {kind} (MedTranslate {model}) - not for clinical use".replace(" )", ")")
    if "SYNTHETIC" not in label.upper():
        label = f"SYNTHETIC {label}"
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    study_uid = tags.get("StudyInstanceUID") or generate_uid()
    frame_uid = tags.get("FrameOfReferenceUID") or generate_uid()
    series_uid = generate_uid()
    sop_class = CT_IMAGE_STORAGE if kind == "CT" else MR_IMAGE_STORAGE
    orientation = [float(v) for v in (*matrix[:, 0], *matrix[:, 1])]
    derivation = (f"{label}. Generated by MedTranslate"
                  + (f" model {model} {provenance.get('model_version', '')}" if provenance and model else "")
                  + (f" from series {tags.get('SeriesInstanceUID')}" if tags.get("SeriesInstanceUID") else "") + ".")
    comments = "SYNTHETIC - not for clinical use. " + json.dumps(provenance or {}, sort_keys=True, default=str)

    target = Path(folder)
    with atomic_output(target, folder=True) as temp:
        for k in range(array.shape[0]):
            ds = _slice_dataset(kind, sop_class, generate_uid(), label)
            ds.PatientID = tags.get("PatientID", "")
            ds.PatientName = tags.get("PatientName", "")
            ds.PatientBirthDate = tags.get("PatientBirthDate", "")
            ds.PatientSex = tags.get("PatientSex", "")
            ds.StudyInstanceUID = study_uid
            ds.StudyID = tags.get("StudyID", "")
            ds.StudyDate = tags.get("StudyDate", "") or date
            ds.StudyTime = tags.get("StudyTime", "") if tags.get("StudyDate") else time
            ds.AccessionNumber = tags.get("AccessionNumber", "")
            ds.ReferringPhysicianName = ""
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = 1002 if uncertainty else 1001
            ds.SeriesDate, ds.SeriesTime = date, time
            ds.ContentDate, ds.ContentTime = date, time
            ds.InstanceNumber = k + 1
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            ds.DerivationDescription = derivation[:1024]
            ds.ImageComments = comments[:10240]
            position = origin + matrix @ np.array([0.0, 0.0, k * spacing[2]])
            ds.ImagePositionPatient = [_ds_number(v) for v in position]
            ds.ImageOrientationPatient = [_ds_number(v) for v in orientation]
            ds.PixelSpacing = [_ds_number(spacing[1]), _ds_number(spacing[0])]
            ds.SliceThickness = _ds_number(spacing[2])
            ds.SpacingBetweenSlices = _ds_number(spacing[2])
            ds.SliceLocation = _ds_number(float(position @ np.cross(matrix[:, 0], matrix[:, 1])))
            ds.RescaleSlope, ds.RescaleIntercept = _ds_number(slope), _ds_number(intercept)
            if kind == "CT":
                ds.RescaleType = "HU"
            ds.WindowCenter, ds.WindowWidth = _ds_number(center), _ds_number(width)
            ds.Rows, ds.Columns = array.shape[1], array.shape[2]
            ds.PixelData = _stored(array[k], scale, slope, intercept).tobytes()
            _add_references(ds, tags.get("SeriesInstanceUID", ""), references, k, array.shape[0])
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            try:
                _save(ds, temp / f"IMG{k + 1:05d}.dcm")
            except OSError as exc:
                raise OutputError(f"Cannot write the DICOM series to '{target}': {_os_reason(exc)}.",
                                  "Check free disk space and permissions.") from exc
    return target


def _os_reason(exc: OSError) -> str:
    """Why a write failed: the system's message of the first OSError in the chain that has one (pydicom re-raises a
    failed write as a new OSError whose text holds a whole traceback), else the first line of the text."""
    error: BaseException | None = exc
    while error is not None:
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
        error = error.__cause__
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def _save(ds: Any, path: Path) -> None:
    """Write one file in the DICOM file format (preamble, file meta) with pydicom 3 or 2 (Slicer 5.8-5.10 ship
    pydicom 2.4, whose ``save_as`` lacks ``enforce_file_format``)."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


#: What a long series description loses first, in order: the program name, the model version, the source modality,
#: the long name of an uncertainty map, and last the model id in its brackets (never cut inside).
_SHORTENINGS = ((re.compile(r"\(MedTranslate (?=\S)"), "("), (re.compile(r" v?\d+(\.\d+)+\S*\)"), ")"),
                (re.compile(r" from [A-Za-z0-9]+ \("), " ("), (re.compile(r"^UNCERTAINTY \(std\) of "), "STD of "),
                (re.compile(r" \([^()]*\)(?= - not for clinical use$)"), ""))


def series_description(label: str, limit: int = 64) -> str:
    """``label`` within DICOM's 64 characters: without "MedTranslate", then the model version, then "from MR", then
    (an uncertainty map) "STD" for "UNCERTAINTY (std)", then the bracketed model id, while it is too long; a closing
    "- not for clinical use" always stays whole."""
    tail = " - not for clinical use"
    for pattern, replacement in _SHORTENINGS:
        if len(label) <= limit:
            break
        label = pattern.sub(replacement, label, count=1)
    if len(label) <= limit or not label.lower().endswith(tail):
        return label[:limit]
    return label[: -len(tail)][: limit - len(tail)].rstrip() + tail


def _slice_dataset(kind: str, sop_class: str, sop_instance: str, label: str):
    """The per-slice constant part of a derived CT/MR image."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Modality = kind
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if kind == "CT" else "OTHER"]
    ds.SeriesDescription = series_description(label)
    ds.Manufacturer = "MedTranslate"
    ds.ManufacturerModelName = "MedTranslate synthetic image"
    ds.SoftwareVersions = "MedTranslate"
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.AcquisitionNumber = 1
    if kind == "CT":
        ds.KVP = ""
    else:
        ds.ScanningSequence = "RM"  # research mode: no acquisition took place
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.EchoTime = ""
        ds.RepetitionTime = ""
        ds.EchoTrainLength = ""
    return ds


def _add_references(ds, source_series: str, references: list[tuple[str, str]], k: int, n_slices: int) -> None:
    """Reference the source series and, when slices correspond one to one, the source slice."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    if not source_series:
        return
    series_item = Dataset()
    series_item.SeriesInstanceUID = source_series
    ds.ReferencedSeriesSequence = Sequence([series_item])
    if len(references) == n_slices and all(references[k]):
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = references[k]
        ds.SourceImageSequence = Sequence([item])
