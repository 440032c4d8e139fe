"""Diffusion sampling sweep: held-out quality and time of a diffusion package against sampler and step count.

    python -m MedTranslateLib.bench_sampling PACKAGE [--samplers dpm++2m,ddim] [--steps 5,10,20,50]
                                             [--data DIR] [--json OUT.json] [--write BENCHMARKS.md]

Each (sampler, steps) pair translates the package's held-out data (its card's split, as
:mod:`MedTranslateLib.benchmark_models` does) with one sample and the same seed, and is scored with the same
metrics. The table goes between the ``sampling`` markers of ``--write``; ``--results`` renders it from earlier
``--json`` files (e.g. runs of another version of the code, labelled by their ``label``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

START, END = "<!-- sampling:start -->", "<!-- sampling:end -->"


def sweep(package: Path, data_root: Path, samplers: Sequence[str], steps: Sequence[int],
          label: str = "", device: str = "cpu") -> list[dict[str, Any]]:
    """One held-out evaluation (1 sample, seed 0) per sampler and step count, on ``device``."""
    from MedTranslateLib.benchmark_models import evaluate_package

    rows = []
    for sampler in samplers:
        for n in sorted(steps):
            result = evaluate_package(package, data_root, uncertainty=False, steps=n, samples=1, sampler=sampler,
                                     device=device)
            row = {"label": label, "sampler": result["sampler"], "steps": n, "metrics": result["metrics"],
                   "cpu_seconds": result["cpu_seconds"], "wall_seconds": result["wall_seconds"],
                   "id": result["id"], "cases": result["cases"], "torch_threads": result["torch_threads"],
                   "device": device}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def render(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: one row per (label, sampler, steps), CT or MR metrics as the rows carry them."""
    from MedTranslateLib.benchmark_models import SAMPLER_LABELS, _fmt, headline_mae

    ct = any("mae_bone" in r["metrics"] for r in rows)
    head = (["sampler", "steps", "MAE", "PSNR", "SSIM"] + (["MAE bone", "Dice bone"] if ct else [])
            + ["CPU s/vol", "wall s/vol"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        name = SAMPLER_LABELS.get(r["sampler"], r["sampler"]) + (f" ({r['label']})" if r.get("label") else "")
        psnr, ssim = (m.get("psnr"), m.get("ssim")) if ct else (m.get("psnr_norm"), m.get("ssim_norm"))
        cells = [name, str(r["steps"]), _fmt(headline_mae(m)), _fmt(psnr, 2), _fmt(ssim, 3)]
        cells += [_fmt(m.get("mae_bone")), _fmt(m.get("dice_bone"), 3)] if ct else []
        cells += [_fmt(r["cpu_seconds"]), _fmt(r.get("wall_seconds"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    from MedTranslateLib.benchmark_models import default_data_dir

    parser = argparse.ArgumentParser(prog="python -m MedTranslateLib.bench_sampling",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path, nargs="?", help="diffusion model package (folder or .zip)")
    parser.add_argument("--samplers", default="dpm++2m,ddim", help="comma-separated samplers (default %(default)s)")
    parser.add_argument("--steps", default="5,10,20,50", help="comma-separated step counts (default %(default)s)")
    parser.add_argument("--data", type=Path, default=None, help="real data folder (default MEDTRANSLATE_DATA or "
                                                                 "../shared/data)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--label", default="", help="a label for these rows (e.g. the code version)")
    parser.add_argument("--results", nargs="*", type=Path, default=[], help="earlier --json files to include")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--write", type=Path, default=None, help="markdown file whose sampling section is replaced")
    args = parser.parse_args(argv)
    rows = [row for f in args.results for row in json.loads(Path(f).read_text(encoding="utf-8"))]
    if args.package is not None:
        data_root = args.data or default_data_dir()
        if not data_root.is_dir():
            print(f"error: the real data folder {data_root} does not exist (set --data or MEDTRANSLATE_DATA)",
                  file=sys.stderr)
            return 2
        rows += sweep(args.package, data_root, [s for s in args.samplers.split(",") if s],
                      [int(n) for n in args.steps.split(",") if n], args.label, args.device)
    if not rows:
        parser.error("give a PACKAGE to sweep or --results to render")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float), encoding="utf-8")
    table = render(rows)
    print(table)
    if args.write:
        from MedTranslateLib.bench import splice_markdown

        splice_markdown(args.write, table, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
