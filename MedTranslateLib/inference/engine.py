"""The inference engine: runs a family's predictor over a prepared, normalised volume.

2D / 2.5D models see slices along the card's ``slice_axis`` (batched; slices without body voxels are
skipped and get the background value -1; 2.5D adds ``context_slices`` neighbours each side as channels,
edge slices replicated). 3D models run through MONAI's Gaussian-weighted ``sliding_window_inference``.
Several passes (stochastic samples, or flip test-time augmentation) give a mean and a population standard
deviation (divided by the number of passes). Each sample draws its noise from a :class:`NoiseField` over the whole
volume (seeded from the run's seed and the sample's index): every slice or window gets its part of it, so a 3D
sample is one coherent sample across overlapping windows, and no sample depends on the batch size.
On CUDA the engine uses mixed precision and channels-last; when the GPU runs out of memory it halves the
batch, and at batch 1 moves the predictor to the CPU and says so in ``Prediction.warnings``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from MedTranslateLib.errors import DeviceError, ModelError
from MedTranslateLib.families.base import InferenceOptions, NoiseField, Predictor, derive_seed, sample_count
from MedTranslateLib.inference.device import autocast_for
from MedTranslateLib.inference.optimize import uses_channels_last
from MedTranslateLib.progress import ProgressTracker

#: numpy axis of a (z, y, x) array for each slice direction (in the card's orientation)
SLICE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
BACKGROUND = -1.0
DEFAULT_BATCH_2D = 16
DEFAULT_BATCH_3D = 2
CUDA_MIN_BATCH_2D = 64
SLAB = 16  # slices per step when accumulating mean / std (bounds temporary memory)

#: how allocation failures read when they do not come as ``torch.cuda.OutOfMemoryError``: cuBLAS / cuDNN workspace
#: allocations and the CPU allocator raise plain ``RuntimeError``s with these in the message
MEMORY_ERROR_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                        "DefaultCPUAllocator: not enough memory", "DefaultCPUAllocator: can't allocate memory")

CPU_FALLBACK_WARNING = ("The GPU ran out of memory even with one slice (or patch) at a time; the rest of the "
                        "volume was computed on the CPU (slower). Close other GPU programs or use a smaller model.")


@dataclass
class Prediction:
    """The normalised prediction (z, y, x) float32, its per-voxel std (None for a single pass), warnings."""

    mean: np.ndarray
    std: np.ndarray | None
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # units (slices / windows) per pass, unit shape, passes


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says a device (GPU or CPU) ran out of memory."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in MEMORY_ERROR_MARKERS)


def to_device_layout(inputs: torch.Tensor, device: torch.device, channels_last: bool | None = None) -> torch.Tensor:
    """``inputs`` as float32 on ``device``, channels-last when asked (default: on CUDA, for tensor cores)."""
    device = torch.device(device)
    if device.type == "cuda" and inputs.device.type == "cpu":
        inputs = inputs.float().pin_memory()  # page-locked: the copy to the GPU runs asynchronously
    inputs = inputs.to(device, dtype=torch.float32, non_blocking=True)
    if channels_last is None:
        channels_last = device.type == "cuda"
    if channels_last and inputs.dim() in (4, 5):
        layout = torch.channels_last if inputs.dim() == 4 else torch.channels_last_3d
        inputs = inputs.contiguous(memory_format=layout)
    return inputs


def predictor_channels_last(predictor: Predictor) -> bool | None:
    """Whether a predictor's network (its ``net``) stores its weights channels-last, so its inputs should too;
    None when the predictor has no single network (the device's default layout then applies)."""
    net = getattr(predictor, "net", None)
    return uses_channels_last(net) if isinstance(net, torch.nn.Module) else None


def forward_context(device: torch.device) -> Any:
    """The autocast context a network pass runs in on ``device`` (bf16/fp16 on CUDA, none on the CPU)."""
    return autocast_for(torch.device(device))


class BatchRunner:
    """Feeds batches to a predictor on a device with mixed precision; when the device runs out of memory it
    retries with half the batch, and on CUDA at batch size 1 falls back to the CPU (when the predictor has a
    ``to`` method). In a stochastic pass each chunk gets its part of the pass's :class:`NoiseField`."""

    def __init__(self, predictor: Predictor, device: torch.device, batch_size: int) -> None:
        self.predictor = predictor
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.warnings: list[str] = []
        self.fell_back = False
        self.noise: NoiseField | None = None

    def start_pass(self, seed: int | None) -> None:
        """Begin a pass; a stochastic pass (a ``seed``) draws its noise from a field seeded with it."""
        self.noise = NoiseField(seed) if seed is not None else None

    def _forward(self, chunk: torch.Tensor, origins: np.ndarray) -> torch.Tensor:
        inputs = to_device_layout(chunk, self.device, predictor_channels_last(self.predictor))
        noise = self.noise.window(origins) if self.noise is not None else None
        with forward_context(self.device):
            out = self.predictor(inputs, noise)
        return out.float()

    def _recover_from_oom(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            return
        if self.device.type == "cpu" and not self.fell_back:
            raise DeviceError("The computer ran out of memory even with one slice (or patch) at a time.",
                              "Close other programs, or translate a smaller (cropped or resampled) volume.")
        move = getattr(self.predictor, "to", None)
        if self.fell_back or move is None:
            raise DeviceError("The device ran out of memory even with one slice (or patch) at a time.",
                              "Use --device cpu, close other GPU programs, or use a smaller model.")
        move(torch.device("cpu"))
        self.device = torch.device("cpu")
        self.fell_back = True
        self.warnings.append(CPU_FALLBACK_WARNING)

    def __call__(self, batch: torch.Tensor, origins: np.ndarray | None = None) -> torch.Tensor:
        """Predict ``batch`` (N, C, *spatial) in chunks of ``batch_size``; float32 on ``batch``'s device.

        ``origins`` (N, 3): where each item lies, (slice index, 0, 0) for a slice or the (z, y, x) of a window's
        first voxel in the padded crop the sliding window runs over (default: the item's index); it fixes the
        item's noise in a stochastic pass."""
        if origins is None:
            origins = np.zeros((batch.shape[0], 3), dtype=np.int64)
            origins[:, 0] = np.arange(batch.shape[0])
        outputs: list[torch.Tensor] = []
        start = 0
        while start < batch.shape[0]:
            size = min(self.batch_size, batch.shape[0] - start)
            try:
                out = self._forward(batch[start:start + size], origins[start:start + size])
            except RuntimeError as error:  # torch.cuda.OutOfMemoryError is a RuntimeError too
                if not is_out_of_memory(error):
                    raise
                self._recover_from_oom()
                continue
            outputs.append(out.to(batch.device))
            start += size
        return torch.cat(outputs)


def _predict_slices(array: np.ndarray, mask: np.ndarray, axis: int, context: int, runner: BatchRunner,
                    chunk: int, advance: Callable[[int], None]) -> np.ndarray:
    """One slice-wise pass (2D / 2.5D); slices without mask voxels are left at the background value."""
    volume = np.moveaxis(array, axis, 0)
    body = np.moveaxis(mask, axis, 0)
    result = np.full(array.shape, BACKGROUND, dtype=np.float32)
    out_view = np.moveaxis(result, axis, 0)
    count = volume.shape[0]
    indices = np.flatnonzero(body.any(axis=(1, 2)))
    offsets = np.arange(-context, context + 1)
    for start in range(0, len(indices), chunk):
        group = indices[start:start + chunk]
        neighbours = np.clip(group[:, None] + offsets[None, :], 0, count - 1)
        batch = np.asarray(volume[neighbours], dtype=np.float32)  # (B, C, H, W)
        origins = np.zeros((len(group), 3), dtype=np.int64)
        origins[:, 0] = group
        prediction = runner(torch.from_numpy(batch), origins)
        out_view[group] = prediction[:, 0].numpy()
        advance(len(group))
    return result


def _window_count(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Number of windows MONAI's sliding window visits (for progress)."""
    total = 1
    for size, window in zip(shape, roi):
        if size <= window:
            continue
        interval = max(int(window * (1 - overlap)), 1)
        total *= int(math.ceil((size - window) / interval)) + 1
    return total


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The mask's bounding box (None when the mask is empty)."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _window_region(mask: np.ndarray, roi: tuple[int, ...]) -> tuple[slice, ...] | None:
    """The region the sliding window covers: the mask's bounding box widened by half a window on each side
    (within the volume), so surface voxels are seen with the background around them, as training patches
    centred on body voxels show them, not at a window's edge. None when the mask is empty."""
    box = _bounding_box(mask)
    if box is None:
        return None
    return tuple(slice(max(0, part.start - size // 2), min(extent, part.stop + size // 2))
                 for part, size, extent in zip(box, roi, mask.shape))


def _predict_windows(array: np.ndarray, mask: np.ndarray, roi: tuple[int, ...], overlap: float,
                     runner: BatchRunner, sw_device: torch.device, advance: Callable[[int], None]) -> np.ndarray:
    """One 3D pass: Gaussian-weighted sliding window over :func:`_window_region` (stitched on the CPU); a volume
    smaller than a window is padded with the background value, as training patches are. Each window is
    predicted with its position, so in a stochastic pass overlapping windows see the same noise."""
    from monai.inferers import sliding_window_inference

    result = np.full(array.shape, BACKGROUND, dtype=np.float32)
    box = _window_region(mask, roi)
    if box is None:
        return result
    crop = torch.from_numpy(np.ascontiguousarray(array[box], dtype=np.float32))[None, None]

    def window_fn(windows: torch.Tensor, slices: list[list[slice]]) -> torch.Tensor:
        # MONAI's window slices: [batch, channel, z, y, x] in the (padded) crop
        origins = np.array([[int(part.start or 0) for part in window[2:]] for window in slices], dtype=np.int64)
        out = runner(windows, origins)
        advance(windows.shape[0])
        return out

    stitched = sliding_window_inference(crop, roi, runner.batch_size, window_fn, overlap=overlap, mode="gaussian",
                                        sw_device=sw_device, device=torch.device("cpu"), progress=False,
                                        with_coord=True, padding_mode="constant", cval=BACKGROUND)
    result[box] = torch.as_tensor(stitched)[0, 0].numpy()
    return result


def _passes(predictor: Predictor, options: InferenceOptions, card: Mapping[str, Any], flip_axes: tuple[int, int]
            ) -> list[tuple[int | None, tuple[int, ...]]]:
    """(seed, flipped axes) per pass: stochastic samples (each seeded from the run's seed and its index, so two
    seeds share no sample), flip TTA, or a single deterministic pass."""
    if getattr(predictor, "stochastic", False):
        return [(derive_seed(options.seed, i), ()) for i in range(sample_count(options, card))]
    if options.tta:
        a, b = flip_axes
        return [(None, ()), (None, (a,)), (None, (b,)), (None, (a, b))]
    return [(None, ())]


class _RunningStats:
    """Mean and population std (divided by the number of passes) over passes (Welford), slab by slab in float32."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, value: np.ndarray) -> None:
        self.count += 1
        if self.mean is None:
            self.mean = np.array(value, dtype=np.float32)  # copy (value may be a flipped view)
            return
        if self.m2 is None:
            self.m2 = np.zeros_like(self.mean)
        for start in range(0, value.shape[0], SLAB):
            part = slice(start, start + SLAB)
            delta = value[part] - self.mean[part]
            self.mean[part] += delta / self.count
            self.m2[part] += delta * (value[part] - self.mean[part])

    def std(self) -> np.ndarray | None:
        """The standard deviation, computed in place of the running sums to save a volume of memory: call it
        once, after the last pass (None for fewer than two passes)."""
        if self.count < 2 or self.m2 is None:
            return None
        self.m2 /= self.count
        np.sqrt(self.m2, out=self.m2)
        return self.m2


@dataclass
class _Plan:
    """How a card says to walk the volume."""

    dimensionality: str
    axis: int
    context: int = 0
    batch: int = DEFAULT_BATCH_2D
    roi: tuple[int, ...] = (64, 64, 64)
    overlap: float = 0.5

    def units(self, body: np.ndarray) -> int:
        """Work items of one pass (body slices, or sliding windows) for progress."""
        if self.dimensionality == "3d":
            box = _window_region(body, self.roi)
            return _window_count(tuple(s.stop - s.start for s in box) if box else (), self.roi, self.overlap)
        return int(np.count_nonzero(np.moveaxis(body, self.axis, 0).any(axis=(1, 2))))


def _plan(card: Mapping[str, Any], options: InferenceOptions, device: torch.device | None = None) -> _Plan:
    """Read and check the card's input settings (slice axis, 2.5D context, 3D window, batch size).

    On CUDA, 2D/2.5D slices go in batches of at least :data:`CUDA_MIN_BATCH_2D` (a GPU is idle on 8 slices;
    out-of-memory halves the batch again), unless the options give ``batch_size`` explicitly."""
    card_input = card.get("input", {})
    extra = options.extra or {}
    dimensionality = str(card.get("dimensionality", "2d")).lower()
    axis = SLICE_AXES.get(str(card_input.get("slice_axis", "axial")))
    if axis is None:
        raise ModelError(f"Unknown slice_axis '{card_input.get('slice_axis')}' in the model card.",
                         "Use axial, coronal or sagittal.")
    in_channels = int(card.get("architecture", {}).get("in_channels", 1))
    if dimensionality == "3d":
        if in_channels != 1:
            raise ModelError(f"A 3D model must take one input channel, not {in_channels}.",
                             "Fix architecture.in_channels in the model card.")
        return _Plan("3d", axis, batch=int(extra.get("sw_batch_size", card_input.get("batch_size", DEFAULT_BATCH_3D))),
                     roi=tuple(int(s) for s in card_input.get("patch_size") or (64, 64, 64)),
                     overlap=float(card_input.get("overlap", 0.5)))
    if dimensionality not in ("2d", "2.5d"):
        raise ModelError(f"Unknown dimensionality '{dimensionality}' in the model card.", "Use 2d, 2.5d or 3d.")
    context = int(card_input.get("context_slices", (in_channels - 1) // 2)) if dimensionality == "2.5d" else 0
    if 2 * context + 1 != in_channels:
        raise ModelError(f"The card's {dimensionality} input gives {2 * context + 1} channels but the network "
                         f"takes {in_channels}.", "Fix input.context_slices or architecture.in_channels.")
    batch = int(extra.get("batch_size", card_input.get("batch_size", DEFAULT_BATCH_2D)))
    if device is not None and torch.device(device).type == "cuda" and "batch_size" not in extra:
        batch = max(batch, CUDA_MIN_BATCH_2D)
    return _Plan(dimensionality, axis, context, batch)


def predict_volume(array: np.ndarray, mask: np.ndarray | None, card: Mapping[str, Any], predictor: Predictor,
                   options: InferenceOptions, device: torch.device, tracker: ProgressTracker,
                   restore_pass: Callable[[np.ndarray], np.ndarray] | None = None) -> Prediction:
    """Predict a normalised (z, y, x) volume with ``predictor`` as the card's ``dimensionality`` says.

    Reports progress through ``tracker.update`` (which also raises ``Cancelled``) and returns the prediction (the
    mean of sampled passes; the unflipped pass under flip TTA) and, for several passes, the standard deviation, both
    (z, y, x) float32 in the normalised space, each pass clipped to the network range [-1, 1] as the output will
    be. ``restore_pass`` maps every pass to where the statistics are taken instead (the input grid in physical
    units): the spread of resampled passes is not the resampled spread, which overstates it. Each restored pass
    is folded in and dropped; under flip TTA the plain pass is kept on the model grid and restored once more at
    the end (``restore_pass`` must be deterministic), so no restored volume is held beside the running sums.
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3:
        raise ModelError(f"The engine expects a 3D (z, y, x) volume, got shape {array.shape}.",
                         "This is a bug in the preprocessing; please report it.")
    body = np.ones(array.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
    if body.shape != array.shape:
        raise ModelError(f"The body mask {body.shape} does not match the volume {array.shape}.",
                         "Give a mask on the same grid as the input volume.")
    device = torch.device(device)
    plan = _plan(card, options, device)
    passes = _passes(predictor, options, card, tuple(a for a in range(3) if a != plan.axis))
    units = plan.units(body)
    total = max(1, units) * len(passes)
    unit_name = "windows" if plan.dimensionality == "3d" else "slices"
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        tracker.update(min(done / total, 1.0), f"{done}/{total} {unit_name}")

    if hasattr(predictor, "step_callback"):  # diffusion: cancel is also honoured between denoising steps
        predictor.step_callback = lambda step, steps: tracker.check()
    runner = BatchRunner(predictor, device, plan.batch)
    stats = _RunningStats()
    # flip TTA only measures the spread: the output stays the plain pass, as in a run without an uncertainty map
    flipped_passes = any(flips for _, flips in passes)
    plain: np.ndarray | None = None
    tracker.update(0.0)
    with torch.inference_mode():
        for seed, flips in passes:
            runner.start_pass(seed)
            source = np.flip(array, flips) if flips else array
            source_mask = np.flip(body, flips) if flips else body
            if plan.dimensionality == "3d":
                result = _predict_windows(source, source_mask, plan.roi, plan.overlap, runner, device, advance)
            else:
                result = _predict_slices(source, source_mask, plan.axis, plan.context, runner, plan.batch, advance)
            aligned = np.clip(np.flip(result, flips) if flips else result, -1.0, 1.0, out=None if flips else result)
            if flipped_passes and not flips:
                plain = aligned  # kept on the model grid: restored again at the end, not held as a restored volume
            stats.add(restore_pass(aligned) if restore_pass is not None else aligned)
            tracker.check()
    tracker.update(1.0, "prediction finished")
    std = stats.std()
    if plain is None:
        mean = stats.mean
    else:  # flip TTA: the running mean only served the spread; it is freed before the plain pass is restored
        stats.mean = None
        mean = restore_pass(plain) if restore_pass is not None else plain
    unit_shape = plan.roi if plan.dimensionality == "3d" else tuple(
        n for a, n in enumerate(array.shape) if a != plan.axis)
    return Prediction(mean, std, list(runner.warnings),
                      {"units": units, "unit_shape": [int(n) for n in unit_shape], "passes": len(passes),
                       "batch_size": runner.batch_size, "device": runner.device.type})
