"""``medtranslate bench``: end-to-end translate time and peak memory per stage and volume size, the
network's achieved FLOP/s against a measured matrix-multiply peak, and training throughput per family.

Each size runs ``medtranslate translate`` in a fresh process, reaped with ``os.wait4`` so that its peak
resident memory and CPU time are that run's own; the per-stage seconds come from the worker protocol's
``done`` line. The results are spliced into ``BENCHMARKS.md`` between ``<!-- speed:start -->`` and
``<!-- speed:end -->`` (everything outside the markers is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from MedTranslateLib.bench_network import matmul_dtype, matmul_peak_gflops, network_flops, training_throughput
from MedTranslateLib.families import SAMPLED_FAMILIES
from MedTranslateLib.io.atomic import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover - the command line's start-up imports this module
    from MedTranslateLib.progress import ProgressEvent

DEFAULT_SIZES = ("128x128x128", "256x256x160", "512x512x300")
SPEED_START = "<!-- speed:start -->"
SPEED_END = "<!-- speed:end -->"
MODELS_START = "<!-- models:start -->"
MODELS_END = "<!-- models:end -->"
INTRO = ("# MedTranslate benchmarks\n\n"
         "Measured on this repository's code with `medtranslate bench` (speed and memory) and the model "
         "evaluation (models). Each translation runs in a fresh process; peak RSS is that process's own.\n\n")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``medtranslate bench`` options."""
    parser.add_argument("--model", action="append", default=None,
                        help="model id or package folder to benchmark, optionally MODEL=SIZES to give it its own "
                             "sizes (repeatable; default mr2ct-headphantom-unet2d)")
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES),
                        help="volume sizes XxYxZ, comma separated (default: %(default)s)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size (medians are reported)")
    parser.add_argument("--training", action="store_true", help="also measure training throughput per family")
    parser.add_argument("--sampling-steps", default=None, metavar="N,N,...",
                        help="diffusion models: time per volume for each number of sampling steps (e.g. 5,10,20,50) "
                             "on the first size, and the mean |difference| from the largest step count")
    parser.add_argument("--output", default="BENCHMARKS.md",
                        help="Markdown file whose speed section is replaced (default: %(default)s; '-' for none)")
    parser.add_argument("--json", default=None, help="write the raw results as JSON")


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """``"24x24x16,256x256x160"`` -> [(24, 24, 16), (256, 256, 160)] (x, y, z voxels)."""
    from MedTranslateLib.errors import ConfigError

    sizes = []
    for part in text.split(","):
        try:
            size = tuple(int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            size = ()
        if len(size) != 3 or min(size) < 1:
            raise ConfigError(f"--sizes: cannot read {part!r}.", "Write sizes as XxYxZ, e.g. 256x256x160.")
        sizes.append(size)  # type: ignore[arg-type]
    return sizes  # type: ignore[return-value]


def split_model_sizes(spec: str, default: list[tuple[int, int, int]]) -> tuple[str, list[tuple[int, int, int]]]:
    """``"model=24x24x16,32x32x8"`` -> ("model", [sizes]); a plain model keeps ``default``."""
    model, sep, sizes = spec.rpartition("=")
    if sep and model:
        return model, parse_sizes(sizes)
    return spec, list(default)


def _progress_lines(event: ProgressEvent) -> None:
    from MedTranslateLib.progress import format_duration

    left = format_duration(event.eta_seconds)
    print(f"bench {event.fraction:4.0%} {event.message}" + (f" ({left} left)" if left else ""), file=sys.stderr,
          flush=True)


def run_bench(args: argparse.Namespace) -> int:
    """Benchmark each model at each size; print and splice the Markdown; optionally dump JSON. Progress (stage,
    percent, time left) goes to standard error, one line per measurement."""
    from MedTranslateLib.progress import ProgressTracker

    sizes = parse_sizes(args.sizes)
    models = args.model or ["mr2ct-headphantom-unet2d"]
    results: dict[str, Any] = {"machine": machine_description(args.device), "models": [],
                               "matmul_dtype": matmul_dtype(args.device)}
    n_runs = sum(len(split_model_sizes(spec, sizes)[1]) for spec in models) * max(1, args.repeats)
    stages = [("translate", 8.0), ("network", 2.0)] + ([("training", 3.0)] if args.training else [])
    tracker = ProgressTracker(stages + [("help", 0.2)], _progress_lines, min_interval=0.0)
    tracker.stage("translate", "measuring the matrix-multiply peak and making the inputs")
    done = 0
    peaks = [matmul_peak_gflops(args.device)]
    with tempfile.TemporaryDirectory(prefix="medtranslate-bench-") as tmp:
        volumes = {}
        for size in sizes:
            volumes[size] = Path(tmp) / f"input_{'x'.join(map(str, size))}.nii.gz"
            make_bench_volume(size, volumes[size])
        for spec in models:
            model, model_sizes = split_model_sizes(spec, sizes)
            for size in model_sizes:
                if size not in volumes:
                    volumes[size] = Path(tmp) / f"input_{'x'.join(map(str, size))}.nii.gz"
                    make_bench_volume(size, volumes[size])
            entry: dict[str, Any] = {"model": model, "network": network_flops(model, args.device), "runs": []}
            if args.sampling_steps and entry["network"]["family"] in SAMPLED_FAMILIES:
                steps = [int(v) for v in args.sampling_steps.split(",")]
                entry["sampling"] = sampling_sweep(volumes[model_sizes[0]], model, steps, args.device, Path(tmp))
            for size in model_sizes:
                runs = []
                for repeat in range(max(1, args.repeats)):
                    tracker.update(done / n_runs, f"translating {'x'.join(map(str, size))} with {model} "
                                                  f"(run {repeat + 1}/{max(1, args.repeats)})")
                    runs.append(run_translate_process(volumes[size], model, Path(tmp) / "out.nii.gz", args.device))
                    done += 1
                run = summarise_runs(runs)
                run["size"] = list(size)
                add_flop_rates(run, entry["network"])
                entry["runs"].append(run)
                print(json.dumps(run), flush=True)
            results["models"].append(entry)
            peaks.append(matmul_peak_gflops(args.device))
    from MedTranslateLib.bench_network import layout_comparison

    tracker.stage("network", "comparing network layouts side by side")
    results["network_rewrites"] = layout_comparison(args.device, peak=lambda: matmul_peak_gflops(args.device))
    peaks += [row["peak_gflops"] for row in results["network_rewrites"]]
    # the machine's speed drifts (shared cores): shares are taken of the HIGHEST peak measured in this run
    results["matmul_peak_gflops"] = max(peaks)
    results["matmul_peak_range"] = [min(peaks), max(peaks)]
    if args.training:
        tracker.stage("training", "measuring training throughput per family")
        results["training"] = training_throughput(args.device)
    tracker.stage("help", "timing medtranslate --help")
    results["help_seconds"] = help_latency()
    tracker.update(1.0, "done")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    text = to_markdown(results)
    print(text)
    if args.output and args.output != "-":
        splice_markdown(Path(args.output), text)
    return 0


def machine_description(device: str) -> dict[str, Any]:
    """CPU, cores, memory, GPU and library versions of this machine, for BENCHMARKS.md."""
    import torch

    info = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        info["load_1min"] = round(os.getloadavg()[0], 1)
    except (ValueError, OSError, AttributeError):
        pass
    if device != "cpu" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_bench_volume(size_xyz: Sequence[int], path: Path) -> None:
    """A head phantom T1 resampled to ``size_xyz`` voxels covering the same head."""
    import SimpleITK as sitk

    from MedTranslateLib.errors import OutputError
    from MedTranslateLib.io.itk_paths import itk_path
    from MedTranslateLib.phantom import make_head_phantom

    t1 = make_head_phantom(seed=2024).t1
    extent = [n * s for n, s in zip(t1.GetSize(), t1.GetSpacing())]
    spacing = [e / n for e, n in zip(extent, size_xyz)]
    origin = [o - s0 / 2 + s / 2 for o, s0, s in zip(t1.GetOrigin(), t1.GetSpacing(), spacing)]
    out = sitk.Resample(t1, [int(n) for n in size_xyz], sitk.Transform(), sitk.sitkLinear, origin, spacing,
                        t1.GetDirection(), 0.0, sitk.sitkFloat32)
    sitk.WriteImage(out, itk_path(path, OutputError))


#: Runs in a small interpreter between the benchmark and the measured command. On Linux a forked child
#: starts with its parent's high-water RSS (kept across exec), so spawning straight from a benchmark
#: process that holds a model would report at least that process's size; spawned from this helper, the
#: measured command starts from a few MiB. Reports the command's own ``wait4`` usage as JSON to argv[1].
_WAIT4_HELPER = """
import json, os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"status": status, "maxrss": usage.ru_maxrss, "cpu": usage.ru_utime + usage.ru_stime}, f)
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` (argv[0] a path) and measure it: exit code, wall and CPU seconds, its own peak RSS, output.

    The command is reaped with ``os.wait4`` (its own resource usage; ``getrusage(RUSAGE_CHILDREN)`` would
    give the largest child so far) by a small helper interpreter (see ``_WAIT4_HELPER``). Output goes
    through temporary files so that no pipe can fill up.
    """
    with tempfile.TemporaryDirectory(prefix="medtranslate-run-") as tmp:
        usage_file = Path(tmp) / "usage.json"
        out_file, err_file = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out_file, "wb") as out, open(err_file, "wb") as err:
            start = time.perf_counter()
            if hasattr(os, "wait4") and hasattr(os, "posix_spawn"):
                code = subprocess.call([sys.executable, "-S", "-c", _WAIT4_HELPER, str(usage_file), *cmd],
                                       stdout=out, stderr=err, env=env)
            else:  # pragma: no cover - Windows: no per-child rusage
                code = subprocess.call(list(cmd), stdout=out, stderr=err, env=env)
            wall = time.perf_counter() - start
        peak_mib, cpu = float("nan"), float("nan")
        if usage_file.exists():
            usage = json.loads(usage_file.read_text(encoding="utf-8"))
            peak_mib = usage["maxrss"] / (1024 * 1024 if sys.platform == "darwin" else 1024)
            cpu = usage["cpu"]
        return {"returncode": code, "wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_mib": peak_mib,
                "stdout": out_file.read_text(encoding="utf-8", errors="replace"), "stderr": err_file.read_text(encoding="utf-8", errors="replace")}


