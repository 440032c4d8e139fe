"""Recorded, exactly invertible geometric steps between the input grid and the model grid.

Each forward step returns a JSON-serialisable record entry (a dict with ``"step"``) from which the
inverse is computed without any other information:

- ``reorient``: to the card's orientation with ``sitk.DICOMOrient`` (a permutation / flip of the voxel
  axes, no interpolation); recorded as the numpy axis permutation and flips, so masks, paired targets and
  the inverse are exact array operations.
- ``resample``: to the card's spacing, on a grid centred on the same physical extent (linear for
  intensities; masks linearly too, then at least half inside: :func:`resample_mask`); the inverse resamples back
  onto the recorded source grid.
- ``crop``: to the body bounding box plus a margin; the inverse embeds into the full grid (background).
- ``pad``: to the model's minimum / window size (constant: the normalised background); inverse: slicing.

Arrays are numpy (z, y, x); grids are dicts ``{"size": [x, y, z], "spacing", "origin", "direction"}``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

#: the array axis (z, y, x) the slices of a 2D / 2.5D model are taken along
SLICE_AXIS_INDEX = {"axial": 0, "coronal": 1, "sagittal": 2}
IN_PLANE_MULTIPLE = 16
SPACING_TOLERANCE = 1e-6


# ----------------------------------------------------------------------------------------------- grids
def grid_of(image: "sitk.Image") -> dict[str, list]:
    """The grid of ``image`` as plain lists (JSON-serialisable, exact float values)."""
    return {
        "size": [int(v) for v in image.GetSize()],
        "spacing": [float(v) for v in image.GetSpacing()],
        "origin": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
    }


def image_on_grid(array: np.ndarray, grid: Mapping[str, Any]) -> "sitk.Image":
    """A SimpleITK image of ``array`` (z, y, x) with exactly the geometry of ``grid``."""
    import SimpleITK as sitk

    if list(array.shape[::-1]) != list(grid["size"]):
        raise ValueError(f"array shape {array.shape} does not fit grid size {grid['size']} (x, y, z)")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(grid["spacing"]))
    image.SetOrigin(tuple(grid["origin"]))
    image.SetDirection(tuple(grid["direction"]))
    return image


def orientation_code(image_or_direction: "sitk.Image | Sequence[float]") -> str:
    """The three-letter DICOM orientation (e.g. ``LPS``) closest to the image's direction cosines."""
    import SimpleITK as sitk

    direction = image_or_direction.GetDirection() if hasattr(image_or_direction, "GetDirection") else image_or_direction
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(float(v) for v in direction))


# ------------------------------------------------------------------------------------------- reorient
def anatomical_axis_order(code: str) -> str:
    """``code`` with its letters put in left-right, front-back, head-foot order, each keeping its sign: a
    sagittally stored volume (``ASL``) becomes ``LAS``, so that array axis z runs head-foot and a 2D model sees
    axial slices; a volume already in that order (``LPS``, ``RAS``, ...) keeps its code."""
    code = code.upper()
    return "".join(next(letter for letter in code if letter in pair) for pair in ("LR", "AP", "SI"))


def reorient(image: "sitk.Image", orientation: str | None) -> tuple["sitk.Image", dict | None]:
    """``image`` in ``orientation`` (``sitk.DICOMOrient``) and its record entry (None when nothing to do).

    ``orientation`` None keeps the image's own axis directions but puts its axes in anatomical order
    (:func:`anatomical_axis_order`)."""
    import SimpleITK as sitk

    current = orientation_code(image)
    orientation = orientation or anatomical_axis_order(current)
    if current == orientation.upper():
        return image, None
    oriented = sitk.DICOMOrient(image, orientation.upper())
    old = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    new = np.array(oriented.GetDirection(), dtype=np.float64).reshape(3, 3)
    signed = np.rint(np.linalg.solve(old, new)).astype(int)  # new = old @ signed permutation
    axes, flip = [0, 0, 0], [False, False, False]
    for new_xyz in range(3):
        old_xyz = int(np.flatnonzero(signed[:, new_xyz])[0])
        axes[2 - new_xyz] = 2 - old_xyz  # numpy (z, y, x) axis order
        flip[2 - new_xyz] = bool(signed[old_xyz, new_xyz] < 0)
    step = {"step": "reorient", "from": current, "to": orientation.upper(), "axes": axes, "flip": flip,
            "grid": grid_of(oriented)}
    return oriented, step


