"""Automatic body (foreground) mask: threshold, the body's connected components, holes filled, optional dilation.

CT is thresholded at -500 HU (between air and fat); MR and CBCT use Otsu's threshold computed on a
percentile-clipped copy (so that a few very bright voxels - metal, vessels, fiducials - do not pull it
up) in the log domain (so that it separates background from body, not dark from bright tissue).
The mask is never empty: when the threshold finds nothing the mask falls back to ``array > min`` and a
:class:`BodyMaskFallbackWarning` is issued.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from MedTranslateLib.preprocess.modality import CT_LIKE

#: modalities whose body is found with a fixed HU threshold by default (CBCT's HU are too uncertain: Otsu)
HU_THRESHOLD_MODALITIES = ("CT",)
CT_THRESHOLD_HU = -500.0
#: a component apart from the largest is body too when it has at least this volume (ml) and share of the largest
SEPARATE_PART_ML = 5.0
SEPARATE_PART_SHARE = 0.01
#: the percentile range is mapped to 0..this before the log of Otsu's log domain (unit-free)
LOG_DOMAIN_RANGE = 1000.0
#: voxels used at most to estimate the Otsu threshold (a strided subsample of larger volumes)
_OTSU_SAMPLES = 2_000_000


#: the keys of a ``body_mask`` settings table (a card's, a training config's)
SETTINGS_KEYS = ("method", "threshold", "dilate_mm")


def check_settings(settings: Mapping[str, Any] | None, modality: str) -> None:
    """Raise :class:`ModelError` when ``body_mask`` settings cannot work for a ``modality`` source: an unknown key or
    method, method threshold without a threshold (non-CT), a dilation outside 0-100 mm. Run when a card is read
    and before training, so a typo is never ignored silently."""
    from MedTranslateLib.errors import ModelError

    settings = settings or {}
    unknown = sorted(set(settings) - set(SETTINGS_KEYS))
    if unknown:
        raise ModelError(f"Unknown body_mask setting {unknown[0]!r}.",
                         f"Use {', '.join(SETTINGS_KEYS)}, e.g. body_mask = {{dilate_mm = 4.0}}.")
    if settings.get("method", "otsu") not in ("otsu", "threshold", "none"):
        raise ModelError(f"body_mask method {settings['method']!r} is not allowed.", "Use otsu, threshold or none.")
    if settings.get("method") == "threshold" and settings.get("threshold") is None \
            and str(modality).upper() not in HU_THRESHOLD_MODALITIES:
        raise ModelError("body_mask method threshold needs a threshold for a non-CT source.",
                         "Add threshold = <intensity>, or use method = otsu.")
    dilate = settings.get("dilate_mm", 0.0)
    if not isinstance(dilate, (int, float)) or isinstance(dilate, bool) or not 0 <= dilate <= 100:
        raise ModelError(f"body_mask dilate_mm must be 0 to 100 mm (got {dilate!r}).", "For example 4.0.")


class BodyMaskFallbackWarning(UserWarning):
    """The automatic body mask was empty and fell back to every voxel above the minimum."""


def otsu_threshold(array: np.ndarray, clip_percentiles: tuple[float, float] = (0.5, 99.5),
                   log_domain: bool = True) -> float:
    """Otsu's threshold of ``array`` on a percentile-clipped (and, when large, subsampled) copy.

    With ``log_domain`` the histogram is taken of ``log(1 + 1000 (x - p_lo) / (p_hi - p_lo))``: bright tissue
    classes are compressed, so the split falls between background and body instead of inside the body (MR). The
    percentile range makes it independent of the intensity unit: with ``log(1 + x - p_lo)`` an MR stored in 0-1
    (BraTS T1 times 0.001) got a threshold 14 to 30 times too high, deep inside the brain.
    """
    from skimage.filters import threshold_otsu

    flat = np.asarray(array).ravel()
    step = max(1, flat.size // _OTSU_SAMPLES)
    sample = np.array(flat[::step], dtype=np.float32, copy=True)  # never modify the caller's array
    lo, hi = (float(v) for v in np.percentile(sample, clip_percentiles))
    if hi <= lo:
        return lo
    np.clip(sample, lo, hi, out=sample)
    if not log_domain:
        return float(threshold_otsu(sample, nbins=256))
    scale = LOG_DOMAIN_RANGE / (hi - lo)
    sample -= np.float32(lo)
    sample *= np.float32(scale)
    np.log1p(sample, out=sample)
    return float(np.expm1(threshold_otsu(sample, nbins=256)) / scale + lo)


#: slices per slab when counting and selecting labels
_SLAB = 16


def body_components(mask: np.ndarray, spacing_xyz: Sequence[float] | None = None) -> np.ndarray:
    """The largest 26-connected (8-connected in 2D) component of ``mask`` and every other component of at least
    :data:`SEPARATE_PART_ML` millilitres and :data:`SEPARATE_PART_SHARE` of the largest (empty stays empty).

    Arms beside the trunk, the other leg, or a second object in the scanner are body too: keeping only the largest
    component wrote them as air. Noise specks and markers stay out. Without ``spacing_xyz`` only the largest is kept.

    SimpleITK's multi-threaded connected components: the same components as ``scipy.ndimage.label`` with a full
    3x3x3 structure, 2.6x faster on a 512 x 512 x 300 volume. Sizes come from counting the labels (no relabelled
    second label volume: 315 MB less at the peak on that volume); of equal largest components the first is kept."""
    import SimpleITK as sitk

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    labelling = sitk.ConnectedComponentImageFilter()
    labelling.SetFullyConnected(True)
    components = labelling.Execute(sitk.GetImageFromArray(mask.view(np.uint8)))
    labels = sitk.GetArrayViewFromImage(components)  # shares the image's buffer: ``components`` stays alive
    count = labelling.GetObjectCount() + 1
    slabs = range(0, labels.shape[0], _SLAB)  # counted and looked up a slab at a time: no int64 copy of the labels
    sizes = np.sum([np.bincount(labels[z:z + _SLAB].ravel(), minlength=count) for z in slabs], axis=0, dtype=np.float64)
    sizes[0] = 0.0  # the background
    largest = int(np.argmax(sizes))
    voxel_ml = float(np.prod([float(s) for s in spacing_xyz])) / 1000.0 if spacing_xyz is not None else 0.0
    keep = (sizes * voxel_ml >= SEPARATE_PART_ML) & (sizes >= SEPARATE_PART_SHARE * sizes[largest]) & (sizes > 0)
    keep[largest] = True
    body = np.empty(labels.shape, dtype=bool)
    for z in slabs:
        body[z:z + _SLAB] = keep[labels[z:z + _SLAB]]
    return body


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes filled in every axial slice (axis 0), so open airways and sinuses close too.

    Background that is not 4-connected to the edge of its slice becomes body. Every enclosed 3D cavity
    is enclosed in each of its slices as well, so this also fills all 3D holes (much faster than a 3D fill
    followed by a slice loop). Labelled a slab of slices at a time: 3.3x faster than labelling the whole volume
    at once, and without its int32 label volume (512 x 512 x 300: 0.8 s against 2.65 s, peak 290 MB lower).
    """
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    filled = np.empty(mask.shape, dtype=bool)
    for z in range(0, mask.shape[0], _SLAB):  # slices are independent: a slab's labels at a time, not the volume's
        slab = mask[z:z + _SLAB]
        labels, count = ndimage.label(~slab, structure=in_plane)
        outside = np.zeros(count + 1, dtype=bool)
        outside[0] = True  # label 0 is the body itself
        for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
            outside[np.unique(edge)] = True
        filled[z:z + _SLAB] = slab | ~outside[labels]
    return filled


