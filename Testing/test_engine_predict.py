"""Inference engine: shapes, identity round trips, slice axes, progress, cancel, uncertainty, OOM handling."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from MedTranslateLib.errors import Cancelled, DeviceError, ModelError
from MedTranslateLib.families.base import InferenceOptions, gaussian_noise
from MedTranslateLib.inference import engine
from MedTranslateLib.inference.engine import CPU_FALLBACK_WARNING, BatchRunner, is_out_of_memory, predict_volume
from MedTranslateLib.progress import CancelToken, ProgressTracker

CPU = torch.device("cpu")




def card(dimensionality: str = "2d", slice_axis: str = "axial", context: int = 0, **inputs) -> dict:
    spec = {"slice_axis": slice_axis, "spacing": None, **inputs}
    if dimensionality == "2.5d":
        spec["context_slices"] = context
    return {"dimensionality": dimensionality, "architecture": {"in_channels": 2 * context + 1, "out_channels": 1},
            "input": spec}


class Identity:
    """Returns the centre channel: the engine must give back its input."""

    stochastic = False

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, source: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.batch_sizes.append(source.shape[0])
        centre = source.shape[1] // 2
        return source[:, centre:centre + 1].clone()


class Noisy(Identity):
    stochastic = True

    def __call__(self, source, generator=None):
        noise = gaussian_noise(generator, source[:, :1].shape, source.device)
        return source[:, source.shape[1] // 2:][:, :1] + 0.1 * noise


def volume(shape=(6, 16, 20), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def run(array, mask, spec, predictor, options=None, tracker=None):
    return predict_volume(array, mask, spec, predictor, options or InferenceOptions(), CPU,
                          tracker or ProgressTracker())


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("dimensionality,context", [("2d", 0), ("2.5d", 2)])
def test_slicewise_identity_returns_input(axis, dimensionality, context):
    array = volume()
    result = run(array, np.ones_like(array, bool), card(dimensionality, axis, context, batch_size=3), Identity())
    assert result.mean.shape == array.shape and result.mean.dtype == np.float32
    np.testing.assert_array_equal(result.mean, array)
    assert result.std is None and result.warnings == []


def test_3d_identity_within_tolerance():
    array = volume((12, 14, 18))
    spec = card("3d", patch_size=[8, 8, 8], overlap=0.25, batch_size=2)
    result = run(array, np.ones_like(array, bool), spec, Identity())
    assert result.mean.shape == array.shape
    np.testing.assert_allclose(result.mean, array, atol=1e-5)


def test_3d_covers_the_mask_box_and_half_a_window_around_it_and_nothing_else():
    array = volume((12, 14, 18))
    mask = np.zeros_like(array, bool)
    mask[3:8, 6:10, 4:12] = True
    result = run(array, mask, card("3d", patch_size=[4, 4, 8], overlap=0.5), Identity())
    region = (slice(1, 10), slice(4, 12), slice(0, 16))  # the box widened by (2, 2, 4), within the volume
    np.testing.assert_allclose(result.mean[region], array[region], atol=1e-5)
    outside = np.ones_like(mask)
    outside[region] = False
    assert np.all(result.mean[outside] == -1)


class Blur:
    """A 5-voxel box blur whose own padding is 0, like a network's convolutions: what it gives near a window's
    edge depends on what the window holds around the voxel."""

    stochastic = False

    def __call__(self, source, generator=None):
        return torch.nn.functional.avg_pool3d(source, 5, stride=1, padding=2)


def test_3d_windows_show_the_body_surface_with_its_background_as_training_patches_do():
    """The windows ran over the body's bounding box alone, so surface voxels were always at a window's edge, and a
    volume smaller than a window was padded with 0 (mid-grey), not the background training patches show."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (24, 40, 40)), indexing="ij")
    body = x ** 2 + y ** 2 + z ** 2 < 0.5
    array = np.where(body, rng.uniform(-0.5, 1, body.shape), -1).astype(np.float32)
    whole = Blur()(torch.from_numpy(array)[None, None])[0, 0].numpy()  # the volume at once: real surroundings
    result = run(array, body, card("3d", patch_size=[16, 16, 16], overlap=0.5), Blur())
    assert np.abs(result.mean - whole)[body].max() < 0.02

    small = array[6:18, 12:28, 12:28]  # a volume smaller than a window: padded with the background value
    result = run(small, body[6:18, 12:28, 12:28], card("3d", patch_size=[16, 24, 24], overlap=0.5), Blur())
    padded = np.pad(small, ((2, 2), (4, 4), (4, 4)), constant_values=-1)
    expected = Blur()(torch.from_numpy(padded)[None, None])[0, 0, 2:-2, 4:-4, 4:-4].numpy()
    np.testing.assert_allclose(result.mean, expected, atol=1e-5)


