"""Device and network throughput for ``medtranslate bench``: the measured matrix-multiply peak, one model's FLOPs
and forward speed, the 2D generators MedTranslate has shipped side by side, and training samples/s per family.

In the side-by-side comparison the variants run in one process, one after the other, on the same input, with
random weights (speed does not depend on them), so the ratios between rows hold even on a machine whose absolute
speed drifts:

1. MONAI ``BasicUNet`` (16-128 channels), instance norm: the first default model;
2. the same with batch norm folded into the convolutions and channels-last layout: the second default;
3. MedTranslate's own U-Net (:mod:`MedTranslateLib.networks.unet`, the default model's channels), batch norm,
   default layout;
4. the same folded and channels-last: what the pipeline runs now.

On CUDA every row runs in the pipeline's bf16 autocast, and three more rows switch each GPU optimisation off
or on: the pipeline's network in float32 (default and channels-last layout) and at the pipeline's CUDA batch.

Each row gives the forward time per slice, the achieved GFLOP/s and its share of the matrix-multiply peak.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Sequence

from MedTranslateLib.families import SAMPLED_FAMILIES

BASIC_FEATURES = (16, 16, 32, 64, 128, 16)
FEATURES = (32, 64, 128, 256)


def best_seconds(fn: Callable[[], Any], repeats: int, device: Any) -> float:
    """The shortest of ``repeats`` timed calls of ``fn`` after one warm-up (oneDNN / cuDNN pick their kernels on
    the first call of a shape); GPU work is waited for."""
    fn()
    _synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def _synchronize(device: Any) -> None:
    """Wait for the GPU's queued work (timings of asynchronous CUDA calls); nothing on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _monai_basic_unet(norm: str) -> Any:
    from monai.networks.nets import BasicUNet

    norms = {"instance": ("instance", {"affine": True}), "batch": "batch"}
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=BASIC_FEATURES, norm=norms[norm],
                     upsample="nontrainable")


def _fold_monai_blocks(net: Any) -> None:
    """Batch norm folding for MONAI's ``Convolution`` blocks (``conv`` then ``adn.N``)."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in list(net.modules()):
        adn, conv = getattr(module, "adn", None), getattr(module, "conv", None)
        norm = getattr(adn, "N", None) if adn is not None else None
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(conv, norm)
            adn.N = nn.Identity()


def layout_comparison(device: str, features: Sequence[int] = FEATURES, size: int = 256, batch: int = 8,
                      repeats: int = 3, peak: Callable[[], float] | None = None) -> list[dict[str, Any]]:
    """Seconds and GFLOP/s of one forward pass of each variant (a batch of ``size`` x ``size`` slices).

    ``peak`` (optional): a function measuring the matmul peak, called right after each variant (``peak_gflops``
    per row), so that the run's highest peak also covers the moments these rows were measured."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from MedTranslateLib.inference.device import select_device
    from MedTranslateLib.inference.engine import CUDA_MIN_BATCH_2D, forward_context, to_device_layout
    from MedTranslateLib.inference.optimize import fold_batch_norms, to_channels_last
    from MedTranslateLib.networks.unet import UNetGenerator

    dev = select_device(device)
    torch.manual_seed(0)
    basic = f"MONAI BasicUNet {list(BASIC_FEATURES)}"
    ours = f"MedTranslate U-Net {list(features)}"
    on_gpu = dev.type == "cuda"
    mixed = ", bf16 autocast" if on_gpu else ""

    def pipeline_net() -> Any:
        return UNetGenerator(2, 1, 1, tuple(features))

    # (label, build, fold, channels-last, autocast, batch): autocast = the pipeline's forward context (bf16 on CUDA,
    # nothing on the CPU)
    variants: list[tuple[str, Callable[[], Any], Callable[[Any], None] | None, bool, bool, int]] = [
        (f"{basic}, instance norm{mixed} (first default)", lambda: _monai_basic_unet("instance"), None, False,
         True, batch),
        (f"{basic}, batch norm folded, channels-last{mixed} (second default)", lambda: _monai_basic_unet("batch"),
         _fold_monai_blocks, True, True, batch),
        (f"{ours}, batch norm, default layout{mixed}", pipeline_net, None, False, True, batch),
        (f"{ours}, batch norm folded, channels-last{mixed} (pipeline)", pipeline_net, fold_batch_norms, True,
         True, batch),
    ]
    if on_gpu:  # each GPU optimisation on and off: float32 vs bf16, layout, the pipeline's large GPU batch
        variants += [
            (f"{ours}, batch norm, default layout, float32 (TF32 convolutions, the default)", pipeline_net, None,
             False, False, batch),
            (f"{ours}, batch norm folded, channels-last, float32 (TF32)", pipeline_net, fold_batch_norms, True, False,
             batch),
            (f"{ours}, batch norm folded, channels-last{mixed}, batch {CUDA_MIN_BATCH_2D} (pipeline on CUDA)",
             pipeline_net, fold_batch_norms, True, True, CUDA_MIN_BATCH_2D),
        ]
    rows = []
    for label, build, fold, channels_last, autocast, n in variants:
        net = build().to(dev).eval()
        x = torch.randn(n, 1, size, size)
        with torch.inference_mode():
            if fold is not None:
                fold(net)
            if channels_last:
                to_channels_last(net)
            inputs = to_device_layout(x, dev, channels_last)

            def forward() -> Any:
                with forward_context(dev) if autocast else contextlib.nullcontext():
                    return net(inputs)

            with FlopCounterMode(display=False) as counter:
                forward()
            seconds = best_seconds(forward, repeats, dev)
        row = {"variant": label, "seconds": seconds, "seconds_per_slice": seconds / n, "batch": n,
               "gflop_per_slice": counter.get_total_flops() / n / 1e9,
               "gflops": counter.get_total_flops() / seconds / 1e9}
        if peak is not None:
            row["peak_gflops"] = peak()
        rows.append(row)
    return rows


