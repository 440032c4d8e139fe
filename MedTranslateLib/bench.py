"""``medtranslate bench``: end-to-end translate time and peak memory per stage and volume size, the
network's achieved FLOP/s against a measured matrix-multiply peak, and training throughput per family.

Each size runs ``medtranslate translate`` in a fresh process (so its peak resident memory is its own),
reading the per-stage seconds from the worker protocol's ``done`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_SIZES = ("128x128x128", "256x256x160", "512x512x300")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mr2ct-headphantom-unet2d", help="model to benchmark")
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES),
                        help="volume sizes x*y*z, comma separated (default: %(default)s)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size (the median is reported)")
    parser.add_argument("--training", action="store_true", help="also measure training throughput per family")
    parser.add_argument("--output", default=None, help="write the results as Markdown (e.g. BENCHMARKS.md section)")
    parser.add_argument("--json", default=None, help="write the raw results as JSON")


def run_bench(args: argparse.Namespace) -> int:
    from MedTranslateLib.errors import ConfigError

    sizes = []
    for text in args.sizes.split(","):
        try:
            sizes.append(tuple(int(v) for v in text.lower().split("x")))
        except ValueError:
            raise ConfigError(f"--sizes: cannot read {text!r}.", "Write sizes as XxYxZ, e.g. 256x256x160.") from None
    results: dict[str, Any] = {"machine": machine_description(args.device), "model": args.model, "runs": []}
    results["matmul_peak_gflops"] = matmul_peak_gflops(args.device)
    results["network"] = network_flops(args.model, args.device)
    with tempfile.TemporaryDirectory(prefix="medtranslate-bench-") as tmp:
        for size in sizes:
            volume = Path(tmp) / f"input_{'x'.join(map(str, size))}.nii.gz"
            make_bench_volume(size, volume)
            runs = [run_translate_process(volume, args.model, Path(tmp) / "out.nii.gz", args.device)
                    for _ in range(max(1, args.repeats))]
            runs.sort(key=lambda r: r["wall_seconds"])
            run = runs[len(runs) // 2]
            run["size"] = list(size)
            slices = size[2]
            inference = run["seconds"].get("inference", float("nan"))
            run["slices_per_second"] = slices / inference if inference else None
            flops_per_slice = results["network"].get("flops_per_slice_at_256")
            if flops_per_slice:
                scale = size[0] * size[1] / (256 * 256)
                run["achieved_gflops"] = flops_per_slice * scale * slices / inference / 1e9
            results["runs"].append(run)
            print(json.dumps(run))
    if args.training:
        results["training"] = training_throughput(args.device)
    results["help_seconds"] = help_latency()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    text = to_markdown(results)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


def machine_description(device: str) -> dict[str, Any]:
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    if device != "cpu" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_bench_volume(size_xyz: tuple[int, ...], path: Path) -> None:
    """A head phantom T1 resampled to ``size_xyz`` voxels covering the same head."""
    import SimpleITK as sitk

    from MedTranslateLib.phantom import make_head_phantom

    t1 = make_head_phantom(seed=2024).t1
    extent = [n * s for n, s in zip(t1.GetSize(), t1.GetSpacing())]
    spacing = [e / n for e, n in zip(extent, size_xyz)]
    origin = [o - s0 / 2 + s / 2 for o, s0, s in zip(t1.GetOrigin(), t1.GetSpacing(), spacing)]
    out = sitk.Resample(t1, [int(n) for n in size_xyz], sitk.Transform(), sitk.sitkLinear, origin, spacing,
                        t1.GetDirection(), 0.0, sitk.sitkFloat32)
    sitk.WriteImage(out, str(path))


def run_translate_process(volume: Path, model: str, output: Path, device: str) -> dict[str, Any]:
    """One translation in a fresh process; wall time, peak RSS and the stage seconds it reports."""
    cmd = [sys.executable, "-m", "MedTranslateLib", "translate", str(volume), "-m", model, "-o", str(output),
           "--device", device, "--progress", "jsonl"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    # communicate() reaped the child; RUSAGE_CHILDREN's max RSS is the largest child so far (sizes ascend)
    import resource

    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = None
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "done":
            done = event
        elif event.get("event") == "error":
            raise RuntimeError(f"benchmark translation failed: {event.get('message')}")
    if proc.returncode != 0 or done is None:
        raise RuntimeError(f"benchmark translation failed ({proc.returncode}): {stderr[-2000:]}")
    return {"wall_seconds": wall, "peak_rss_mib": peak_kib / 1024, "seconds": done["seconds"]}


def matmul_peak_gflops(device: str, n: int = 2048, repeats: int = 10) -> float:
    """Measured float32 matrix-multiply throughput of the device (GFLOP/s)."""
    import torch

    from MedTranslateLib.inference.device import select_device

    dev = select_device(device)
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    best = float("inf")
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def network_flops(model: str, device: str) -> dict[str, Any]:
    """FLOPs of one network pass on a 256 x 256 slice (or patch) and the network's parameter count."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from MedTranslateLib.models.registry import ModelRegistry
    from MedTranslateLib.pipeline import Translator

    translator = Translator(ModelRegistry().resolve(model), device="cpu")
    card = translator.card.to_dict()
    net = next(iter(translator.nets.values()))
    channels = card["architecture"]["in_channels"]
    shape = (1, channels, 256, 256) if translator.card.spatial_dims == 2 else (1, channels, *card["input"]["patch_size"])
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.zeros(shape))
    params = sum(p.numel() for n in translator.nets.values() for p in n.parameters())
    return {"flops_per_slice_at_256": counter.get_total_flops(), "parameters": params,
            "family": card["family"], "dimensionality": card["dimensionality"]}


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
        family.training_step(nets, opts, batch, lambda: autocast_for(dev), {})
        start = time.perf_counter()
        for _ in range(steps):
            family.training_step(nets, opts, batch, lambda: autocast_for(dev), {})
        out[name] = 4 * steps / (time.perf_counter() - start)
    return out


