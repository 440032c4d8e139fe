"""Reference-free out-of-distribution warnings: is this input like the data the model was trained on?

``intensity_reference`` summarises the training inputs for the model card field ``intensity_reference``:
intensity percentiles inside the body mask in RAW units of the input (HU for CT/CBCT, scanner units for
MR; raw because the check runs on the raw input before normalisation), the body's extent in mm
(bounding box of the mask, x y z) and the voxel spacing in mm (x y z). ``check_input`` compares an
input with it and returns :class:`OodWarning` objects written for a radiologist.

It also stores ``relative_percentiles``: the same percentiles after a per-volume robust
standardisation ``(x - median) / IQR`` inside the mask. Models whose input normalisation is
``percentile`` or ``zscore`` (MR: arbitrary scanner units) are checked on these, so a global gain or
offset that normalisation removes anyway is not reported, while a different contrast is (the 99th
percentile too: the bright tail is what tells FLAIR or T2 from T1); models with ``clip`` normalisation
(CT, CBCT in HU) are checked in raw units.

Training inputs are summarised inside the automatic body mask (``preprocess.automatic_body``), the one
translate uses when no mask is given, even when the data set has its own masks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from MedTranslateLib.errors import InputError

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
CHECK_VOXELS = 4_000_000  # larger inputs are checked on an in-plane strided subsample of about this many voxels
INTENSITY_WARN = 0.15   # shift of a percentile, as a fraction of the training p1..p99 range
INTENSITY_SEVERE = 0.35
RELATIVE_WARN = 0.3     # the same for MR-style (median / IQR standardised) comparisons
RELATIVE_SEVERE = 0.5
# MR (relative units): a shift of the 99th percentile by this many interquartile ranges. Measured on the BraTS
# data (16 volumes) against the T1 models' reference: T1 (native) 0.00-0.36, FLAIR 0.61-1.48, T2 2.14-4.40,
# T1 post-contrast 0.15-2.29, the pork T2 phantom 2.97-3.81; p5 / p50 / p95 alone missed every FLAIR.
TAIL_WARN = 0.5
TAIL_SEVERE = 1.5
EXTENT_RATIO = 1.5       # field of view this many times larger or smaller than training
SPACING_RATIO = 2.0      # voxel size this many times larger or smaller than training
SLICE_ROBUST_Z = 6.0     # a slice is an outlier beyond this many robust SDs of the volume's slices
SLICE_MIN_SHIFT = 0.10   # ... and when its statistics move by >= this fraction of the training range
SLICE_WINDOW = 9         # neighbourhood (slices) of the running median a slice is compared with
SLICE_MIN_AREA = 0.25    # slices with less body than this fraction of the median slice are skipped
AXIS_NAMES = ("left-right (x)", "front-back (y)", "head-foot (z)")


@dataclass(frozen=True)
class OodWarning:
    """One warning: ``severity`` is "info", "warning" or "severe"; ``slices`` an inclusive z range."""

    message: str
    severity: str = "warning"
    kind: str = "intensity"
    slices: tuple[int, int] | None = None
    region: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _body_extent_mm(mask: np.ndarray, spacing_xyz: Sequence[float]) -> list[float]:
    """Extent (x, y, z) in mm of the bounding box of the mask (arrays are z, y, x)."""
    coords = np.nonzero(mask)
    extent_zyx = [(int(c.max()) - int(c.min()) + 1) for c in coords]
    return [float(n * s) for n, s in zip(extent_zyx[::-1], spacing_xyz)]


def _mask_of(array: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    m = np.ones(array.shape, bool) if mask is None else np.asarray(mask) > 0
    if m.shape != array.shape or not m.any():
        raise InputError("The body mask is empty or does not match the image.", "Use the image's own body mask.")
    return m


def intensity_reference(arrays: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                        spacing_xyz: Sequence[float] | Sequence[Sequence[float]]) -> dict[str, Any]:
    """Training-input statistics for the model card (raw units, in-mask percentiles, extent, spacing).

    ``spacing_xyz`` is one (x, y, z) spacing for all arrays or one per array. Percentiles pool the
    in-mask voxels of all arrays; extent and spacing are per-axis medians over the arrays.
    """
    if not arrays or len(arrays) != len(masks):
        raise InputError("Give one mask (or None) per training array.", "Pass matching lists.")
    spacings = np.asarray(spacing_xyz, dtype=float)
    spacings = np.broadcast_to(spacings, (len(arrays), 3)) if spacings.ndim == 1 else spacings
    values, relative, extents = [], [], []
    for array, mask, spacing in zip(arrays, masks, spacings):
        m = _mask_of(array, mask)
        values.append(np.asarray(array, dtype=np.float32)[m])
        relative.append(_standardise(values[-1]))
        extents.append(_body_extent_mm(m, spacing))
    pct = np.percentile(np.concatenate(values), PERCENTILES)
    rel = np.percentile(np.concatenate(relative), PERCENTILES)
    return {
        "percentiles": {f"p{p}": float(v) for p, v in zip(PERCENTILES, pct)},
        "relative_percentiles": {f"p{p}": float(v) for p, v in zip(PERCENTILES, rel)},
        "extent_mm": [float(v) for v in np.median(extents, axis=0)],
        "spacing_mm": [float(v) for v in np.median(spacings, axis=0)],
        "units": "raw (percentiles); per-volume (x - median) / IQR (relative_percentiles)",
    }


def _standardise(values: np.ndarray) -> np.ndarray:
    """``(x - median) / IQR``: removes a scanner's gain and offset, keeps the contrast's shape."""
    q25, q50, q75 = np.percentile(values, (25, 50, 75))
    iqr = float(q75 - q25)
    return (values - q50) / (iqr if iqr > 0 else 1.0)  # no absolute floor: units may be tiny (an MR in 1e-9)


def _card_get(card: Any, key: str) -> Any:
    if card is None:
        return None
    if isinstance(card, dict):
        return card.get(key)
    value = getattr(card, key, None)
    data = getattr(card, "data", None)
    if value is None and isinstance(data, dict):
        value = data.get(key)
    return value


def _uses_relative_units(card: Any) -> bool:
    """True when the model normalises each input by its own statistics (percentile / zscore)."""
    normalization = _card_get(card, "normalization") or {}
    spec = normalization.get("input", {}) if isinstance(normalization, dict) else {}
    return isinstance(spec, dict) and spec.get("method") in ("percentile", "zscore")


def _slice_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (first, last) index ranges of consecutive True values."""
    runs, start = [], None
    for i, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def _check_intensity(values: np.ndarray, pct_ref: dict[str, float], scale: float,
                     relative: bool = False) -> list[OodWarning]:
    keys = [k for k in ("p5", "p50", "p95") if k in pct_ref]
    if not keys:
        return []
    tail = relative and "p99" in pct_ref  # MR: the bright tail tells contrasts apart (lesions, CSF, fat)
    shown = keys + ["p99"] if tail else keys
    now = dict(zip(shown, (float(v) for v in np.percentile(values, [float(k[1:]) for k in shown]))))
    warn, severe = (RELATIVE_WARN, RELATIVE_SEVERE) if relative else (INTENSITY_WARN, INTENSITY_SEVERE)
    # the worst shift in units of the warning threshold: >= 1 warns
    worst = max(abs(now[k] - pct_ref[k]) / scale for k in keys) / warn
    worst_severe = worst * warn / severe
    if tail:
        tail_shift = abs(now["p99"] - pct_ref["p99"])
        worst, worst_severe = max(worst, tail_shift / TAIL_WARN), max(worst_severe, tail_shift / TAIL_SEVERE)
    if worst < 1:
        return []
    severity = "severe" if worst_severe >= 1 else "warning"
    if relative:
        detail = ", ".join(f"{k[1:]}th percentile {now[k]:+.2f} (training {pct_ref[k]:+.2f})" for k in shown)
        message = (f"The contrast inside the body is unlike the training scans (intensities in interquartile "
                   f"ranges from the median: {detail}). The scan may be a different MR contrast or sequence "
                   "than the model was trained for (for example T2 or FLAIR instead of T1); review the result "
                   "with care.")
    else:
        centre = "p50" if "p50" in now else keys[0]
        direction = "brighter" if now[centre] > pct_ref[centre] else "darker"
        detail = ", ".join(f"{k[1:]}th percentile {now[k]:.0f} (training {pct_ref[k]:.0f})" for k in keys)
        message = (f"Intensities inside the body are unlike the training scans (overall {direction}): {detail}. "
                   "The scan may be a different modality, contrast, scanner or calibration than the model was "
                   "trained for; review the synthetic image with care.")
    return [OodWarning(message=message, severity=severity, kind="intensity", region="whole volume")]