def run_translate_process(volume: Path, model: str, output: Path, device: str,
                          extra: Sequence[str] = ()) -> dict[str, Any]:
    """One translation in a fresh process: wall and CPU seconds, its peak RSS, the stage seconds it reports."""
    cmd = [sys.executable, "-m", "MedTranslateLib", "translate", str(volume), "-m", str(model), "-o", str(output),
           "--device", device, "--progress", "jsonl", *extra]
    measured = run_measured(cmd)
    done = None
    for line in measured["stdout"].splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "done":
            done = event
        elif event.get("event") == "error":
            raise RuntimeError(f"benchmark translation failed: {event.get('message')}")
    if measured["returncode"] != 0 or done is None:
        raise RuntimeError(f"benchmark translation failed ({measured['returncode']}): {measured['stderr'][-2000:]}")
    return {"wall_seconds": measured["wall_seconds"], "cpu_seconds": measured["cpu_seconds"],
            "peak_rss_mib": measured["peak_rss_mib"], "seconds": done.get("seconds", {}),
            "stats": done.get("stats", {})}


def sampling_sweep(volume: Path, model: str, steps: Sequence[int], device: str, tmp: Path) -> list[dict[str, Any]]:
    """Seconds per volume for each number of diffusion sampling steps (same seed), and the mean absolute
    difference of each result from the result with the most steps (the quality cost of fewer steps)."""
    import numpy as np
    import SimpleITK as sitk

    from MedTranslateLib.io.itk_paths import itk_path

    rows, outputs = [], {}
    for n in sorted(steps):
        outputs[n] = tmp / f"sampling_{n}.nii.gz"
        run = run_translate_process(volume, model, outputs[n], device, extra=["--steps", str(n), "--seed", "0"])
        rows.append({"steps": n, "wall_seconds": run["wall_seconds"],
                     "inference_seconds": run["seconds"].get("inference")})
    best = sitk.GetArrayFromImage(sitk.ReadImage(itk_path(outputs[max(steps)]), sitk.sitkFloat32))
    for row in rows:
        other = sitk.GetArrayFromImage(sitk.ReadImage(itk_path(outputs[row["steps"]]), sitk.sitkFloat32))
        row["mean_abs_difference_to_max_steps"] = float(np.mean(np.abs(other - best)))
        print(json.dumps(row), flush=True)
    return rows


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeated runs (wall, CPU, peak RSS and each stage); ``repeats`` and the wall range."""
    stages = sorted({k for r in runs for k in r["seconds"]})
    return {"repeats": len(runs),
            "wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
            "wall_min": min(r["wall_seconds"] for r in runs), "wall_max": max(r["wall_seconds"] for r in runs),
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
            "seconds": {k: statistics.median(r["seconds"].get(k, float("nan")) for r in runs) for k in stages},
            "stats": runs[0].get("stats", {})}


def add_flop_rates(run: dict[str, Any], network: dict[str, Any]) -> None:
    """Slices/s and achieved GFLOP/s of the inference stage, from the model grid the run reported."""
    inference = run["seconds"].get("inference")
    stats = run.get("stats") or {}
    units = stats.get("units")
    run["slices_per_second"] = units / inference if units and inference else None
    shape = stats.get("unit_shape")
    per_pixel = network.get("flops_per_pixel")
    if units and inference and shape and per_pixel:
        pixels = 1
        for s in shape:
            pixels *= int(s)
        run["achieved_gflops"] = per_pixel * pixels * units * stats.get("passes", 1) / inference / 1e9


def help_latency(repeats: int = 3) -> float:
    """Median wall seconds of ``medtranslate --help`` in a fresh interpreter."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "MedTranslateLib", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_range_text(results: dict[str, Any]) -> str:
    low, high = results.get("matmul_peak_range") or [results["matmul_peak_gflops"]] * 2
    return f"{low:.0f}-{high:.0f} GFLOP/s"


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def to_markdown(results: dict[str, Any]) -> str:
    """The speed section (Markdown) for ``results`` of :func:`run_bench`."""
    m = results["machine"]
    peak = results["matmul_peak_gflops"]
    lines = ["## Speed and memory (`medtranslate bench`)", "",
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores, {m.get('memory_gib', '?')} GiB), "
             f"torch {m.get('torch')} ({m.get('threads')} threads)" + (f", GPU {m['gpu']}" if "gpu" in m else "")
             + (f"; 1-minute load average at the start: {m['load_1min']}" if "load_1min" in m else "") + ".",
             f"Matrix-multiply peak ({results.get('matmul_dtype', 'float32')}, "
             + ("8192^3" if "gpu" in m else "the better of torch.mm 2048^3 and oneDNN's 1 x 1 convolution GEMM")
             + f"): {peak:.1f} GFLOP/s, the highest of "
             f"{_peak_range_text(results)} measured during the run; every share below is of this highest value. "
             f"`medtranslate --help`: {results['help_seconds']:.2f} s (fresh interpreter, median of 3).", ""]
    for entry in results["models"]:
        net = entry["network"]
        lines += [f"### `{entry['model']}`", "",
                  f"{net['family']} {net['dimensionality']}, {net['parameters']:,} parameters, "
                  f"{net['flops_per_unit'] / 1e9:.2f} GFLOP per {net['unit']} input; isolated forward "
                  f"(batch {net['batch']}): {net['forward_gflops']:.1f} GFLOP/s = "
                  f"{net['forward_gflops'] / peak:.0%} of the matmul peak "
                  f"({net.get('folded_norms', 0)} batch norms folded into convolutions, "
                  f"{'channels-last' if net.get('channels_last') else 'default'} memory layout).", "",
                  "| size (x y z) | model grid (z y x) | wall s | CPU s | read | preprocess | inference | restore "
                  "| write | slices/s | inference GFLOP/s (of peak) | peak RSS MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for run in entry["runs"]:
            s = run["seconds"]
            gflops = run.get("achieved_gflops")
            share = f"{gflops:.1f} ({gflops / peak:.0%})" if gflops else "-"
            grid = "x".join(map(str, run.get("stats", {}).get("model_shape", []))) or "-"
            lines.append(f"| {' x '.join(map(str, run['size']))} | {grid} | {_fmt(run['wall_seconds'], 1)} | "
                         f"{_fmt(run['cpu_seconds'], 1)} | "
                         + " | ".join(_fmt(s.get(k)) for k in ("read", "preprocess", "inference", "restore", "write"))
                         + f" | {_fmt(run.get('slices_per_second'), 1)} | {share} | {_fmt(run['peak_rss_mib'], 0)} |")
        repeats = entry["runs"][0]["repeats"] if entry["runs"] else 0
        lines += ["", f"Medians of {repeats} run(s) per size; wall includes interpreter start-up and model loading.", ""]
        if entry.get("sampling"):
            top = max(r["steps"] for r in entry["sampling"])
            lines += ["| sampling steps | wall s per volume | inference s | mean abs difference to "
                      f"{top} steps |", "|---|---|---|---|"]
            lines += [f"| {r['steps']} | {_fmt(r['wall_seconds'], 1)} | {_fmt(r['inference_seconds'], 1)} | "
                      f"{_fmt(r['mean_abs_difference_to_max_steps'], 1)} |" for r in entry["sampling"]]
            lines.append("")
    if results.get("network_rewrites"):
        from MedTranslateLib.bench_network import to_markdown as rewrites_markdown

        lines += rewrites_markdown(results["network_rewrites"], peak)
    if "training" in results:
        lines += ["| family | training samples/s (2D 64x64, batch 4) |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in results["training"].items()]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def splice_markdown(path: Path, section: str, start: str = SPEED_START, end: str = SPEED_END) -> str:
    """Replace what lies between ``start`` and ``end`` in ``path`` with ``section``; keep everything else.

    A missing file is created with a short intro and both sections' markers; a file without the markers
    gets them appended. Returns the new text (written atomically).
    """
    block = f"{start}\n{section.strip()}\n{end}"
    if path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        text = INTRO + f"{SPEED_START}\n{SPEED_END}\n\n{MODELS_START}\n{MODELS_END}\n"
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    if i >= 0 and j >= 0:
        text = text[:i] + block + text[j + len(end):]
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block + "\n"
    atomic_write_text(path, text)
    return text