def help_latency() -> float:
    """Wall seconds of ``medtranslate --help`` in a fresh interpreter."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "MedTranslateLib", "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


def to_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"### Translate benchmark: `{results['model']}`", "",
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores, {m.get('memory_gib', '?')} GiB), "
             f"torch {m.get('torch')} ({m.get('threads')} threads)" + (f", GPU {m['gpu']}" if "gpu" in m else ""),
             f"Matrix-multiply peak (float32, 2048^3): {results['matmul_peak_gflops']:.1f} GFLOP/s. "
             f"Network: {results['network']['family']} {results['network']['dimensionality']}, "
             f"{results['network']['parameters']:,} parameters, "
             f"{results['network']['flops_per_slice_at_256'] / 1e9:.2f} GFLOP per 256x256 slice.", "",
             "| size (x y z) | total s | read | preprocess | inference | restore | write | slices/s | GFLOP/s (share of peak) | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        s = run["seconds"]
        gflops = run.get("achieved_gflops")
        share = f"{gflops:.1f} ({gflops / results['matmul_peak_gflops']:.0%})" if gflops else "-"
        lines.append(f"| {' x '.join(map(str, run['size']))} | {run['wall_seconds']:.1f} | "
                     + " | ".join(f"{s.get(k, float('nan')):.2f}" for k in ("read", "preprocess", "inference", "restore", "write"))
                     + f" | {run['slices_per_second']:.1f} | {share} | {run['peak_rss_mib']:.0f} |")
    lines.append("")
    lines.append(f"`medtranslate --help`: {results['help_seconds']:.2f} s (fresh interpreter).")
    if "training" in results:
        lines += ["", "| family | training samples/s (2D 64x64, batch 4) |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in results["training"].items()]
    return "\n".join(lines) + "\n"
