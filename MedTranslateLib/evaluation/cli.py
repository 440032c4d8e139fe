"""``medtranslate evaluate``: metrics of synthetic volumes against references, with CSV/JSON/HTML output.

Only argparse is needed to build the parser; the work imports numpy, SimpleITK and matplotlib lazily.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from MedTranslateLib.errors import ConfigError, InputError


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medtranslate evaluate`` (one case, or a folder of cases)."""
    parser.description = ("Compare synthetic volumes with references using the official SynthRAD metrics "
                          "(CT: MAE, PSNR 2023/2025, SSIM 2023, MS-SSIM 2025, tissue MAE, bone Dice; "
                          "MR: MAE, normalised PSNR/SSIM). One case: --pred/--ref; a folder: --pred-dir/--ref-root.")
    one = parser.add_argument_group("one case")
    one.add_argument("--pred", help="synthetic volume")
    one.add_argument("--ref", help="reference volume on the same grid")
    one.add_argument("--mask", help="body mask on the same grid (default: for MR where the reference is non-zero, "
                                      "for CT every voxel)")
    one.add_argument("--input", dest="input_volume", help="the source volume (shown in the report only)")
    one.add_argument("--uncertainty", help="per-voxel std map: adds the uncertainty-vs-error analysis")
    many = parser.add_argument_group("a folder of cases")
    many.add_argument("--pred-dir", help="predictions: <case>.nii.gz, <case>/sct.nii.gz or a batch translate's "
                                              "<case>_..._synthetic.nii.gz (optional <case>_std.*)")
    many.add_argument("--ref-root", help="references in a SynthRAD, BraTS or paired layout")
    many.add_argument("--layout", choices=("auto", "synthrad", "brats", "paired"), default="auto",
                      help="layout of the reference folder (default: auto)")
    many.add_argument("--target", default="t2w", help="BraTS layout: the reference contrast's suffix (default t2w; t2f for FLAIR, t1c, t1n)")
    parser.add_argument("--modality", type=str.upper, choices=("AUTO", "CT", "MR"), default="AUTO",
                        help="target modality of a single case or a paired folder (default auto: CT when the "
                             "reference holds Hounsfield units of air, below -200, else MR)")
    parser.add_argument("--model", help="MR targets: the model (id, id@version or package) that made the "
                                        "predictions; the reference is put on its output scale, as in its card's "
                                        "metrics (default: each image on its own 0-1000 scale)")
    parser.add_argument("--out", help="folder for metrics.csv, metrics.json and report.html (without it: the table "
                                      "on the terminal only)")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures in the HTML report")
    parser.add_argument("--progress", choices=("rich", "jsonl", "none"), default="rich",
                        help="a folder's progress: a bar on a terminal (rich), JSON lines, or none")