def to_markdown(rows: Sequence[dict[str, Any]], peak_gflops: float, size: int = 256, batch: int = 8) -> list[str]:
    """Markdown lines of the comparison (share of the matmul peak, speed-up of the GFLOP/s against the first row)."""
    first = rows[0]["gflops"]
    lines = [f"Networks side by side (2D, batch {batch} of {size} x {size} unless the row says otherwise, one "
             "process, best of 3; the matmul peak "
             "is also measured right after each row, and the share is of the highest peak of the run):", "",
             "| network | GFLOP per slice | forward s per slice | GFLOP/s | of matmul peak | GFLOP/s vs first row |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['gflop_per_slice']:.2f} | {r['seconds_per_slice']:.4f} | "
                     f"{r['gflops']:.1f} | {r['gflops'] / peak_gflops:.0%} | {r['gflops'] / first:.2f}x |")
    return lines + [""]


def matmul_peak_gflops(device: str, n: int | None = None, repeats: int = 8) -> float:
    """Measured matrix-multiply throughput of the device (best of ``repeats``, GFLOP/s), in the dtype the
    networks compute in there: float32 on the CPU, the autocast dtype (bf16) on CUDA, where ``n`` defaults to
    8192 (a 2048 product is too small to fill a large GPU).

    On the CPU the better of two GEMM paths counts: BLAS (``torch.mm``) and oneDNN (a 1 x 1 convolution is a
    GEMM). MKL's ``sgemm`` runs below the core's peak on AMD processors (206 against oneDNN's 480 GFLOP/s on the
    2-core AMD EPYC of this work), and the networks' convolutions run through oneDNN."""
    import torch

    from MedTranslateLib.inference.device import autocast_dtype, select_device

    dev = select_device(device)
    dtype = autocast_dtype(dev) or torch.float32
    n = n or (8192 if dev.type == "cuda" else 2048)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    peak = 2 * n**3 / best_seconds(lambda: torch.mm(a, b), repeats, dev) / 1e9
    if dev.type == "cpu":
        channels, side = 1024, 64
        conv = torch.nn.Conv2d(channels, channels, 1, bias=False).eval().to(memory_format=torch.channels_last)
        x = torch.randn(1, channels, side, side).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            seconds = best_seconds(lambda: conv(x), repeats, dev)
        peak = max(peak, 2 * channels**2 * side**2 / seconds / 1e9)
    return peak