def _check_slices(array: np.ndarray, m: np.ndarray, scale: float) -> list[OodWarning]:
    nz = array.shape[0]
    if nz < 5:
        return []
    from scipy.ndimage import median_filter

    areas = m.reshape(nz, -1).sum(axis=1)
    min_area = max(10, SLICE_MIN_AREA * float(np.median(areas[areas > 0]))) if areas.any() else 10
    ok = areas >= min_area  # slices that only graze the body (its ends) are not judged
    if ok.sum() < 5:
        return []
    medians = np.zeros(nz)
    spreads = np.zeros(nz)
    for z in np.flatnonzero(ok):
        q25, q50, q75 = np.percentile(array[z][m[z]], (25, 50, 75))
        medians[z], spreads[z] = q50, q75 - q25
    flags = np.zeros(nz, bool)
    for stat in (medians[ok], spreads[ok]):
        # compare each slice with its neighbours (running median), so anatomy changing along z is not flagged
        deviation = np.abs(stat - median_filter(stat, size=SLICE_WINDOW, mode="nearest"))
        mad = 1.4826 * float(np.median(deviation))
        robust = deviation / max(mad, 1e-6 * scale)
        flags[ok] |= (robust > SLICE_ROBUST_Z) & (deviation > SLICE_MIN_SHIFT * scale)
    # the last few judged slices at each end have a one-sided neighbourhood, where anatomy changes fastest
    # (skull cap, neck): they are not flagged, which avoids false alarms at the edges of the field of view
    judged = np.flatnonzero(ok)
    edge = SLICE_WINDOW // 2
    flags[judged[:edge]] = False
    flags[judged[-edge:]] = False
    warnings = []
    for first, last in _slice_runs(flags):
        span = f"slice {first}" if first == last else f"slices {first}-{last}"
        warnings.append(OodWarning(
            message=(f"{span.capitalize()} (of {nz}, along z) {'looks' if first == last else 'look'} different from the rest of the scan "
                     f"(brightness or contrast inside the body is abnormal): possible artefact, corrupted or "
                     f"missing data. The synthetic image there is unreliable."),
            severity="warning", kind="slices", slices=(first, last), region=span))
    return warnings