class SliceIndex:
    """Fills each output slice with the value of the input at its first voxel (the slice's encoded index)."""

    stochastic = False

    def __call__(self, source, generator=None):
        centre = source.shape[1] // 2
        return source[:, centre:centre + 1, :1, :1].expand(-1, 1, *source.shape[2:]).clone()


@pytest.mark.parametrize("axis_name,axis", [("axial", 0), ("coronal", 1), ("sagittal", 2)])
def test_slices_go_along_the_card_axis(axis_name, axis):
    shape = (5, 7, 9)
    index = np.arange(shape[axis], dtype=np.float32) / 10  # within the network range [-1, 1]
    array = np.broadcast_to(np.expand_dims(index, [a for a in range(3) if a != axis]), shape).copy()
    result = run(array, np.ones(shape, bool), card("2.5d", axis_name, 1), SliceIndex())
    np.testing.assert_array_equal(result.mean, array)


def test_slices_without_body_are_skipped_and_background():
    array = volume()
    mask = np.zeros_like(array, bool)
    mask[2:4, 5:9, 5:9] = True
    predictor = Identity()
    result = run(array, mask, card("2.5d", "axial", 1, batch_size=8), predictor)
    assert sum(predictor.batch_sizes) == 2
    np.testing.assert_array_equal(result.mean[2:4], array[2:4])
    assert np.all(result.mean[[0, 1, 4, 5]] == -1)


def test_25d_edge_slices_replicate():
    class Channels:
        stochastic = False

        def __call__(self, source, generator=None):
            seen.append(source[:, :, 0, 0].clone())
            return source[:, 2:3]

    seen: list[torch.Tensor] = []
    array = np.broadcast_to(np.arange(4, dtype=np.float32)[:, None, None], (4, 3, 3)).copy()
    run(array, np.ones_like(array, bool), card("2.5d", "axial", 2, batch_size=4), Channels())
    channels = torch.cat(seen)
    assert channels[0].tolist() == [0, 0, 0, 1, 2] and channels[3].tolist() == [1, 2, 3, 3, 3]


def test_channel_mismatch_is_a_model_error():
    spec = card("2.5d", "axial", 1)
    spec["architecture"]["in_channels"] = 5
    with pytest.raises(ModelError):
        run(volume(), None, spec, Identity())
    spec3d = card("3d", patch_size=[8, 8, 8])
    spec3d["architecture"]["in_channels"] = 2
    with pytest.raises(ModelError):
        run(volume(), None, spec3d, Identity())
    with pytest.raises(ModelError):
        run(volume(), None, card("2d", "oblique"), Identity())
    with pytest.raises(ModelError):
        run(volume(), np.ones((2, 2, 2), bool), card("2d"), Identity())


def test_progress_increases_to_one_and_cancel_stops():
    events = []
    tracker = ProgressTracker(callback=events.append, min_interval=0.0)
    run(volume((10, 8, 8)), None, card("2d", batch_size=2), Identity(), tracker=tracker)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0) and len(set(fractions)) > 3

    token = CancelToken()
    calls = []

    def cancel_after_two(event):
        calls.append(event)
        if len(calls) == 3:
            token.cancel()

    predictor = Identity()
    with pytest.raises(Cancelled):
        run(volume((10, 8, 8)), None, card("2d", batch_size=1), predictor,
            tracker=ProgressTracker(callback=cancel_after_two, cancel=token, min_interval=0.0))
    assert len(predictor.batch_sizes) < 10


