"""GPU check of issue 6: what the first translation in a fresh process pays on CUDA, with cuDNN's algorithm search
(``torch.backends.cudnn.benchmark``) on and off.

Each variant runs in a fresh interpreter (first-call costs are per process): it loads the model on the GPU,
translates the same volume twice and reports the stage seconds of both (the first is what a radiologist waits
for after a fresh start; the second what every further volume of a batch costs). ``search``: on, off, or the
pipeline's choice ("default").

    python Testing/gpu/first_call.py VOLUME --size 256x256x256 --model mr2ct-headphantom-unet2d=search \
        --model PIX2PIX_PKG=search --model DIFFUSION_PKG=search --steps 10 --json first_call.json --budget 150
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def child(volume: str, model: str, search: str, steps: int | None, device: str) -> dict[str, Any]:
    """One variant in this (fresh) process: model load, then two translations of ``volume``."""
    start = time.perf_counter()
    import SimpleITK as sitk
    import torch

    from MedTranslateLib.families.base import InferenceOptions
    from MedTranslateLib.models.registry import ModelRegistry
    from MedTranslateLib.pipeline import Translator

    imported = time.perf_counter() - start

    def sync() -> None:
        if translator.device.type == "cuda":
            torch.cuda.synchronize()

    image = sitk.ReadImage(volume, sitk.sitkFloat32)
    start = time.perf_counter()
    translator = Translator(ModelRegistry().resolve(model), device=device)
    sync()
    load = time.perf_counter() - start
    if search != "default":
        torch.backends.cudnn.benchmark = search == "on"
    runs = []
    for _ in range(2):
        start = time.perf_counter()
        result = translator.translate(image, options=InferenceOptions(steps=steps, seed=0))
        sync()
        runs.append({**{k: round(v, 3) for k, v in result.seconds.items()},
                     "total": round(time.perf_counter() - start, 3)})
    return {"model": model, "search": search, "search_in_effect": torch.backends.cudnn.benchmark,
            "steps": steps, "imports": round(imported, 3), "load": round(load, 3), "first": runs[0],
            "second": runs[1], "stats": result.stats}


def variants(spec: str) -> list[tuple[str, str]]:
    """``MODEL=search`` -> (model, "on") and (model, "off"); a plain MODEL: (model, "default"), the pipeline's
    choice."""
    model, _, knob = spec.partition("=")
    return [(model, search) for search in (("on", "off") if knob.strip() == "search" else ("default",))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("volume")
    parser.add_argument("--model", action="append", required=True, help="MODEL or MODEL=search")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps of diffusion models")
    parser.add_argument("--json", required=True)
    parser.add_argument("--size", default=None, metavar="XxYxZ",
                        help="first write VOLUME: the benchmark's head phantom at this size")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run of this script")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds: no variant starts after them")
    parser.add_argument("--rounds", type=int, default=2, help="passes over all variants (order reversed each pass)")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "SEARCH", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, search, steps = args.child
        print(json.dumps(child(args.volume, model, search, int(steps) or None, args.device)), flush=True)
        return 0
    if args.size:
        from MedTranslateLib.bench import make_bench_volume, parse_sizes

        make_bench_volume(parse_sizes(args.size)[0], Path(args.volume))
    todo = [v for spec in args.model for v in variants(spec)]
    start, rows = time.perf_counter(), []
    for round_index in range(args.rounds):
        for model, search in (todo if round_index % 2 == 0 else todo[::-1]):
            if time.perf_counter() - start > args.budget:
                print(f"budget spent: {model} search={search} round {round_index + 1} not run",
                      flush=True)
                continue
            begun = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, args.volume, "--model", model, "--json", args.json,
                                   "--device", args.device, "--child", model, search, str(args.steps or 0)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{model} search={search} failed: {done.stderr[-1500:]}", flush=True)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row.update(round=round_index + 1, process_wall=round(time.perf_counter() - begun, 3))
            rows.append(row)
            print(json.dumps(row), flush=True)
            Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
