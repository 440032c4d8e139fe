"""The CUDA paths on a real GPU (skipped without one): same result as the CPU within bf16 rounding, channels-last
in mixed precision, a real out-of-memory that halves the batch and then falls back to the CPU, diffusion sampling
and training steps on the GPU. ``Testing/gpu/run_checks.sh`` runs these with the GPU benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEMO = "mr2ct-headphantom-unet2d"
CUDA = torch.device("cuda")
SMALL_DENOISER = {"channels": [16, 32, 64], "attention_levels": [False, False, True], "num_res_blocks": 1,
                  "norm_num_groups": 8, "num_head_channels": 8}


def translator(device: str):
    from MedTranslateLib.models.registry import ModelRegistry
    from MedTranslateLib.pipeline import Translator

    return Translator(ModelRegistry().resolve(DEMO), device=device)


def unet_predictor(loaded):
    from MedTranslateLib.families.base import InferenceOptions

    return loaded.family.make_predictor(loaded.nets, loaded.card.to_dict(), InferenceOptions())


@pytest.fixture(scope="module")
def phantom():
    from MedTranslateLib.phantom import make_head_phantom

    return make_head_phantom(seed=1000)


@pytest.fixture
def memory_cap():
    """``cap(bytes_above_now)`` limits this process's CUDA allocator; the limit is lifted afterwards."""
    total = torch.cuda.get_device_properties(0).total_memory

    def cap(extra_bytes: int) -> None:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + extra_bytes) / total))

    yield cap
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


def test_demo_translation_on_cuda_matches_the_cpu_within_bf16_rounding(phantom):
    import SimpleITK as sitk

    source, truth = phantom.t1, sitk.GetArrayFromImage(phantom.ct)
    body = sitk.GetArrayFromImage(phantom.mask) > 0
    on_cpu = translator("cpu").translate(source)
    on_gpu = translator("cuda").translate(source)
    assert on_gpu.stats["device"] == "cuda" and on_gpu.warnings == on_cpu.warnings
    for image in (on_cpu.output, on_gpu.output):
        assert image.GetSize() == source.GetSize() and image.GetSpacing() == source.GetSpacing()
        assert image.GetOrigin() == source.GetOrigin() and image.GetDirection() == source.GetDirection()
    cpu, gpu = (sitk.GetArrayFromImage(r.output).astype(np.float64) for r in (on_cpu, on_gpu))
    assert np.abs(gpu - cpu)[body].mean() < 10.0  # HU; bf16 keeps 8 bits of mantissa
    mae_cpu, mae_gpu = (np.abs(a - truth)[body].mean() for a in (cpu, gpu))
    assert abs(mae_gpu - mae_cpu) < 2.0


def test_network_runs_channels_last_in_mixed_precision_on_cuda():
    from MedTranslateLib.inference.device import autocast_dtype
    from MedTranslateLib.inference.engine import forward_context, predictor_channels_last, to_device_layout

    loaded = translator("cuda")
    predictor = unet_predictor(loaded)
    assert all(layout.channels_last for layout in loaded.layouts.values())
    assert predictor_channels_last(predictor)
    inputs = to_device_layout(torch.randn(4, 1, 96, 80), CUDA, True)
    assert inputs.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), forward_context(CUDA):
        out = predictor(inputs, None)
    assert out.dtype == autocast_dtype(CUDA) and torch.isfinite(out.float()).all()


def test_real_gpu_out_of_memory_halves_the_batch_and_keeps_the_result(memory_cap):
    from MedTranslateLib.inference.engine import BatchRunner

    loaded = translator("cuda")
    slices = torch.randn(96, 1, 512, 512)
    reference = BatchRunner(unet_predictor(loaded), CUDA, 8)
    with torch.inference_mode():
        expected = reference(slices[:8])
        memory_cap(1536 * 2**20)  # 1.5 GiB: 96 slices of 512 x 512 at once need several times that
        runner = BatchRunner(unet_predictor(loaded), CUDA, 96)
        out = runner(slices)
    assert out.shape == (96, 1, 512, 512) and torch.isfinite(out).all()
    assert runner.batch_size < 96 and not runner.fell_back and runner.warnings == []
    torch.testing.assert_close(out[:8], expected, atol=0.05, rtol=0.0)


