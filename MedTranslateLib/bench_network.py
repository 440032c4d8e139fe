"""Side-by-side network throughput of the default U-Net under the inference rewrites of
:mod:`MedTranslateLib.inference.optimize` (part of ``medtranslate bench``).

Four variants of the same 2D U-Net (the default model's features, random weights: speed does not depend on
them) run in one process, one after the other, on the same input: instance norm (the earlier default), batch
norm as trained, batch norm folded into the convolutions, and folded + channels-last (what the pipeline runs).
The ratio between rows is the gain of each rewrite on this machine.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

FEATURES = (16, 16, 32, 64, 128, 16)


def _best_seconds(fn: Any, repeats: int, synchronize: Any) -> float:
    fn()  # warm-up
    synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def layout_comparison(device: str, features: Sequence[int] = FEATURES, size: int = 256, batch: int = 8,
                      repeats: int = 3) -> list[dict[str, Any]]:
    """GFLOP/s of one forward pass of each variant (batch of ``size`` x ``size`` single-channel slices)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from MedTranslateLib.inference.device import select_device
    from MedTranslateLib.inference.engine import to_device_layout
    from MedTranslateLib.inference.optimize import fold_batch_norms, to_channels_last
    from MedTranslateLib.networks.unet import UNetGenerator

    dev = select_device(device)
    synchronize = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    x = torch.randn(batch, 1, size, size)
    variants = [("instance norm, default layout", "instance", False, False),
                ("batch norm, default layout", "batch", False, False),
                ("batch norm folded, default layout", "batch", True, False),
                ("batch norm folded, channels-last (pipeline)", "batch", True, True)]
    rows = []
    for label, norm, fold, channels_last in variants:
        net = UNetGenerator(2, 1, 1, tuple(features), norm=norm).to(dev).eval()
        with torch.inference_mode():
            if fold:
                fold_batch_norms(net)
            if channels_last:
                to_channels_last(net)
            inputs = to_device_layout(x, dev, channels_last)
            with FlopCounterMode(display=False) as counter:
                net(inputs)
            seconds = _best_seconds(lambda: net(inputs), repeats, synchronize)
        rows.append({"variant": label, "seconds": seconds, "gflops": counter.get_total_flops() / seconds / 1e9})
    return rows


def to_markdown(rows: Sequence[dict[str, Any]], peak_gflops: float, size: int = 256, batch: int = 8) -> list[str]:
    """Markdown lines of the comparison (share of the matmul peak, speed-up against the first row)."""
    first = rows[0]["seconds"]
    lines = [f"Network rewrites side by side (2D U-Net {list(FEATURES)}, batch {batch} of {size} x {size}, "
             "one process, best of 3):", "",
             "| variant | forward s | GFLOP/s | of matmul peak | speed-up |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['seconds']:.3f} | {r['gflops']:.1f} | {r['gflops'] / peak_gflops:.0%} | "
              f"{first / r['seconds']:.2f}x |" for r in rows]
    return lines + [""]
