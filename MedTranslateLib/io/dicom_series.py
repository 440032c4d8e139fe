"""The slices of one DICOM series: which of them form the volume (files of one SeriesInstanceUID may hold a scanner's
localizer or scout images in another orientation) and whether they are one regular 3D grid."""

from __future__ import annotations

from typing import Any

import numpy as np

from MedTranslateLib.errors import InputError


def _orientation_key(header: Any) -> tuple | None:
    """A slice's orientation (direction cosines to 1e-3) and size; None when its header gives no orientation."""
    try:
        orientation = tuple(round(float(v), 3) + 0.0 for v in header.ImageOrientationPatient)
    except (AttributeError, TypeError, ValueError):
        return None
    return orientation, getattr(header, "Rows", None), getattr(header, "Columns", None)


def keep_main_orientation(files: list[str], headers: list[Any], what: str) -> tuple[list[str], list[Any], list[str]]:
    """The files (and headers) of the series' main slice orientation and size, and a note naming what was left out
    when the series mixes several (localizer or scout images). Two groups of the largest size are ambiguous:
    :class:`InputError`."""
    groups: dict[tuple | None, list[int]] = {}
    for index, header in enumerate(headers):
        groups.setdefault(_orientation_key(header), []).append(index)
    if len(groups) < 2 or None in groups:
        return files, headers, []
    ordered = sorted(groups.values(), key=len, reverse=True)
    if len(ordered[0]) == len(ordered[1]):
        raise InputError(f"The {what} mixes slices of {len(groups)} orientations or sizes, {len(ordered[0])} slices "
                         "of each of the largest two, so it is not one 3D volume.",
                         "Export the series of one orientation (leave out localizer or scout images), or choose "
                         "another series of the folder with --series-uid.")
    keep = ordered[0]
    left = len(files) - len(keep)
    note = (f"The {what} mixes slice orientations or sizes: {left} slice(s) of another (a localizer or scout?) "
            f"were left out, and its {len(keep)} slices of the main orientation translated.")
    return [files[i] for i in keep], [headers[i] for i in keep], [note]


def check_slice_positions(headers: list[Any], what: str) -> None:
    """Refuse a series with missing, duplicate or unevenly spaced slices (ITK would only warn)."""
    if len(headers) < 3:
        return
    try:
        orientation = np.asarray([float(v) for v in headers[0].ImageOrientationPatient]).reshape(2, 3)
        positions = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in headers])
    except (AttributeError, TypeError, ValueError):
        return  # no per-slice geometry (e.g. multi-frame): nothing to check here
    normal = np.cross(orientation[0], orientation[1])
    along = positions @ normal
    order = np.argsort(along)
    span = positions[order[-1]] - positions[order[0]]
    sideways = np.linalg.norm(span - (span @ normal) * normal)
    if sideways > max(0.01 * np.linalg.norm(span), 1e-3):
        raise InputError(f"The {what} is sheared: its slices shift sideways by {sideways:.3g} mm across the "
                         "series (gantry tilt), which a 3D grid cannot represent.",
                         "Correct the gantry tilt (resample to an orthogonal grid) before translating.")
    steps = np.diff(along[order])
    typical = float(np.median(steps))
    if typical <= 1e-6 or np.max(np.abs(steps - typical)) > max(0.01 * typical, 1e-3):
        raise InputError(f"The {what} has missing, duplicate or unevenly spaced slices (slice gaps from "
                         f"{steps.min():.3g} to {steps.max():.3g} mm), so it is not one regular 3D volume.",
                         "Check that the series is complete (all files copied) or resample it to uniform spacing.")
