"""Reference-free out-of-distribution warnings: is this input like the data the model was trained on?

``intensity_reference`` summarises the training inputs for the model card field ``intensity_reference``:
intensity percentiles inside the body mask in RAW units of the input (HU for CT/CBCT, scanner units for
MR; raw because the check runs on the raw input before normalisation), the body's extent in mm
(bounding box of the mask, x y z) and the voxel spacing in mm (x y z). ``check_input`` compares an
input with it and returns :class:`OodWarning` objects written for a radiologist.

It also stores ``relative_percentiles``: percentiles after a per-volume robust standardisation
``(x - median) / IQR`` of the *tissue* voxels (inside the mask and above the volume's Otsu threshold, the one
the automatic body mask uses), and ``relative_range``: the lowest and highest value of each over the training
volumes. Tissue only, because the automatic mask also holds dark background (filled air pockets, its
dilation band): how much of it there is depends on the field of view, so whole-mask statistics moved with
every crop (the pork model warned on its own held-out slab). A range, because training volumes differ (one
of the three BraTS T1 training brains lay outside the median of the three). Models whose input
normalisation is ``percentile`` or ``zscore`` (MR: arbitrary scanner units) are checked on these, so a
global gain or offset that normalisation removes anyway is not reported, while a different contrast is (by
the bright tail: it tells FLAIR or T2 from T1); models with ``clip`` normalisation (CT, CBCT in HU) are
checked in raw units.

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
# MR (relative units): the 99th percentile of the tissue (in interquartile ranges from the median) beyond the
# training range, as a log ratio. Measured on the real data: T1 models against BraTS T2 0.86-1.35, FLAIR
# 0.31-0.66, T1 post-contrast 0.06-0.90 (contrast agent); inputs that must stay quiet (held-out brains and
# slabs, crops of training volumes, a 37-slice crop of the other pork slab) at most 0.26 heavier, 0.23 lighter.
TAIL_HEAVIER = 0.27      # a brighter tail than in training (T2, FLAIR, contrast agent into a T1 model)
TAIL_LIGHTER = 0.5       # a darker one (a crop that leaves out bright tissue lightens it too: allow more)
TAIL_SEVERE = 0.6
EXTENT_RATIO = 1.5       # field of view this many times larger or smaller than training
SPACING_RATIO = 2.0      # voxel size this many times larger or smaller than training
SLICE_ROBUST_Z = 6.0     # a slice is an outlier beyond this many robust SDs of the volume's slices
SLICE_MIN_SHIFT = 0.10   # ... and when its statistics move by >= this fraction of the training range
SLICE_WINDOW = 9         # neighbourhood (slices) of the running median a slice is compared with
SLICE_MIN_AREA = 0.25    # slices with less body than this fraction of the median slice are skipped
AXIS_NAMES = ("left-right (x)", "front-back (y)", "head-foot (z)")
RELATIVE_UNITS = ("raw in the body mask (percentiles); per-volume (x - median) / IQR of the tissue, the mask's voxels "
                  "above the Otsu threshold (relative_percentiles, relative_range: lowest and highest volume)")


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
    """Training-input statistics for the model card (raw in-mask percentiles, relative tissue percentiles and
    their range over the arrays, extent, spacing).

    ``spacing_xyz`` is one (x, y, z) spacing for all arrays or one per array. Percentiles pool the voxels of
    all arrays; extent and spacing are per-axis medians over the arrays.
    """
    if not arrays or len(arrays) != len(masks):
        raise InputError("Give one mask (or None) per training array.", "Pass matching lists.")
    spacings = np.asarray(spacing_xyz, dtype=float)
    spacings = np.broadcast_to(spacings, (len(arrays), 3)) if spacings.ndim == 1 else spacings
    values, relative, per_array, extents = [], [], [], []
    for array, mask, spacing in zip(arrays, masks, spacings):
        array = np.asarray(array, dtype=np.float32)
        m = _mask_of(array, mask)
        values.append(array[m])
        relative.append(_standardised_tissue(array, m)[0])
        per_array.append(np.percentile(relative[-1], PERCENTILES))
        extents.append(_body_extent_mm(m, spacing))
    pct = np.percentile(np.concatenate(values), PERCENTILES)
    rel = np.percentile(np.concatenate(relative), PERCENTILES)
    low, high = np.min(per_array, axis=0), np.max(per_array, axis=0)
    return {
        "percentiles": {f"p{p}": float(v) for p, v in zip(PERCENTILES, pct)},
        "relative_percentiles": {f"p{p}": float(v) for p, v in zip(PERCENTILES, rel)},
        "relative_range": {f"p{p}": [float(lo), float(hi)] for p, lo, hi in zip(PERCENTILES, low, high)},
        "extent_mm": [float(v) for v in np.median(extents, axis=0)],
        "spacing_mm": [float(v) for v in np.median(spacings, axis=0)],
        "units": RELATIVE_UNITS,
    }


def _standardised_tissue(array: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tissue voxels of ``array`` standardised by their own median and IQR, and the mask's voxels on that scale.

    Tissue: the mask's voxels above the volume's Otsu threshold (the automatic body mask's own), so that the dark
    background a mask holds (filled air pockets, a dilation band), whose share depends on the field of view, does
    not move the statistics. All the mask's voxels when fewer than 1 % of them are above it.
    """
    from MedTranslateLib.preprocess.body_mask import otsu_threshold

    inside = array[mask]
    tissue = inside[inside > otsu_threshold(array)]
    if tissue.size < max(1, inside.size // 100):
        tissue = inside
    q25, q50, q75 = np.percentile(tissue, (25, 50, 75))
    iqr = float(q75 - q25) if q75 > q25 else 1.0
    return (tissue - q50) / iqr, (inside - q50) / iqr


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


def _check_intensity(values: np.ndarray, pct_ref: dict[str, float], scale: float) -> list[OodWarning]:
    """Raw units (CT, CBCT): a shift of the 5th, 50th or 95th percentile by a fraction of the training range."""
    keys = [k for k in ("p5", "p50", "p95") if k in pct_ref]
    if not keys:
        return []
    now = dict(zip(keys, (float(v) for v in np.percentile(values, [float(k[1:]) for k in keys]))))
    worst = max(abs(now[k] - pct_ref[k]) / scale for k in keys)
    if worst < INTENSITY_WARN:
        return []
    centre = "p50" if "p50" in now else keys[0]
    direction = "brighter" if now[centre] > pct_ref[centre] else "darker"
    detail = ", ".join(f"{k[1:]}th percentile {now[k]:.0f} (training {pct_ref[k]:.0f})" for k in keys)
    message = (f"Intensities inside the body are unlike the training scans (overall {direction}): {detail}. "
               "The scan may be a different modality, contrast, scanner or calibration than the model was "
               "trained for; review the synthetic image with care.")
    return [OodWarning(message=message, severity="severe" if worst >= INTENSITY_SEVERE else "warning",
                       kind="intensity", region="whole volume")]


def _relative_range(ref: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Per percentile the training range (a card without ``relative_range``: its single value)."""
    ranges = ref.get("relative_range") or {k: (v, v) for k, v in (ref.get("relative_percentiles") or {}).items()}
    return {k: (float(lo), float(hi)) for k, (lo, hi) in ranges.items()}


def _span(low: float, high: float) -> str:
    return f"{low:+.2f}" if round(low, 2) == round(high, 2) else f"{low:+.2f} to {high:+.2f}"


def _check_contrast(tissue: np.ndarray, ranges: dict[str, tuple[float, float]], scale: float,
                    source: str) -> list[OodWarning]:
    """MR (tissue in IQRs from its median): the 5th / 95th percentile beyond the training range by a fraction of
    its width, or the 99th (the bright tail, which tells T2, FLAIR or contrast agent from T1) by a log ratio."""
    keys = [k for k in ("p5", "p95", "p99") if k in ranges]
    if not keys:
        return []
    now = dict(zip(keys, (float(v) for v in np.percentile(tissue, [float(k[1:]) for k in keys]))))
    beyond = max((max(ranges[k][0] - now[k], now[k] - ranges[k][1], 0.0) / scale for k in keys if k != "p99"),
                 default=0.0)
    worst, worst_severe = beyond / RELATIVE_WARN, beyond / RELATIVE_SEVERE
    tail_note = "intensities spread unlike training"
    if "p99" in now:
        low, high = (max(v, 1e-6) for v in ranges["p99"])
        tail = max(now["p99"], 1e-6)
        heavier = tail > high
        shift = math.log(tail / high) if heavier else max(math.log(low / tail), 0.0)
        tail_worst = shift / (TAIL_HEAVIER if heavier else TAIL_LIGHTER)
        if tail_worst >= max(worst, 1.0):
            tail_note = ("more very bright tissue than in training: fluid or lesions bright in another weighting, or "
                         "contrast agent" if heavier else "less very bright tissue than in training")
        worst, worst_severe = max(worst, tail_worst), max(worst_severe, shift / TAIL_SEVERE)
    if worst < 1:
        return []
    detail = ", ".join(f"{k[1:]}th percentile {now[k]:+.2f} (training {_span(*ranges[k])})" for k in keys)
    message = (f"The contrast inside the body is unlike the {source} training scans ({tail_note}; intensities in "
               f"interquartile ranges from the median: {detail}). The scan may be another MR contrast or sequence "
               f"than the model's {source} input; review the result with care.")
    return [OodWarning(message=message, severity="severe" if worst_severe >= 1 else "warning", kind="intensity",
                       region="whole volume")]


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
    warnings: list[OodWarning] = []
    scale = 1.0
    if "p1" in pct_ref and "p99" in pct_ref:
        scale = max(pct_ref["p99"] - pct_ref["p1"], 1e-6)
    if relative:
        tissue, inside = _standardised_tissue(array, m)
        array = np.zeros_like(array)
        array[m] = inside
        source = str(_card_get(card, "source_modality") or "MR")
        warnings += _check_contrast(tissue, _relative_range(ref), scale, source)
    elif pct_ref:
        warnings += _check_intensity(array[m], pct_ref, scale)
    else:
        lo, hi = np.percentile(array[m], (1, 99))
        scale = max(float(hi - lo), 1e-6)
    warnings += _check_slices(array, m, scale)
    resamples = bool((_card_get(card, "input") or {}).get("spacing"))
    warnings += _check_geometry(_body_extent_mm(m, sample_spacing), spacing_xyz, ref, resamples)
    return warnings
