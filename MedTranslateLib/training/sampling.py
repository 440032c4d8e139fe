"""Loading (each case read once, prepared with the card's preprocessing, cached as float32) and
body-weighted slice (2D / 2.5D) or patch (3D) sampling with optional MONAI augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from MedTranslateLib.errors import ConfigError, InputError
from MedTranslateLib.training.datasets import Case

AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
MAX_CENTRES = 200_000


@dataclass
class PreparedCase:
    """A case on the model grid: normalised float32 arrays (z, y, x), a bool body mask, and facts for the card.

    ``source`` or ``target`` is None for unpaired cases.
    """

    name: str
    subject_id: str
    source: np.ndarray | None
    target: np.ndarray | None
    mask: np.ndarray
    spacing_xyz: tuple[float, float, float]
    reference: dict[str, Any] | None = None   # raw-unit input statistics (``evaluation.ood.intensity_reference``)
    grid_note: str | None = None  # how the target's grid differed from the source's (it was resampled onto it)
    #: (start, stop) per array axis of the real voxels; the rest is padding up to the model's minimum size
    region: tuple[tuple[int, int], ...] | None = None

    @property
    def real_region(self) -> tuple[tuple[int, int], ...]:
        return self.region or tuple((0, n) for n in self.mask.shape)

    def unpadded(self, array: np.ndarray) -> np.ndarray:
        """``array`` (on this case's grid) without the padding: metrics are measured on real voxels only."""
        return array[tuple(slice(a, b) for a, b in self.real_region)]

    def slab(self, z0: int, z1: int) -> "PreparedCase":
        """Slices ``[z0, z1)`` of the real voxels along the first array axis (z-slab hold-out)."""
        first = self.real_region[0][0]
        cut = (lambda a: None if a is None else np.ascontiguousarray(a[first + z0:first + z1]))
        return PreparedCase(self.name, self.subject_id, cut(self.source), cut(self.target), cut(self.mask),
                            self.spacing_xyz, self.reference, self.grid_note,
                            ((0, z1 - z0),) + self.real_region[1:])


def _read(path: Any):
    from MedTranslateLib.io import read_volume

    result = read_volume(path)
    return result[0] if isinstance(result, tuple) else result


def load_case(case: Case, card: Mapping[str, Any]) -> PreparedCase:
    """Read one case once and prepare it with the card's preprocessing (``prepare_pair`` for pairs)."""

    from MedTranslateLib import preprocess
    from MedTranslateLib.preprocess.prepare import pair_grid_note

    source = _read(case.source_path) if case.source_path else None
    target = _read(case.target_path) if case.target_path else None
    reference = source if source is not None else target
    mask = None
    if case.mask_path is not None:
        from MedTranslateLib.io import read_mask

        mask = read_mask(case.mask_path, reference)
    _check_modalities(case, source, target, mask, card)
    grid_note = None
    if source is not None and target is not None:
        grid_note = pair_grid_note(source, target)
        prepared, target_array = preprocess.prepare_pair(source, target, card, mask)
        source_array, body = prepared.array, prepared.mask
    elif source is not None:
        prepared = preprocess.prepare(source, card, mask)
        source_array, target_array, body = prepared.array, None, prepared.mask
    else:
        prepared = preprocess.prepare(target, card, mask, role="target")
        source_array, target_array, body = None, prepared.array, prepared.mask
    spacing = card["input"].get("spacing") or list(reference.GetSpacing())
    as32 = (lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float32))
    stats = _input_reference(source, mask is not None, prepared, card) if source is not None else None
    return PreparedCase(case.name, case.subject_id, as32(source_array), as32(target_array),
                        np.ascontiguousarray(body, dtype=bool), tuple(float(s) for s in spacing), stats, grid_note,
                        _real_region(prepared.record, body.shape))


