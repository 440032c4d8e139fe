"""Side-by-side network throughput of the 2D generators MedTranslate has shipped (part of ``medtranslate bench``).

The variants run in one process, one after the other, on the same input, with random weights (speed does not
depend on them), so the ratios between rows hold even on a machine whose absolute speed drifts:

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

BASIC_FEATURES = (16, 16, 32, 64, 128, 16)
FEATURES = (32, 64, 128, 256)


def _best_seconds(fn: Callable[[], Any], repeats: int, synchronize: Callable[[], Any]) -> float:
    fn()  # warm-up (oneDNN / cuDNN pick their kernels on the first call of a shape)
    synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


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
    synchronize = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
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
            seconds = _best_seconds(forward, repeats, synchronize)
        row = {"variant": label, "seconds": seconds, "seconds_per_slice": seconds / n, "batch": n,
               "gflop_per_slice": counter.get_total_flops() / n / 1e9,
               "gflops": counter.get_total_flops() / seconds / 1e9}
        if peak is not None:
            row["peak_gflops"] = peak()
        rows.append(row)
        del net, inputs
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