def reorient_array(array: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    """Apply a recorded reorientation to a (z, y, x) array (same result as ``sitk.DICOMOrient``)."""
    out = np.transpose(array, step["axes"])
    flips = tuple(i for i, f in enumerate(step["flip"]) if f)
    return np.ascontiguousarray(np.flip(out, flips) if flips else out)


def unreorient_array(array: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    """Undo :func:`reorient_array` exactly."""
    flips = tuple(i for i, f in enumerate(step["flip"]) if f)
    out = np.flip(array, flips) if flips else array
    return np.ascontiguousarray(np.transpose(out, np.argsort(step["axes"])))


def _voxel_box(image: "sitk.Image") -> tuple[np.ndarray, np.ndarray]:
    """The physical box (min and max corner, mm) covered by an image's voxels (half a voxel past the centres)."""
    size = np.array(image.GetSize(), dtype=float)
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in size])).T.reshape(-1, 3)]
    return np.min(corners, axis=0), np.max(corners, axis=0)


def overlap_fraction(image: "sitk.Image", other: "sitk.Image") -> float:
    """The share of ``image``'s physical box (by volume) that ``other``'s box covers."""
    (lo, hi), (other_lo, other_hi) = _voxel_box(image), _voxel_box(other)
    common = np.clip(np.minimum(hi, other_hi) - np.maximum(lo, other_lo), 0, None)
    return float(np.prod(common) / max(float(np.prod(hi - lo)), 1e-9))


# ------------------------------------------------------------------------------------------- resample
def resampled_grid(grid: Mapping[str, Any], spacing_xyz: Sequence[float]) -> dict[str, list]:
    """A grid with ``spacing_xyz`` covering the same physical extent as ``grid``, centred on it."""
    direction = np.array(grid["direction"], dtype=np.float64).reshape(3, 3)
    offset = np.zeros(3)
    size = []
    for axis in range(3):
        n, old, new = grid["size"][axis], grid["spacing"][axis], float(spacing_xyz[axis])
        m = max(1, int(round(n * old / new)))
        size.append(m)
        offset[axis] = (n - 1) * old / 2.0 - (m - 1) * new / 2.0
    origin = np.array(grid["origin"], dtype=np.float64) + direction @ offset
    return {"size": size, "spacing": [float(s) for s in spacing_xyz],
            "origin": [float(v) for v in origin], "direction": list(grid["direction"])}


def needs_resampling(grid: Mapping[str, Any], spacing_xyz: Sequence[float] | None) -> bool:
    """True when ``spacing_xyz`` is set and differs from the grid's spacing."""
    if spacing_xyz is None:
        return False
    return any(abs(a - float(b)) > SPACING_TOLERANCE * max(1.0, abs(a)) for a, b in zip(grid["spacing"], spacing_xyz))


def resample_to_grid(image: "sitk.Image", grid: Mapping[str, Any], default: float = 0.0,
                     extrapolate: bool = False) -> "sitk.Image":
    """``image`` resampled onto ``grid`` (linear, float32). Points outside ``image`` get ``default``, or with
    ``extrapolate`` the nearest voxel's value: for grids of the same extent (:func:`resampled_grid`), whose
    outermost voxel centres may lie just outside each other's because sizes are whole numbers."""
    import SimpleITK as sitk

    return sitk.Resample(image, [int(v) for v in grid["size"]], sitk.Transform(), sitk.sitkLinear,
                         tuple(grid["origin"]), tuple(grid["spacing"]), tuple(grid["direction"]), float(default),
                         sitk.sitkFloat32, bool(extrapolate))


def resample_step(grid: Mapping[str, Any], spacing_xyz: Sequence[float] | None) -> dict | None:
    """The record entry for resampling ``grid`` to ``spacing_xyz`` (None when not needed)."""
    if not needs_resampling(grid, spacing_xyz):
        return None
    return {"step": "resample", "from": dict(grid), "to": resampled_grid(grid, spacing_xyz)}


def resample_array(array: np.ndarray, source_grid: Mapping[str, Any], target_grid: Mapping[str, Any],
                   default: float = 0.0) -> np.ndarray:
    """Resample a (z, y, x) array between two grids of the same extent (the recorded resampling step; linear,
    float32, nearest-voxel values where a centre lies just outside the other grid)."""
    import SimpleITK as sitk

    image = image_on_grid(np.asarray(array, dtype=np.float32), source_grid)
    return sitk.GetArrayFromImage(resample_to_grid(image, target_grid, default=default, extrapolate=True))