def _real_region(record: Any, shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The real voxels' (start, stop) per axis: the model grid less the padding added last (``pad`` step)."""
    pads = [step for step in record.steps if step["step"] == "pad"]
    if not pads:
        return tuple((0, int(n)) for n in shape)
    return tuple((int(b), int(n) - int(a)) for b, a, n in zip(pads[-1]["before"], pads[-1]["after"], shape))


def _check_modalities(case: Case, source: Any, target: Any, mask: Any, card: Mapping[str, Any]) -> None:
    """Refuse a case whose source or target clearly is not the modality the config says (before any training)."""
    import SimpleITK as sitk

    from MedTranslateLib.preprocess.modality import check_training_modality

    for role, image, path, modality in (("source", source, case.source_path, card["source_modality"]),
                                        ("target", target, case.target_path, card["target_modality"])):
        if image is not None:
            body = sitk.GetArrayViewFromImage(mask) > 0 if mask is not None and image is source else None
            check_training_modality(sitk.GetArrayViewFromImage(image), body, modality, f"{role} {path}")


def _input_reference(source: Any, has_mask: bool, prepared: Any, card: Mapping[str, Any]) -> dict[str, Any]:
    """Raw-unit statistics of one training input (for out-of-distribution warnings), in the model's orientation
    and inside the automatic body mask that translate uses when no mask is given, even when the data set has
    its own masks: like is compared with like."""
    from MedTranslateLib.evaluation.ood import intensity_reference
    from MedTranslateLib.preprocess import automatic_body, in_model_orientation

    if has_mask:
        array, body, spacing = automatic_body(source, card)
    else:  # the prepared mask is the automatic one already
        array, body, spacing = in_model_orientation(source, prepared.input_mask, prepared.record)
    return intensity_reference([array], [body], spacing)


def load_cases_prepared(cases: Sequence[Case], card: Mapping[str, Any],
                        on_case: Callable[[int, int], None] | None = None) -> list[PreparedCase]:
    """Prepare every case (in order), calling ``on_case(i, n)`` after each (progress / cancel)."""
    out = []
    for i, case in enumerate(cases):
        try:
            out.append(load_case(case, card))
        except InputError as error:  # "The input volume 'ct.nii.gz' ..." alone does not say which of many
            where = ", ".join(str(p) for p in (case.source_path, case.target_path) if p)
            raise InputError(f"Training case {case.name} ({where}): {error.problem}", error.fix) from None
        if on_case is not None:
            on_case(i + 1, len(cases))
    return out


def _window(array: np.ndarray, start: Sequence[int], size: Sequence[int], pad: float,
            clamp_first: bool = False) -> np.ndarray:
    """``array[start:start+size]`` per axis, padded with ``pad`` outside (axis 0 replicated if ``clamp_first``)."""
    out = np.full(tuple(size), pad, dtype=array.dtype)
    if clamp_first:
        idx = np.clip(np.arange(start[0], start[0] + size[0]), 0, array.shape[0] - 1)
        array = array[idx]
        start = (0, *start[1:])
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


class Sampler:
    """Draws training batches from prepared cases.

    2D/2.5D: slices along ``slice_axis`` (2.5D: ``context`` neighbours each side as channels, edges
    replicated), cropped/padded in-plane to ``size`` (y, x). 3D: patches of ``size`` (z, y, x).
    With probability ``body_fraction`` a sample is centred on a random body voxel, else anywhere.
    Unpaired cases, or ``unpaired=True`` (families trained without pairs): source and target are drawn
    independently, from different cases where there are several, so no correspondence can leak into training.
    """

    def __init__(self, cases: Sequence[PreparedCase], dimensionality: str, size: Sequence[int],
                 slice_axis: str = "axial", context: int = 0, body_fraction: float = 0.9, seed: int = 0,
                 augment: bool = False, contrast_augment: bool = False, unpaired: bool = False) -> None:
        if not cases:
            raise ConfigError("No training cases to sample from.", "Check the data and the split.")
        self.dims = 3 if dimensionality == "3d" else 2
        self.context = context
        self.size = tuple(int(s) for s in size)
        self.body_fraction = body_fraction
        self.rng = np.random.default_rng(seed)
        axis = AXIS[slice_axis] if self.dims == 2 else 0
        move = (lambda a: None if a is None else np.moveaxis(a, axis, 0))
        self.cases = [PreparedCase(c.name, c.subject_id, move(c.source), move(c.target), move(c.mask),
                                   c.spacing_xyz) for c in cases]
        self.sources = [c for c in self.cases if c.source is not None]
        self.targets = [c for c in self.cases if c.target is not None]
        if not self.sources or not self.targets:
            raise ConfigError("Training needs cases with a source and cases with a target.", "Check the data.")
        self.paired = not unpaired and all(c.source is not None and c.target is not None for c in self.cases)
        self._centres = {id(c): self._body_centres(c.mask) for c in self.cases}
        # the augmentation's own generator: switching augmentation on does not change which crops are drawn
        self.augment_rng = np.random.default_rng([seed, 1])
        self.augment = self._augmentation(augment, contrast_augment) if (augment or contrast_augment) else None
        self._reseed_augmentation()

    @property
    def generators(self) -> list[np.random.Generator]:
        """Every random generator of the sampler (crops, augmentation): what a checkpoint must save to resume
        the exact sample stream."""
        return [self.rng, self.augment_rng]

    def _body_centres(self, mask: np.ndarray) -> np.ndarray:
        flat = np.flatnonzero(mask)
        if flat.size > MAX_CENTRES:
            flat = np.sort(self.rng.choice(flat, MAX_CENTRES, replace=False))
        return flat

    def samples_per_epoch(self) -> int:
        """Body slices (2D) or body-covering patches (3D) in the training cases: one epoch of samples."""
        if self.dims == 2:
            return int(sum(int(np.any(c.mask, axis=(1, 2)).sum()) for c in self.targets))
        voxels = float(np.prod(self.size))
        return int(max(1, sum(np.ceil(c.mask.sum() / voxels) for c in self.targets)))

    def _start(self, case: PreparedCase) -> tuple[int, ...]:
        centres = self._centres[id(case)]
        if centres.size and self.rng.random() < self.body_fraction:
            centre = np.unravel_index(int(self.rng.choice(centres)), case.mask.shape)
        else:
            centre = tuple(int(self.rng.integers(0, n)) for n in case.mask.shape)
        if self.dims == 2:
            return (int(centre[0]) - self.context, *(int(c) - s // 2 for c, s in zip(centre[1:], self.size)))
        return tuple(int(c) - s // 2 for c, s in zip(centre, self.size))

    def _crop(self, case: PreparedCase, start: tuple[int, ...], key: str) -> np.ndarray:
        array = getattr(case, key)
        if self.dims == 2:
            if key == "source":
                return _window(array, start, (2 * self.context + 1, *self.size), -1.0, clamp_first=True)
            centre = (start[0] + self.context, *start[1:])
            pad = 0 if key == "mask" else -1.0
            return _window(array, centre, (1, *self.size), pad, clamp_first=True)
        pad = 0 if key == "mask" else -1.0
        return _window(array, start, self.size, pad)[None]

    def sample(self) -> dict[str, np.ndarray]:
        """One sample: ``source`` (C, *size), ``target`` (1, *size), ``mask`` (1, *size) float32."""
        if self.paired:
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            start = self._start(case)
            item = {k: self._crop(case, start, k).astype(np.float32) for k in ("source", "target", "mask")}
        else:
            src = self.sources[int(self.rng.integers(len(self.sources)))]
            others = [c for c in self.targets if c.subject_id != src.subject_id] or self.targets
            tgt = others[int(self.rng.integers(len(others)))]
            s_start, t_start = self._start(src), self._start(tgt)
            item = {"source": self._crop(src, s_start, "source"), "target": self._crop(tgt, t_start, "target"),
                    "mask": self._crop(src, s_start, "mask").astype(np.float32),
                    "target_mask": self._crop(tgt, t_start, "mask").astype(np.float32)}
        if self.augment is not None:
            item = {k: np.asarray(v, dtype=np.float32) for k, v in self.augment(item).items()}
        return item

    def _reseed_augmentation(self) -> None:
        """MONAI's transforms keep their own random state: it is re-seeded from ``augment_rng`` at every batch,
        so a checkpoint of that generator (taken between batches) resumes the augmentation exactly."""
        if self.augment is not None:
            self.augment.compose.set_random_state(seed=int(self.augment_rng.integers(2**31 - 1)))

    def batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` samples stacked; the augmentation is re-seeded first (see ``_reseed_augmentation``)."""
        self._reseed_augmentation()
        items = [self.sample() for _ in range(batch_size)]
        return {k: np.stack([it[k] for it in items]).astype(np.float32) for k in items[0]}

    def _augmentation(self, basic: bool = True, contrast: bool = False) -> "_Augmentation":
        """``basic``: MONAI random flips, a small affine (all images alike) and intensity scale/shift on the source.

        ``contrast``: a random monotone remapping of the source's intensities (gamma, then a random
        piecewise-linear histogram shift), so that a model trained on one sequence's contrast (e.g. spin-echo
        T1) has seen others (e.g. MPRAGE). Both keep the sample's minimum and maximum fixed, so the -1
        background stays -1.
        """
        from monai import transforms as T

        keys = ["source", "target", "mask"] + ([] if self.paired else ["target_mask"])
        spatial = tuple(range(self.dims))
        ops: list[Any] = []
        if basic:
            ops += [T.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in spatial[-2:]]
            if self.paired:  # geometric warps must stay identical for source and target
                ops.append(T.RandAffined(keys, prob=0.3, rotate_range=[0.1] * (1 if self.dims == 2 else 3),
                                         scale_range=[0.05] * self.dims, mode=["bilinear", "bilinear", "nearest"],
                                         padding_mode="border"))
        if contrast:
            ops += source_contrast_ops()
        if basic:
            ops += [T.RandScaleIntensityd("source", factors=0.1, prob=0.5),
                    T.RandShiftIntensityd("source", offsets=0.05, prob=0.5)]
        return _Augmentation(T.Compose(ops))


@dataclass
class _Augmentation:
    """A MONAI ``Compose`` applied to a sample dict (2D samples are (C, H, W): channel-first already)."""

    compose: Any

    def __call__(self, item: dict) -> dict:
        return {k: np.asarray(v) for k, v in self.compose(dict(item)).items()}


def source_contrast_ops(prob: float = 0.5) -> list[Any]:
    """Random monotone remappings of the ``source`` key that keep its minimum and maximum: a gamma in
    [0.5, 2] and a piecewise-linear histogram shift (5-10 control points), each with probability ``prob``."""
    from monai import transforms as T

    return [T.RandAdjustContrastd("source", prob=prob, gamma=(0.5, 2.0)),
            T.RandHistogramShiftd("source", num_control_points=(5, 10), prob=prob)]


def default_slice_size(cases: Sequence[PreparedCase], slice_axis: str, cap: int = 256) -> tuple[int, int]:
    """In-plane crop (y, x): the smallest case's in-plane size, rounded down to a multiple of 16, capped."""
    axis = AXIS[slice_axis]
    shapes = [tuple(s for i, s in enumerate(c.mask.shape) if i != axis) for c in cases]
    size = []
    for dim in range(2):
        smallest = min(s[dim] for s in shapes)
        size.append(int(min(cap, max(16, (smallest // 16) * 16))))
    return size[0], size[1]


def oversized_crop(cases: Sequence[PreparedCase], size: Sequence[int], spatial_dims: int,
                   slice_axis: str) -> str | None:
    """A warning when the training crop (``slice_size`` (y, x) or ``patch_size`` (z, y, x)) is mostly padding:
    even on the largest training volume (after cropping to the body) less than half of its voxels are image."""
    axis = AXIS[slice_axis]
    shapes = [tuple(b - a for a, b in c.real_region) for c in cases]
    if spatial_dims == 2:
        shapes = [tuple(n for i, n in enumerate(shape) if i != axis) for shape in shapes]
    if not shapes:
        return None
    covered = max(float(np.prod([min(int(s), n) / int(s) for s, n in zip(size, shape)])) for shape in shapes)
    if covered >= 0.5:
        return None
    largest = [max(shape[dim] for shape in shapes) for dim in range(len(size))]
    key = "patch_size" if spatial_dims == 3 else "slice_size"
    return (f"{key} {[int(s) for s in size]} is larger than every training volume (at most "
            f"{' x '.join(str(n) for n in largest)} voxels after cropping to the body): its samples are mostly "
            f"padding ({1 - covered:.0%} or more), which costs time and memory and teaches little. Set {key} to at "
            f"most {[min(int(s), n) for s, n in zip(size, largest)]}.")