def test_cancel_during_3d_windows():
    token = CancelToken()
    tracker = ProgressTracker(callback=lambda e: token.cancel() if e.fraction > 0 else None, cancel=token,
                              min_interval=0.0)
    predictor = Identity()
    with pytest.raises(Cancelled):
        run(volume((16, 16, 16)), None, card("3d", patch_size=[8, 8, 8], batch_size=1), predictor, tracker=tracker)
    assert len(predictor.batch_sizes) < 8


def test_stochastic_samples_give_std_and_are_seeded():
    array = volume()
    options = InferenceOptions(samples=3, seed=5)
    first = run(array, None, card("2d"), Noisy(), options)
    second = run(array, None, card("2d"), Noisy(), options)
    assert first.std is not None and first.std.shape == array.shape and float(first.std.mean()) > 0.01
    np.testing.assert_array_equal(first.mean, second.mean)
    other = run(array, None, card("2d"), Noisy(), InferenceOptions(samples=3, seed=6))
    assert not np.array_equal(first.mean, other.mean)


class Wild(Identity):
    """A stochastic predictor whose samples leave the network range [-1, 1] (the output is clipped to it)."""

    stochastic = True

    def __call__(self, source, generator=None):
        return source[:, :1] + 3.0 * gaussian_noise(generator, source[:, :1].shape, source.device)