#: A resampled voxel is inside a mask when at least this share of its linear interpolation is (0.5 less a margin far
#: above rounding noise, so exact ties are inside whatever the last bits of the geometry).
MASK_INSIDE = 0.5 - 1e-3


def resample_mask(mask: np.ndarray, source_grid: Mapping[str, Any], target_grid: Mapping[str, Any]) -> np.ndarray:
    """A boolean (z, y, x) mask on another grid: linear interpolation, then at least half inside. Nearest neighbour
    put every sample of a 2x downsampling half-way between voxels, so a 1e-6 change of the direction cosines moved
    the whole mask by a voxel (20 HU in the head phantom model's output)."""
    import SimpleITK as sitk

    resampled = resample_to_grid(image_on_grid(np.asarray(mask, dtype=np.uint8), source_grid), target_grid,
                                 extrapolate=True)
    return sitk.GetArrayViewFromImage(resampled) >= MASK_INSIDE  # (``resampled`` alive while the view is read)


# ---------------------------------------------------------------------------------------- crop / pad
def crop_step(mask: np.ndarray, margin: int) -> dict | None:
    """The record entry cropping to the bounding box of ``mask`` plus ``margin`` voxels (None: no crop)."""
    if not mask.any():
        return None
    start, stop = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        start.append(max(0, int(hits[0]) - margin))
        stop.append(min(mask.shape[axis], int(hits[-1]) + 1 + margin))
    if start == [0] * mask.ndim and stop == list(mask.shape):
        return None
    return {"step": "crop", "start": start, "stop": stop, "shape": [int(s) for s in mask.shape]}


def crop_array(array: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    """The cropped part of ``array`` (a contiguous copy)."""
    box = tuple(slice(a, b) for a, b in zip(step["start"], step["stop"]))
    return np.ascontiguousarray(array[box])


def uncrop_array(array: np.ndarray, step: Mapping[str, Any], fill: float) -> np.ndarray:
    """``array`` put back into the full (uncropped) shape, ``fill`` elsewhere."""
    out = np.full(step["shape"], fill, dtype=array.dtype)
    out[tuple(slice(a, b) for a, b in zip(step["start"], step["stop"]))] = array
    return out


def model_shape(shape: Sequence[int], input_spec: Mapping[str, Any], dimensionality: str) -> list[int]:
    """The padded (z, y, x) shape the model gets for a cropped volume of ``shape``.

    At least ``min_size``; 3D: at least ``patch_size``; 2D / 2.5D: the in-plane axes at least
    ``slice_size`` and a multiple of 16 (larger slices are never cropped, so the body stays whole).
    """
    target = [int(s) for s in shape]
    minimum = input_spec.get("min_size") or [1, 1, 1]
    target = [max(t, int(m)) for t, m in zip(target, minimum)]
    if dimensionality == "3d":
        patch = input_spec.get("patch_size") or [1, 1, 1]
        return [max(t, int(p)) for t, p in zip(target, patch)]
    slice_axis = SLICE_AXIS_INDEX[input_spec.get("slice_axis", "axial")]
    in_plane = [a for a in range(3) if a != slice_axis]
    slice_size = input_spec.get("slice_size")
    for i, axis in enumerate(in_plane):
        if slice_size:
            target[axis] = max(target[axis], int(slice_size[i]))
        target[axis] = int(math.ceil(target[axis] / IN_PLANE_MULTIPLE) * IN_PLANE_MULTIPLE)
    return target


def pad_step(shape: Sequence[int], target: Sequence[int], value: float) -> dict | None:
    """The record entry padding ``shape`` to ``target`` (split evenly, extra voxel after; None: no pad)."""
    before = [(int(t) - int(s)) // 2 for s, t in zip(shape, target)]
    after = [int(t) - int(s) - b for s, t, b in zip(shape, target, before)]
    if not any(before) and not any(after):
        return None
    return {"step": "pad", "before": before, "after": after, "value": float(value)}


def pad_array(array: np.ndarray, step: Mapping[str, Any], value: float) -> np.ndarray:
    """``array`` padded as recorded with the constant ``value``."""
    return np.pad(array, list(zip(step["before"], step["after"])), mode="constant", constant_values=value)


def unpad_array(array: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    """Undo :func:`pad_array`."""
    box = tuple(slice(b, n - a) for b, a, n in zip(step["before"], step["after"], array.shape))
    return array[box]