def _check_geometry(extent: list[float], spacing: Sequence[float], ref: dict,
                    resamples: bool = True) -> list[OodWarning]:
    warnings = []
    for axis, name in enumerate(AXIS_NAMES):
        if "extent_mm" in ref:
            trained = float(ref["extent_mm"][axis])
            ratio = extent[axis] / trained if trained > 0 else 1.0
            if ratio > EXTENT_RATIO or ratio < 1.0 / EXTENT_RATIO:
                size = "larger" if ratio > 1 else "smaller"
                warnings.append(OodWarning(
                    message=(f"The scanned body region is {size} than in training along {name}: "
                             f"{extent[axis]:.0f} mm vs about {trained:.0f} mm. Anatomy outside the trained "
                             "field of view may be synthesised wrongly (artefacts are common there)."),
                    severity="warning", kind="field_of_view", region=name))
        if "spacing_mm" in ref:
            trained = float(ref["spacing_mm"][axis])
            ratio = float(spacing[axis]) / trained if trained > 0 else 1.0
            if ratio > SPACING_RATIO or ratio < 1.0 / SPACING_RATIO:
                effect = ("Resampling to the model's grid may blur or lose detail." if resamples else
                          "The model works on the input's own voxels, so it sees the anatomy at another scale "
                          "than it learned; review the result with care.")
                warnings.append(OodWarning(
                    message=(f"Voxel size along {name} is {float(spacing[axis]):.2f} mm, training used about "
                             f"{trained:.2f} mm. {effect}"),
                    severity="info" if ratio < 1 else "warning", kind="spacing", region=name))
    return warnings


def check_input(array: np.ndarray, mask: np.ndarray | None, spacing_xyz: Sequence[float],
                card: Any) -> list[OodWarning]:
    """Warnings for an input (z, y, x) compared with the card's ``intensity_reference``; [] if the card has none."""
    ref = _card_get(card, "intensity_reference")
    if not ref:
        return []
    step = max(1, math.ceil(math.sqrt(np.prod(array.shape) / CHECK_VOXELS)))
    # the voxel spacing of the (possibly subsampled) arrays, for the body extent; the spacing check uses the input's
    sample_spacing = (float(spacing_xyz[0]) * step, float(spacing_xyz[1]) * step, float(spacing_xyz[2]))
    if step > 1:  # statistics of a large volume from an in-plane strided subsample (about CHECK_VOXELS voxels)
        array = array[:, ::step, ::step]
        mask = None if mask is None else np.asarray(mask)[:, ::step, ::step]
    array = np.asarray(array, dtype=np.float32)
    m = _mask_of(array, mask)
    relative = _uses_relative_units(card) and "relative_percentiles" in ref
    pct_ref = {k: float(v) for k, v in ref.get("relative_percentiles" if relative else "percentiles", {}).items()}
    if relative:
        standardised = array.copy()
        standardised[m] = _standardise(array[m])
        array = standardised

    warnings: list[OodWarning] = []
    scale = 1.0
    if "p1" in pct_ref and "p99" in pct_ref:
        scale = max(pct_ref["p99"] - pct_ref["p1"], 1e-6)
    if pct_ref:
        warnings += _check_intensity(array[m], pct_ref, scale, relative)
    else:
        lo, hi = np.percentile(array[m], (1, 99))
        scale = max(float(hi - lo), 1e-6)
    warnings += _check_slices(array, m, scale)
    resamples = bool((_card_get(card, "input") or {}).get("spacing"))
    warnings += _check_geometry(_body_extent_mm(m, sample_spacing), spacing_xyz, ref, resamples)
    return warnings