def test_the_spread_is_that_of_the_clipped_passes_where_restore_pass_puts_them():
    """The std was taken before the output's clipping and on the model grid, then resampled: the spread of
    resampled passes is not the resampled spread (a resampling model's map was 11 % too high on average)."""
    array = volume((4, 8, 8))
    passes = []

    def restore_pass(values):  # stands for the way back to the input grid: here twice as many slices
        passes.append(values.copy())
        return np.repeat(values, 2, axis=0) * 100.0

    result = predict_volume(array, None, card("2d"), Wild(), InferenceOptions(samples=4, seed=1), CPU,
                            ProgressTracker(), restore_pass)
    assert len(passes) == 4 and all(p.min() >= -1 and p.max() <= 1 for p in passes)
    assert any((p == 1).any() for p in passes)  # clipped, not merely small
    restored = np.stack([np.repeat(p, 2, axis=0) * 100.0 for p in passes])
    assert result.mean.shape == (8, 8, 8)
    np.testing.assert_allclose(result.mean, restored.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(result.std, restored.std(axis=0), atol=1e-3)


def test_deterministic_std_none_and_tta_flips_back():
    array = volume()
    plain = run(array, None, card("2d"), Identity())
    assert plain.std is None
    tta = run(array, None, card("2d"), Identity(), InferenceOptions(tta=True))
    np.testing.assert_allclose(tta.mean, array, atol=1e-6)  # identity is flip-equivariant: std 0
    assert tta.std is not None and float(tta.std.max()) < 1e-5

    class LeftBias:  # not flip-equivariant: adds a ramp along x
        stochastic = False

        def __call__(self, source, generator=None):
            ramp = torch.linspace(0, 1, source.shape[-1])
            return source[:, :1] + ramp

    biased = run(array, None, card("2d"), LeftBias(), InferenceOptions(tta=True))
    assert float(biased.std.mean()) > 0.1
    # the prediction is the plain pass: asking for the uncertainty map never changes the synthetic volume
    np.testing.assert_array_equal(biased.mean, run(array, None, card("2d"), LeftBias()).mean)


class OOMAbove:
    """Raises out-of-memory for batches larger than ``limit`` (or always until moved to the CPU)."""

    stochastic = False

    def __init__(self, limit: int | None, error: Exception | None = None) -> None:
        self.limit = limit
        self.error = error or torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        self.moved_to: torch.device | None = None
        self.sizes: list[int] = []

    def to(self, device):
        self.moved_to = torch.device(device)
        return self

    def __call__(self, source, generator=None):
        if self.moved_to is None and (self.limit is None or source.shape[0] > self.limit):
            raise self.error
        self.sizes.append(source.shape[0])
        return source[:, :1].clone()


@pytest.fixture
def fake_gpu(monkeypatch):
    """Lets the engine run on a torch.device("cuda") without one: tensors stay on the CPU."""
    monkeypatch.setattr(engine, "to_device_layout", lambda inputs, device, channels_last=None: inputs.float())
    monkeypatch.setattr(engine, "forward_context", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    return torch.device("cuda")


def test_oom_retries_with_half_batch():
    array = volume((12, 8, 8))
    predictor = OOMAbove(limit=3)
    result = run(array, None, card("2d", batch_size=8), predictor)
    np.testing.assert_array_equal(result.mean, array)
    assert max(predictor.sizes) == 2 and sum(predictor.sizes) == 12 and predictor.moved_to is None
    assert result.warnings == []


def test_gpu_oom_at_batch_one_falls_back_to_cpu_with_warning(fake_gpu):
    array = volume((6, 8, 8))
    predictor = OOMAbove(limit=None)
    result = predict_volume(array, None, card("2d"), predictor, InferenceOptions(extra={"batch_size": 4}), fake_gpu,
                            ProgressTracker())
    np.testing.assert_array_equal(result.mean, array)
    assert predictor.moved_to == CPU and result.warnings == [CPU_FALLBACK_WARNING]
    assert result.stats["device"] == "cpu"


@pytest.mark.parametrize("message", ["CUDA error: out of memory",
                                     "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
                                     "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"])
def test_library_allocation_failures_are_handled_as_out_of_memory(fake_gpu, message):
    predictor = OOMAbove(limit=1, error=RuntimeError(message))
    runner = BatchRunner(predictor, fake_gpu, 4)
    out = runner(torch.ones(5, 1, 4, 4))
    assert out.shape == (5, 1, 4, 4) and runner.batch_size == 1 and predictor.moved_to is None


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    assert not is_out_of_memory(RuntimeError("Given groups=1, weight of size [8, 1, 3, 3], expected input"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))

    class Broken:
        stochastic = False

        def __call__(self, source, generator=None):
            raise RuntimeError("shape mismatch (test)")

    runner = BatchRunner(Broken(), CPU, 4)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        runner(torch.zeros(4, 1, 4, 4))
    assert runner.batch_size == 4


def test_cpu_out_of_memory_halves_the_batch_then_is_one_clear_error():
    cpu_oom = RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 4294967296 bytes.")
    predictor = OOMAbove(limit=2, error=cpu_oom)
    runner = BatchRunner(predictor, CPU, 8)
    assert runner(torch.ones(6, 1, 4, 4)).shape == (6, 1, 4, 4)
    assert runner.batch_size == 2 and predictor.moved_to is None
    hopeless = OOMAbove(limit=0, error=cpu_oom)
    with pytest.raises(DeviceError, match="computer ran out of memory"):
        BatchRunner(hopeless, CPU, 2)(torch.zeros(2, 1, 4, 4))
    assert hopeless.moved_to is None  # nothing to fall back to on the CPU


def test_oom_without_fallback_is_a_device_error(fake_gpu):
    class Stuck:
        stochastic = False

        def __call__(self, source, generator=None):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")

    with pytest.raises(DeviceError, match="even with one slice"):
        BatchRunner(Stuck(), fake_gpu, 2)(torch.zeros(2, 1, 4, 4))


def test_3d_oom_retry_splits_windows():
    array = volume((12, 12, 12))
    predictor = OOMAbove(limit=1)
    result = run(array, None, card("3d", patch_size=[8, 8, 8], batch_size=4), predictor)
    np.testing.assert_allclose(result.mean, array, atol=1e-5)
    assert max(predictor.sizes) == 1


def test_cuda_plans_large_slice_batches_unless_the_batch_is_given():
    """A GPU gets at least CUDA_MIN_BATCH_2D slices per batch; an explicit batch_size is kept; CPU keeps the card's."""
    import torch

    from MedTranslateLib.families.base import InferenceOptions
    from MedTranslateLib.inference.engine import CUDA_MIN_BATCH_2D, _plan

    card = {"dimensionality": "2d", "input": {"slice_axis": "axial", "batch_size": 8},
            "architecture": {"in_channels": 1}}
    assert _plan(card, InferenceOptions(), torch.device("cpu")).batch == 8
    assert _plan(card, InferenceOptions(), torch.device("cuda")).batch == CUDA_MIN_BATCH_2D
    assert _plan(card, InferenceOptions(extra={"batch_size": 4}), torch.device("cuda")).batch == 4
