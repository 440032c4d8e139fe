"""prepare (input grid -> normalised model grid, recorded) and restore (the exact inverse of the record).

prepare: reorient -> body mask on the reoriented grid (or the user's mask; recorded on the input grid) ->
resample -> size check -> normalise -> crop to the body box + margin -> pad. restore: denormalise -> unpad -> uncrop (background)
-> resample back onto the recorded grid -> undo the orientation -> background outside the body ->
the input's exact size, spacing, origin and direction.
"""

from __future__ import annotations

import base64
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from MedTranslateLib.errors import InputError, ModelError, plain_numbers
from MedTranslateLib.preprocess import geometry
from MedTranslateLib.preprocess.body_mask import body_mask
from MedTranslateLib.preprocess.normalization import denormalize, normalize

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

#: voxels kept around the body's bounding box when cropping
CROP_MARGIN = 4
RECORD_VERSION = 1


def pack_mask(mask: np.ndarray) -> str:
    """A boolean array as compact text (bit-packed, zlib, base64); see :func:`unpack_mask`."""
    return base64.b64encode(zlib.compress(np.packbits(mask.astype(bool).ravel()).tobytes(), 6)).decode("ascii")


def unpack_mask(text: str, shape_zyx: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_mask`."""
    bits = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8)
    return np.unpackbits(bits, count=int(np.prod(shape_zyx))).astype(bool).reshape(shape_zyx)


@dataclass
class PrepRecord:
    """Everything needed to put a model-grid array back onto the input grid (JSON-serialisable)."""

    original: dict  # the input grid: size (x, y, z), spacing, origin, direction (+ orientation code)
    steps: list[dict] = field(default_factory=list)
    normalization: dict = field(default_factory=dict)  # parameters normalize() actually used
    target_normalization: dict = field(default_factory=dict)  # prepare_pair: the target's parameters
    model_shape: list[int] = field(default_factory=list)  # (z, y, x) of the prepared array
    mask_source: str = "auto"  # "auto", "user" or "none"
    body_mask: str = ""  # the body mask on the input grid, packed (pack_mask)
    role: str = "input"
    warnings: list[str] = field(default_factory=list)
    version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PrepRecord":
        """The record written by :meth:`to_dict`."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(z, y, x) shape of the input grid."""
        return tuple(int(v) for v in reversed(self.original["size"]))  # type: ignore[return-value]

    def input_mask(self) -> np.ndarray:
        """The body mask on the input grid (bool, (z, y, x))."""
        if not self.body_mask:
            return np.ones(self.input_shape, dtype=bool)
        return unpack_mask(self.body_mask, self.input_shape)

    def step(self, name: str) -> dict | None:
        """The recorded step called ``name`` (None when it was not needed)."""
        return next((s for s in self.steps if s["step"] == name), None)


@dataclass
class Prepared:
    """A volume on the model grid: normalised float32 array, body mask and the record to undo it."""

    array: np.ndarray
    mask: np.ndarray
    record: PrepRecord

    @cached_property
    def input_mask(self) -> np.ndarray:
        """The body mask on the input grid (decoded once from the record)."""
        return self.record.input_mask()


def _input_mask(array: np.ndarray, image: "sitk.Image", card: Mapping[str, Any], mask: Any,
                modality: str, record_warnings: list[str]) -> tuple[np.ndarray, str]:
    """The user's mask (on the grid of ``image``) or the automatic body mask, and where it came from."""
    if mask is not None:
        return _user_mask(mask, image), "user"
    settings = dict(card.get("body_mask") or {})
    method = settings.get("method", "otsu")
    if method == "none":
        return np.ones(array.shape, dtype=bool), "none"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = body_mask(array, image.GetSpacing(), method=method, threshold=settings.get("threshold"),
                           dilate_mm=float(settings.get("dilate_mm", 0.0)), modality=modality)
    record_warnings.extend(str(w.message) for w in caught)
    return result, "auto"


#: A training target must cover at least this share of its source's box, else the pair is not aligned.
MIN_PAIR_OVERLAP = 0.5


def _user_mask(mask: Any, image: "sitk.Image") -> np.ndarray:
    """A user's mask (image or array) as a boolean (z, y, x) array, checked against ``image``'s grid."""
    import SimpleITK as sitk

    user = sitk.GetArrayViewFromImage(mask) if isinstance(mask, sitk.Image) else np.asarray(mask)
    shape = tuple(image.GetSize())[::-1]
    if user.shape != shape:
        raise InputError(f"The mask has shape {user.shape[::-1]} but the volume {shape[::-1]} (x, y, z).",
                         "Give a mask on the input volume's grid.")
    return np.asarray(user) > 0


def _check_size(shape_zyx: tuple[int, ...], card: Mapping[str, Any]) -> None:
    minimum = card["input"].get("min_size")
    if minimum and any(s < int(m) for s, m in zip(shape_zyx, minimum)):
        raise InputError(
            f"The volume is smaller than the model's window: {list(shape_zyx)} voxels (z, y, x) on the "
            f"model grid, but the model needs at least {list(minimum)}.",
            "Use a volume that covers more of the anatomy, or a model made for smaller inputs.",
        )


def in_model_orientation(image: "sitk.Image", body: np.ndarray,
                         record: PrepRecord) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """``image``'s voxels, its body mask (on the input grid) and spacing (x, y, z) with the axes in the order the
    model sees them (the recorded reorientation applied, no resampling): what out-of-distribution checks compare,
    so they name the right anatomical axes."""
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(image)
    step = record.step("reorient")
    if step is None:
        return array, body, tuple(image.GetSpacing())
    return (geometry.reorient_array(array, step), geometry.reorient_array(body, step),
            tuple(step["grid"]["spacing"]))


def automatic_body(image: "sitk.Image", card: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Like :func:`in_model_orientation`, with the automatic body mask ``prepare`` finds for an input given
    without a mask (the card's ``body_mask`` settings): training inputs are summarised inside it, so their
    statistics compare with those of a translated input. The voxels are a read-only view of ``image``'s when it
    needs no reorientation (and is float32), not a copy."""
    import SimpleITK as sitk

    oriented, step = geometry.reorient(image, card["input"].get("orientation"))
    # a view only of the caller's image: a reoriented image is gone when this returns
    pixels = sitk.GetArrayViewFromImage(image) if step is None else sitk.GetArrayFromImage(oriented)
    array = pixels.astype(np.float32, copy=False)
    body, _ = _input_mask(array, oriented, card, None, str(card.get("source_modality", "")), [])
    return array, body, tuple(oriented.GetSpacing())


def _spec(card: Mapping[str, Any], role: str) -> Mapping[str, Any]:
    return card["normalization"]["output" if role == "target" else "input"]


def _to_model_grid(image: "sitk.Image", card: Mapping[str, Any], mask: Any,
                   role: str) -> tuple[np.ndarray, np.ndarray, PrepRecord]:
    """Body mask, reorientation and resampling: (array, body mask, record) on the uncropped model grid."""
    import SimpleITK as sitk

    if role not in ("input", "target"):
        raise ValueError(f"role must be 'input' or 'target', not {role!r}")
    modality = str(card.get("target_modality" if role == "target" else "source_modality", ""))
    original = geometry.grid_of(image)
    original["orientation"] = geometry.orientation_code(image)
    record = PrepRecord(original=original, role=role)
    # the body mask is found on the reoriented volume, so it does not depend on how the volume is stored
    oriented, step = geometry.reorient(image, card["input"].get("orientation"))
    array = sitk.GetArrayFromImage(oriented).astype(np.float32, copy=False)
    if step is not None:
        record.steps.append(step)
        if mask is not None:
            mask = geometry.reorient_array(_user_mask(mask, image), step)
    body, record.mask_source = _input_mask(array, oriented, card, mask, modality, record.warnings)
    if record.mask_source != "none":
        record.body_mask = pack_mask(geometry.unreorient_array(body, step) if step is not None else body)
    step = geometry.resample_step(geometry.grid_of(oriented), card["input"].get("spacing"))
    if step is not None:
        record.steps.append(step)
        background = float(array.min())
        array = sitk.GetArrayFromImage(geometry.resample_to_grid(oriented, step["to"], default=background,
                                                                 extrapolate=True))
        body = geometry.resample_mask(body, step["from"], step["to"])
    _check_size(array.shape, card)
    return array, body, record


def prepare(image: "sitk.Image", card: Mapping[str, Any], mask: Any = None, role: str = "input") -> Prepared:
    """Bring ``image`` onto the model grid of ``card`` (normalised, float32, (z, y, x)) and record how.

    ``role="input"`` uses ``normalization.input`` and the source modality; ``role="target"`` (training
    targets without a source) uses ``normalization.output`` and the target modality. ``mask`` (a
    SimpleITK image or array on the input grid) replaces the automatic body mask.
    """
    array, body, record = _to_model_grid(image, card, mask, role)
    return _finish(array, body, card, _spec(card, role), record)


def _finish(array: np.ndarray, body: np.ndarray, card: Mapping[str, Any], spec: Mapping[str, Any],
            record: PrepRecord) -> Prepared:
    """Normalise, crop and pad (the last recorded steps), filling in ``record``."""
    normalised, record.normalization = normalize(array, body, spec)
    del array
    pad_value = float(normalised.min())  # the normalised background
    crop = geometry.crop_step(body, CROP_MARGIN)
    if crop is not None:
        record.steps.append(crop)
        normalised, body = geometry.crop_array(normalised, crop), geometry.crop_array(body, crop)
    target = geometry.model_shape(normalised.shape, card["input"], card.get("dimensionality", "3d"))
    pad = geometry.pad_step(normalised.shape, target, pad_value)
    if pad is not None:
        record.steps.append(pad)
        normalised, body = geometry.pad_array(normalised, pad, pad_value), geometry.pad_array(body, pad, False)
    record.model_shape = [int(s) for s in normalised.shape]
    return Prepared(np.ascontiguousarray(normalised, dtype=np.float32), np.ascontiguousarray(body, dtype=bool), record)


def _on_grid(target: "sitk.Image", source: "sitk.Image") -> "sitk.Image":
    """``target`` on ``source``'s grid (resampled linearly unless the grids already agree)."""
    from MedTranslateLib.io.volumes import grid_differences

    if not grid_differences(target, source):
        return target
    import SimpleITK as sitk

    overlap = geometry.overlap_fraction(source, target)
    if overlap < MIN_PAIR_OVERLAP:
        raise InputError(f"The target covers only {overlap:.0%} of its source volume in space (origins "
                         f"{plain_numbers(source.GetOrigin(), '.1f')} and {plain_numbers(target.GetOrigin(), '.1f')} "
                         "mm): the pair is not aligned.",
                         "Register the target to the source (or fix their origins), or leave this case out.")
    minimum = float(sitk.GetArrayViewFromImage(target).min())
    return geometry.resample_to_grid(target, geometry.grid_of(source), default=minimum)


def pair_grid_note(source: "sitk.Image", target: "sitk.Image") -> str | None:
    """How a training target's grid differs from its source's, when :func:`prepare_pair` will resample it onto
    the source (worth a word: paired data must be co-registered), e.g. "origin (40, 0, 0) vs (0, 0, 0); covers 80 %
    of the source"; None when the grids agree."""
    from MedTranslateLib.io.volumes import grid_differences

    differences = grid_differences(target, source)
    if not differences:
        return None
    return "; ".join(differences) + f"; covers {geometry.overlap_fraction(source, target):.0%} of the source"


def prepare_pair(source: "sitk.Image", target: "sitk.Image", card: Mapping[str, Any],
                 mask: Any = None) -> tuple[Prepared, np.ndarray]:
    """Prepare a training pair: the source as in :func:`prepare`, the target through the SAME geometric
    steps (same grid, crop and padding) normalised with ``normalization.output``.

    A target not on the source's grid is first resampled onto it (paired data must be co-registered).
    Returns (prepared source, target array on the model grid).
    """
    import SimpleITK as sitk

    source_array, body, record = _to_model_grid(source, card, mask, "input")
    target_array = sitk.GetArrayFromImage(_on_grid(target, source)).astype(np.float32, copy=False)
    for step in record.steps:
        if step["step"] == "reorient":
            target_array = geometry.reorient_array(target_array, step)
        elif step["step"] == "resample":
            target_array = geometry.resample_array(target_array, step["from"], step["to"],
                                                   default=float(target_array.min()))
    normalised, record.target_normalization = normalize(target_array, body, card["normalization"]["output"])
    del target_array
    prepared = _finish(source_array, body, card, _spec(card, "input"), record)
    pad_value = float(normalised.min())
    for step in record.steps:
        if step["step"] == "crop":
            normalised = geometry.crop_array(normalised, step)
        elif step["step"] == "pad":
            normalised = geometry.pad_array(normalised, step, pad_value)
    return prepared, np.ascontiguousarray(normalised, dtype=np.float32)


def _back_to_input_grid(physical: np.ndarray, record: PrepRecord, background: float) -> np.ndarray:
    """Undo pad, crop, resampling and orientation and put ``background`` outside the body: (z, y, x) float32 on
    the input's grid."""
    if list(physical.shape) != list(record.model_shape):
        raise ModelError(f"The model returned an array of shape {list(physical.shape)} but "
                         f"{record.model_shape} (z, y, x) was prepared.",
                         "The model package or its family is inconsistent; report this model.")
    out = physical
    for step in reversed(record.steps):
        if step["step"] == "pad":
            out = geometry.unpad_array(out, step)
        elif step["step"] == "crop":
            out = geometry.uncrop_array(out, step, background)
        elif step["step"] == "resample":
            out = geometry.resample_array(out, step["to"], step["from"], default=background)
        elif step["step"] == "reorient":
            out = geometry.unreorient_array(out, step)
    # a copy only where no step made a new array: the caller's ``physical`` is never written to
    out = np.array(out, dtype=np.float32, copy=True) if np.shares_memory(out, physical) else \
        np.ascontiguousarray(out, dtype=np.float32)
    if record.mask_source != "none":
        out[~record.input_mask()] = np.float32(background)
    return out


def on_input_grid(array: np.ndarray, record: PrepRecord | Mapping[str, Any]) -> "sitk.Image":
    """A (z, y, x) array on the input's grid as an image with the input's exact geometry."""
    import SimpleITK as sitk

    if not isinstance(record, PrepRecord):
        record = PrepRecord.from_dict(record)
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(tuple(record.original["spacing"]))
    image.SetOrigin(tuple(record.original["origin"]))
    image.SetDirection(tuple(record.original["direction"]))
    return image


def restore_array(array: np.ndarray, record: PrepRecord | Mapping[str, Any], spec: Mapping[str, Any],
                  background: float | None = None, params: Mapping[str, Any] | None = None) -> np.ndarray:
    """A model-grid prediction (network range) back on the input's grid in physical units, as a (z, y, x) float32
    array (see :func:`restore`)."""
    if not isinstance(record, PrepRecord):
        record = PrepRecord.from_dict(record)
    physical = denormalize(array, spec, params)
    if background is None:
        background = spec.get("background")
    if background is None:
        background = float(denormalize(np.array([-1.0], dtype=np.float32), spec, params)[0])
    return _back_to_input_grid(physical, record, float(background))


def restore(array: np.ndarray, record: PrepRecord | Mapping[str, Any], spec: Mapping[str, Any],
            background: float | None = None, params: Mapping[str, Any] | None = None) -> "sitk.Image":
    """A model-grid prediction (network range) back on the input's exact grid, in physical units.

    ``spec`` is the output normalisation (``params`` only to invert a specific normalisation exactly).
    ``background`` (default: the spec's ``background``, else the value -1 maps to) fills everything
    outside the body mask and outside the cropped box.
    """
    return on_input_grid(restore_array(array, record, spec, background, params), record)