def _print_table(rows: list[dict[str, Any]], aggregates: dict[str, dict[str, float]]) -> None:
    from rich.table import Table

    from MedTranslateLib.evaluation.evaluate import infinite_notes
    from MedTranslateLib.progress import rich_console

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    console = rich_console()
    shown = rows if len(rows) <= 4 else []  # many cases: summary only (all cases are in the CSV)
    table = Table(title=f"Evaluation of {len(rows)} case(s)")
    table.add_column("metric")
    for row in shown:
        table.add_column(str(row.get("case", "")), justify="right", overflow="fold")
    stats = ("mean", "std", "median", "q1", "q3") if len(rows) > 1 else ()
    for stat in stats:
        table.add_column(stat, justify="right")
    for key, values in aggregates.items():
        table.add_row(key, *(fmt(row.get(key, math.nan)) for row in shown), *(fmt(values[s]) for s in stats))
    console.print(table)
    for note in infinite_notes(aggregates):
        console.print(f"note: {note}")


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the evaluation the arguments describe; returns the exit code: 0, or :class:`InputError`'s when a
    case of a folder could not be evaluated (the others' metrics are still written)."""
    from pathlib import Path

    from MedTranslateLib.evaluation import evaluate as ev

    single = bool(args.pred or args.ref)
    folder = bool(args.pred_dir or args.ref_root)
    if single == folder:
        raise ConfigError("Give either --pred and --ref (one case) or --pred-dir and --ref-root (a folder).",
                          "Example: medtranslate evaluate --pred sct.nii.gz --ref ct.nii.gz --mask mask.nii.gz")
    failed: list[str] = []
    missing: list[str] = []
    card = None
    if args.model:
        from MedTranslateLib.models.registry import ModelRegistry

        card = ModelRegistry().resolve(args.model).card.to_dict()
    if single:
        if not (args.pred and args.ref):
            raise ConfigError("Both --pred and --ref are needed to evaluate one case.", "Add the missing one.")
        arrays = ev.load_case(args.pred, args.ref, args.mask, args.input_volume, args.uncertainty)
        modality = ev.resolve_modality(args.modality, arrays.ref)
        if args.modality == "AUTO":
            print(f"target modality: {modality} (from the reference's intensities; --modality overrides)")
        if modality == "MR" and card is None:
            print("MR: each image on its own 0-1000 scale (--model ID puts the reference on that model's output "
                  "scale, as its card's metrics are)")
        if args.mask is None:
            arrays.mask = ev.unmasked_region(arrays.ref, modality)  # as for BraTS folders and in the Slicer panel
        if args.mask is None and not arrays.mask.all():
            print(f"no --mask: MR compared where the reference is non-zero ({int(arrays.mask.sum()):,} of "
                  f"{arrays.mask.size:,} voxels: a skull-stripped brain's zero background left out; --mask chooses)")
        elif args.mask is None:
            print("no --mask: every voxel counts, background included (a folder evaluation uses the data set's "
                  "masks, or for BraTS the brain: give --mask to compare)")
        name = Path(args.pred).name
        metrics, case_figs = ev.evaluate_arrays(arrays, modality, card, bool(args.out and not args.no_figures))
        region = f"{Path(args.mask).name} > 0" if args.mask else \
            ("reference != 0" if not arrays.mask.all() else "every voxel")
        rows = [{"case": name, **metrics, **ev.region_fields(arrays.mask, region)}]
        figures = {name: case_figs} if case_figs else {}
        aggregates = ev.aggregate(rows)
        if args.out:
            ev.write_outputs(rows, aggregates, args.out, figures)
    else:
        if not (args.pred_dir and args.ref_root):
            raise ConfigError("Both --pred-dir and --ref-root are needed to evaluate a folder.", "Add the missing one.")
        def report(case: str, error: Exception) -> None:
            failed.append(case)
            print(f"error: case {case}: {error}", file=sys.stderr)

        def no_prediction(case: str) -> None:
            missing.append(case)
            print(f"warning: case {case}: no prediction in {args.pred_dir}; not in the statistics", file=sys.stderr)

        from MedTranslateLib.progress import progress_display
        from MedTranslateLib.progress import ProgressTracker

        with progress_display(args.progress, "evaluate") as callback:
            rows, aggregates = ev.evaluate_folder(args.pred_dir, args.ref_root, layout=args.layout,
                                                  out_dir=args.out, target=args.target, modality=args.modality,
                                                  figures=not args.no_figures, on_failure=report, card=card,
                                                  tracker=ProgressTracker(callback=callback), on_missing=no_prediction)
    _print_table(rows, aggregates)
    if args.out:
        print(f"wrote {Path(args.out) / 'metrics.csv'}, metrics.json and report.html")
    if missing:
        print(f"warning: {len(missing)} reference case(s) without a prediction were not evaluated: "
              f"{', '.join(missing)}", file=sys.stderr)
    if failed:
        print(f"error: {len(rows)} of {len(rows) + len(failed)} cases evaluated; failed: {', '.join(failed)}",
              file=sys.stderr)
        return InputError.exit_code
    return 0