def dilate_by_mm(mask: np.ndarray, spacing_xyz: Sequence[float], distance_mm: float) -> np.ndarray:
    """Every voxel within ``distance_mm`` (Euclidean, in mm, anisotropic spacing honoured) of ``mask``.

    The distance transform runs only on the mask's bounding box grown by the distance (exact, cheaper), as
    SimpleITK's multi-threaded Maurer transform in float32 squared millimetres: the same voxels as scipy's
    ``distance_transform_edt`` (tested), 9x faster on 2 cores for a 256^3 head and 5 bytes a voxel instead of
    about 20.
    """
    import SimpleITK as sitk

    if distance_mm <= 0 or not mask.any():
        return mask
    spacing_zyx = tuple(float(s) for s in reversed(tuple(spacing_xyz)))
    box = []
    for axis, step in enumerate(spacing_zyx):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        reach = int(np.ceil(distance_mm / step))
        box.append(slice(max(0, int(hits[0]) - reach), min(mask.shape[axis], int(hits[-1]) + 1 + reach)))
    box = tuple(box)
    if mask[box].all():  # no background within reach: nothing to grow (and no distance to measure)
        return mask.copy()
    out = np.zeros_like(mask)
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask[box], dtype=np.uint8))
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    squared = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=True,
                                           useImageSpacing=True, backgroundValue=0)
    out[box] = sitk.GetArrayViewFromImage(squared) <= np.float32(distance_mm) ** 2  # inside: <= 0
    return out


def body_mask(
    array: np.ndarray,
    spacing_xyz: Sequence[float],
    method: str = "otsu",
    threshold: float | None = None,
    dilate_mm: float = 0.0,
    modality: str | None = None,
) -> np.ndarray:
    """Boolean body mask of a (z, y, x) volume.

    ``method``: ``otsu`` (CT uses -500 HU unless ``threshold`` is given), ``threshold`` (``array >
    threshold``; CT defaults to -500 HU) or ``none`` (every voxel). Then the largest connected component and, for MR
    (a ``modality`` other than CT and CBCT), any sizeable separate part (:func:`body_components`); holes filled (per
    axial slice, which includes 3D cavities) and an optional dilation of ``dilate_mm`` millimetres.
    """
    array = np.asarray(array)
    if method == "none":
        return np.ones(array.shape, dtype=bool)
    if method not in ("otsu", "threshold"):
        raise ValueError(f"unknown body mask method {method!r} (otsu, threshold or none)")
    is_ct = modality is not None and modality.upper() in HU_THRESHOLD_MODALITIES
    if threshold is None:
        if is_ct:
            threshold = CT_THRESHOLD_HU
        elif method == "threshold":
            raise ValueError("body mask method 'threshold' needs a threshold for non-CT volumes")
        else:
            threshold = otsu_threshold(array)
    mask = array > threshold
    if mask.any():
        # separate parts (arms, the other leg) only for MR: on CT and CBCT they are the couch, masks and fixations
        separate_parts = modality is not None and modality.upper() not in CT_LIKE
        mask = fill_holes(body_components(mask, spacing_xyz if separate_parts else None))
    if not mask.any():
        warnings.warn(f"The body mask (threshold {threshold:g}) was empty; using every voxel above the "
                      "volume's minimum instead.", BodyMaskFallbackWarning, stacklevel=2)
        mask = array > array.min()
        if not mask.any():
            mask = np.ones(array.shape, dtype=bool)
    return dilate_by_mm(mask, spacing_xyz, dilate_mm)
