"""Click to result in the Slicer module: the module's logic on a slicer-core scene with the real worker.

    python Testing/bench_slicer.py [--sizes 256x256x160,512x512x300] [--model ID] [--repeats 3]

Each size's head-phantom volume (``medtranslate bench``'s) is loaded into a fresh scene and translated as the
Translate button does (:class:`TranslationLogic`, the worker ``python -m MedTranslateLib``): the time from the
click to the result shown, split by the status changes the panel shows, the part spent in Slicer's own process
(writing the input, reading the result, filling the node, fused and linked views), and the peak memory of the
Slicer side and of the worker; each size twice, runs alternating: with a worker started at the click, and with
the standby worker the panel prestarts (``TranslationLogic.prestart``) ready before it. Prints a Markdown table
(medians) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: One measured run in a fresh interpreter (a process's peak memory never goes down): prints one JSON line.
_ONE_RUN = """
import json, resource, sys, time
sys.path.insert(0, {module!r})
import slicer
from MedTranslateLib.scene import load_volume, new_scene
from MedTranslateModule.logic import TranslationLogic, TranslationRequest

scene, volumes = new_scene()
slicer.mrmlScene = scene
node = load_volume(volumes, {volume!r}, "input")
marks = []
logic = TranslationLogic(scene=scene, on_status=lambda s: marks.append((time.perf_counter(), s.state, s.stage)))
if {prestarted!r}:  # as the panel does once an input and a model are chosen: the worker is ready before the click
    logic.prestart("cpu", {preload!r})
    assert logic.wait_for_standby(120), "the standby worker did not get ready"
start = time.perf_counter()
logic.run(TranslationRequest(input_node=node, model_id={model!r}, device="cpu"))
total = time.perf_counter() - start
firsts = {{}}
for when, state, stage in marks:
    firsts.setdefault("done" if state == "done" else stage, when - start)
print(json.dumps({{"total": total, "firsts": firsts,
                  "slicer_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""
#: The panel's status changes, in order: each row's time runs to the next one's start.
STEPS = ("starting", "preprocess", "inference", "restore", "write", "done")


def measure(volume: Path, model: str, prestarted: bool = False, preload: bool = True) -> dict:
    """One click-to-result run in a fresh interpreter (with ``prestarted``: a standby worker ready at the click,
    which has also loaded what the model needs unless ``preload`` is False)."""
    import json

    code = _ONE_RUN.format(module=str(REPO / "MedTranslate"), volume=str(volume), model=model,
                           prestarted=prestarted, preload=model if preload else None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _stage_marks(firsts: dict[str, float]) -> dict[str, float]:
    """When each step began; a step the panel never showed (the worker's next one arrived within the same poll,
    on a small volume) begins, and so lasts nothing, when the next one shown begins."""
    marks, following = {}, firsts["done"]
    for step in reversed(STEPS):
        following = marks[step] = firsts.get(step, following)
    return marks


def table(rows: list[tuple[str, list[dict]]], model: str) -> str:
    """Medians per size as Markdown."""
    head = ("| input | click to result | worker start (Python, imports, model) | read + preprocess | inference "
            "| restore | write + load into the scene | Slicer-side peak | worker peak |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [f"Model `{model}`, CPU, medians of the runs shown; each run in a fresh process.", "", head]
    for size, runs in rows:
        marks = [_stage_marks(r["firsts"]) for r in runs]
        spans = [statistics.median(m[following] - m[first] for m in marks)
                 for first, following in zip(STEPS, STEPS[1:])]
        lines.append(f"| {size} ({len(runs)} runs) | {statistics.median(r['total'] for r in runs):.1f} s | "
                     + " | ".join(f"{s:.1f} s" for s in spans) + " | "
                     f"{statistics.median(r['slicer_mib'] for r in runs):.0f} MiB | "
                     f"{statistics.median(r['worker_mib'] for r in runs):.0f} MiB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256x256x160,512x512x300", help="x*y*z sizes, comma-separated")
    parser.add_argument("--model", default="mr2ct-headphantom-unet2d")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from MedTranslateLib.bench import make_bench_volume, parse_sizes

    rows = []
    with tempfile.TemporaryDirectory(prefix="medtranslate-bench-slicer-") as work:
        for size in parse_sizes(args.sizes):
            label = "x".join(map(str, size))
            volume = Path(work) / f"input_{label}.nrrd"
            make_bench_volume(size, volume)
            runs: dict[bool, list[dict]] = {False: [], True: []}
            for _ in range(args.repeats):  # the two worker starts alternate, side by side
                for prestarted in runs:
                    runs[prestarted].append(measure(volume, args.model, prestarted))
            for prestarted, measured in runs.items():
                name = label.replace("x", " x ") + (", prestarted worker" if prestarted else "")
                rows.append((name, measured))
                print(f"{name}: " + ", ".join(f"{r['total']:.1f} s" for r in measured), file=sys.stderr)
    print(table(rows, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