def test_real_gpu_out_of_memory_at_one_slice_falls_back_to_the_cpu(memory_cap):
    from MedTranslateLib.inference.engine import CPU_FALLBACK_WARNING, BatchRunner

    loaded = translator("cuda")
    slices = torch.randn(2, 1, 512, 512)
    with torch.inference_mode():
        expected = BatchRunner(unet_predictor(translator("cpu")), torch.device("cpu"), 2)(slices)
        memory_cap(4 * 2**20)  # 4 MiB: one 512 x 512 feature map of 32 channels alone needs 16 MiB
        runner = BatchRunner(unet_predictor(loaded), CUDA, 2)
        out = runner(slices)
    assert runner.fell_back and runner.device.type == "cpu" and runner.warnings == [CPU_FALLBACK_WARNING]
    assert next(loaded.nets[next(iter(loaded.nets))].parameters()).device.type == "cpu"
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("sampler", ["dpm++2m", "ddpm"])  # ddpm: per-step noise from the CUDA generator
def test_diffusion_sampling_on_cuda_is_seeded_and_reports_every_step(sampler):
    from MedTranslateLib.families.diffusion import DiffusionPredictor, FAMILY

    net = FAMILY.build({"in_channels": 1, "out_channels": 1, **SMALL_DENOISER}, 2)["denoiser"].to(CUDA).eval()
    steps: list[int] = []
    predictor = DiffusionPredictor(net, lambda s: s, steps=10, sampler=sampler,
                                   step_callback=lambda i, n: steps.append(i))
    source = torch.rand(4, 1, 90, 70, device=CUDA) * 2 - 1
    with torch.inference_mode():
        first = predictor(source, torch.Generator(device=CUDA).manual_seed(3))
        second = predictor(source, torch.Generator(device=CUDA).manual_seed(3))
    assert first.shape == source.shape and len(steps) == 20
    torch.testing.assert_close(first, second)


@pytest.mark.parametrize("family_name", ["unet", "pix2pix", "diffusion"])
def test_training_steps_on_cuda_in_mixed_precision_lower_the_loss(family_name):
    from MedTranslateLib.families import get_family
    from MedTranslateLib.inference.device import autocast_for

    torch.manual_seed(0)
    family = get_family(family_name)
    architecture = {"in_channels": 1, "out_channels": 1, **(SMALL_DENOISER if family_name == "diffusion" else {})}
    nets = {k: v.to(CUDA) for k, v in family.build(architecture, 2).items()}
    optimizers = family.configure_optimizers(nets, 1e-3)
    source = torch.rand(8, 1, 64, 64, device=CUDA) * 2 - 1
    batch = {"source": source, "target": (0.5 - source).clamp(-1, 1), "mask": torch.ones_like(source)}
    losses = [family.training_step(nets, optimizers, batch, lambda: autocast_for(CUDA), {})["loss"]
              for _ in range(60)]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_a_training_checkpoint_puts_the_gpu_generator_back(tmp_path):
    """A resumed GPU run draws the noise an uninterrupted one would, not its first steps' noise again."""
    from MedTranslateLib.training.checkpoint import load_checkpoint, save_checkpoint

    nets = {"g": torch.nn.Linear(2, 1)}
    torch.cuda.manual_seed(3)
    torch.randn(4, device=CUDA)
    save_checkpoint(tmp_path / "ckpt", nets, {}, {"step": 1})
    expected = torch.randn(4, device=CUDA)
    torch.manual_seed(0)  # what a resumed run does first
    load_checkpoint(tmp_path / "ckpt", nets, {})
    assert torch.equal(torch.randn(4, device=CUDA), expected)