def matmul_dtype(device: str) -> str:
    """The dtype :func:`matmul_peak_gflops` measures on ``device`` (``float32`` or ``bfloat16``/``float16``)."""
    from MedTranslateLib.inference.device import autocast_dtype, select_device

    dtype = autocast_dtype(select_device(device))
    return str(dtype).replace("torch.", "") if dtype is not None else "float32"


def network_flops(model: str, device: str, size: int = 256, repeats: int = 3) -> dict[str, Any]:
    """FLOPs of one network pass (one denoising step for diffusion) on a ``size`` x ``size`` slice (2D) or one
    patch (3D), the parameter count and the isolated forward throughput (GFLOP/s) at the card's batch size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from MedTranslateLib.inference.engine import forward_context, predictor_channels_last, to_device_layout
    from MedTranslateLib.models.registry import ModelRegistry
    from MedTranslateLib.pipeline import Translator

    from MedTranslateLib.families.base import InferenceOptions

    translator = Translator(ModelRegistry().resolve(model), device=device)
    card = translator.card.to_dict()
    # one network pass: diffusion predictors run one denoising step with steps=1
    predictor = translator.family.make_predictor(translator.nets, card, InferenceOptions(steps=1))

    def net(x: "torch.Tensor") -> "torch.Tensor":
        generator = torch.Generator(device=translator.device).manual_seed(0)
        return predictor(x, generator)

    if card["family"] in SAMPLED_FAMILIES:
        size = min(size, 64)  # attention layers grow with the square of the token count: keep this bounded
    channels = int(card["architecture"].get("in_channels", 1))
    spatial = (size, size) if translator.card.spatial_dims == 2 else tuple(card["input"]["patch_size"])
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.zeros((1, channels, *spatial), device=translator.device))
    flops = counter.get_total_flops()
    pixels = 1
    for s in spatial:
        pixels *= s
    batch = int(card["input"].get("batch_size", 8)) if card["family"] not in SAMPLED_FAMILIES else 1
    x = to_device_layout(torch.randn((batch, channels, *spatial)), translator.device,
                         predictor_channels_last(predictor))
    with torch.inference_mode(), forward_context(translator.device):
        best = best_seconds(lambda: net(x), repeats, translator.device)
    params = sum(p.numel() for n in translator.nets.values() for p in n.parameters())
    return {"flops_per_unit": flops, "unit": "x".join(map(str, spatial)), "flops_per_pixel": flops / pixels,
            "parameters": params, "family": card["family"], "dimensionality": card["dimensionality"],
            "forward_gflops": flops * batch / best / 1e9, "batch": batch,
            "folded_norms": sum(layout.folded_norms for layout in translator.layouts.values()),
            "channels_last": any(layout.channels_last for layout in translator.layouts.values())}


def training_throughput(device: str, steps: int = 5) -> dict[str, float]:
    """Training samples per second for each family on small 2D batches (64 x 64, batch 4)."""
    import torch

    from MedTranslateLib.families import FAMILY_NAMES, get_family
    from MedTranslateLib.inference.device import autocast_for, select_device

    dev = select_device(device)
    out: dict[str, float] = {}
    for name in FAMILY_NAMES:
        family = get_family(name)
        if not family.gradient_trained:
            continue
        arch = {"in_channels": 1, "out_channels": 1}
        nets = {k: v.to(dev) for k, v in family.build(arch, 2).items()}
        opts = family.configure_optimizers(nets, 1e-4)
        batch = {"source": torch.randn(4, 1, 64, 64, device=dev), "target": torch.randn(4, 1, 64, 64, device=dev),
                 "mask": torch.ones(4, 1, 64, 64, device=dev)}
        for _ in range(1 if dev.type == "cpu" else 3):  # warm-up (cuDNN picks its kernels on the first steps)
            family.training_step(nets, opts, batch, lambda: autocast_for(dev), {})
        timed = steps if dev.type == "cpu" else 4 * steps
        _synchronize(dev)
        start = time.perf_counter()
        for _ in range(timed):
            family.training_step(nets, opts, batch, lambda: autocast_for(dev), {})
        _synchronize(dev)
        out[name] = 4 * timed / (time.perf_counter() - start)
    return out
