"""Benchmark of the real-data models: family x task -> held-out metrics, uncertainty, speed, size, training time.

    python -m MedTranslateLib.benchmark_models [--data DIR] [--train] [--models DIR] [--write BENCHMARKS.md]

Without ``--train`` it evaluates model packages: the built-in ones (default) or those in ``--models DIR``;
with ``--train`` it first retrains every config ``MedTranslateLib/configs/{mr2ct-phantom,t1-t2-brats,
t1-flair-brats}-*.toml`` into ``<work>/pkg/<id>`` and evaluates those. Only packages whose card names a real-data
task (see :data:`TASKS`) are evaluated. The held-out data is read from the card's recorded split (z-slab or test
subjects), so a package is always scored on data it never saw in training:

* z-slab split (MR -> CT phantom): the whole source volume is translated (as a user would), and the metrics are
  taken on the held-out slab only (2D models predict every slice independently of the others).
* subject split (BraTS): each held-out subject's volume is translated and scored inside its body mask; MR
  references are put on the model's output scale (the card's output normalisation, per volume).

Metrics are the SynthRAD 2023 definitions of :mod:`MedTranslateLib.evaluation.metrics` (CT: MAE/PSNR/SSIM in HU,
per-tissue MAE, bone Dice; MR: MAE on the model's 0-1000 output scale and, to rank models whose output
normalisations differ, on a common scale (:func:`~MedTranslateLib.benchmark_heldout.mae_on_common_scale`); PSNR/SSIM on [0, 1]-normalised images).
Uncertainty vs error (:func:`~MedTranslateLib.evaluation.uncertainty.uncertainty_error_relation`) is measured for
the U-Net and pix2pix (flip test-time augmentation spread) and diffusion
(spread of the samples averaged into its prediction).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from MedTranslateLib.bench import MODELS_END as END, MODELS_START as START
from MedTranslateLib.families import SAMPLED_FAMILIES, get_family
from MedTranslateLib.benchmark_heldout import TASKS, evaluation_mask, held_out_cases, score_case, task_of, volume_array

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_SAMPLES = 2
SAMPLER_LABELS = {"dpm++2m": "DPM++ 2M", "ddim": "DDIM", "ddpm": "DDPM", "bridge": "bridge"}


def default_data_dir() -> Path:
    """``MEDTRANSLATE_DATA`` or ``../shared/data`` next to the repository."""
    env = os.environ.get("MEDTRANSLATE_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def config_ids() -> list[str]:
    """Ids of the real-data training configs (file stems)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml") if task_of(p.stem))


# ------------------------------------------------------------------ one package
def evaluate_package(path: Path, data_root: Path, uncertainty: bool = True,
                     steps: int | None = None, samples: int = DEFAULT_SAMPLES,
                     sampler: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Held-out metrics, inference seconds per volume (on ``device``, the CPU by default), parameters, size and
    training time of a package.

    ``steps``, ``sampler``: diffusion sampling steps and sampler (None: the card's default). ``samples``:
    diffusion samples averaged into the prediction (their spread is the uncertainty map; the time per volume
    includes every sample).
    Deterministic families are timed on one plain pass; their uncertainty (flip test-time augmentation; none for
    the random forest) comes from a second run."""
    import SimpleITK as sitk
    import torch

    from MedTranslateLib.families.base import InferenceOptions
    from MedTranslateLib.io import read_mask, read_volume
    from MedTranslateLib.models.package import open_package
    from MedTranslateLib.pipeline import Translator

    package = open_package(path)
    card = package.card.to_dict()
    translator = Translator(package, device=device)
    stochastic = card["family"] in SAMPLED_FAMILIES
    options = InferenceOptions(steps=steps, sampler=sampler, samples=max(1, int(samples)) if stochastic else 1)
    rows, seconds, cpu = [], [], []
    cases = held_out_cases(card, data_root)
    for case in cases:
        image, _ = read_volume(case.source)
        mask_image = read_mask(case.mask, image) if case.mask else None
        torch.manual_seed(0)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = translator.translate(image, mask_image, options, uncertainty=stochastic and options.samples > 1)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        ref_image, _ = read_volume(case.target)
        mask = evaluation_mask(image, case.mask, card)
        std = None
        if uncertainty and stochastic:
            std = None if result.uncertainty is None else volume_array(result.uncertainty)
        elif uncertainty and card["family"] != "random_forest":  # a forest gives no uncertainty map
            with_unc = translator.translate(image, mask_image, options, uncertainty=True)
            std = None if with_unc.uncertainty is None else volume_array(with_unc.uncertainty)
        row = score_case(volume_array(result.output), volume_array(ref_image), mask, case, card, std)
        row.update({"case": case.name, "voxels": int(np.prod(sitk.GetArrayViewFromImage(image).shape))})
        rows.append(row)
    if not rows:
        raise RuntimeError(f"{card['id']}: no held-out case found under {data_root}.")
    state = package.load_state_dict()
    weights = package.weights_path()
    keys = sorted({k for r in rows for k in r if isinstance(r[k], (int, float)) and k != "voxels"})
    mean = {k: float(np.nanmean([r.get(k, math.nan) for r in rows])) for k in keys}
    return {"id": card["id"], "family": card["family"], "dimensionality": card.get("dimensionality", "2d"),
            "task": getattr(task_of(card["id"]), "prefix", card["id"]),
            "path": str(path), "voxels": rows[0]["voxels"], "cases": [r["case"] for r in rows], "metrics": mean,
            "slab_scored": any(case.z_range is not None for case in cases),
            "per_case": rows,
            "card_metrics": (card.get("metrics") or {}).get("values", {}),
            "cpu_seconds": float(np.mean(cpu)), "wall_seconds": float(np.mean(seconds)),
            "torch_threads": torch.get_num_threads(),
            "parameters": int(sum(t.numel() for t in state.values())),
            "size_mb": (weights.stat().st_size / 1e6) if weights else math.nan,
            "training_seconds": (card.get("training") or {}).get("seconds"),
            "training_steps": (card.get("training") or {}).get("steps"),
            **_sampling_columns(card, steps, sampler, stochastic),
            "samples": options.samples if stochastic else None}


def _sampling_columns(card: dict[str, Any], steps: int | None, sampler: str | None,
                      stochastic: bool) -> dict[str, Any]:
    """The sampler and steps a diffusion evaluation used (None for other families)."""
    if not stochastic:
        return {"sampling_steps": None, "sampler": None}
    chosen, count, _ = get_family(card["family"]).sampling_settings(card.get("sampling"), steps, sampler)
    return {"sampling_steps": count, "sampler": chosen}


def cpu_seconds_note(result: dict[str, Any]) -> str:
    """What ``cpu_seconds`` measured: the held-out cases, the voxels translated, the threads. A z-slab case is
    translated whole and scored on its slab only, so the voxels are the whole volume's."""
    cases = ", ".join(result["cases"])
    whole = "; the whole volume is translated, its held-out slab scored" if result.get("slab_scored") else ""
    return (f"process CPU time to translate one held-out volume ({cases}; {result['voxels']:,} voxels{whole}) "
            f"with {result['torch_threads']} torch thread(s) on a shared 2-core CPU; wall time under load is higher "
            "(benchmark_models)")


def update_card_performance(path: Path, result: dict[str, Any]) -> None:
    """Write the measured ``cpu_seconds`` per volume into the package's ``model.json`` (validated) and its
    README.md."""
    from MedTranslateLib.models.card import validate_card

    card_path = Path(path) / "model.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card.setdefault("performance", {}).update({
        "cpu_seconds": round(result["cpu_seconds"], 2), "wall_seconds": round(result["wall_seconds"], 2),
        "cpu_seconds_note": cpu_seconds_note(result)})
    described = validate_card(card).describe()
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (Path(path) / "README.md").write_text(described, encoding="utf-8")


def _evaluate_with_threads(path: Path, data_root: Path, steps: int | None, samples: int, sampler: str | None,
                           threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    print("evaluating", path.name, flush=True)
    return evaluate_package(path, data_root, steps=steps, samples=samples, sampler=sampler)


def evaluate_all(paths: Sequence[Path], data_root: Path, steps: int | None = None, jobs: int = 1,
                 samples: int = DEFAULT_SAMPLES, sampler: str | None = None) -> list[dict[str, Any]]:
    """:func:`evaluate_package` for each path, ``jobs`` at a time in separate processes (cores // jobs threads
    each); results in the order of ``paths``."""
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    if jobs <= 1:
        return [_evaluate_with_threads(path, data_root, steps, samples, sampler, threads) for path in paths]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_evaluate_with_threads, path, data_root, steps, samples, sampler, threads)
                   for path in paths]
        return [future.result() for future in futures]


# ------------------------------------------------------------------ training
def _training_cost(model_id: str) -> float:
    """A rough relative cost of a config (steps x family factor), to start the longest trainings first."""
    from MedTranslateLib.training.config import load_config

    config = load_config(CONFIG_DIR / f"{model_id}.toml")
    factor = 1.8 if config.family in SAMPLED_FAMILIES else 0.0 if config.family == "random_forest" else 1.0
    return factor * config.steps


def train_all(data_root: Path, work: Path, only: Sequence[str] = (), jobs: int = 1) -> Path:
    """Retrain every real-data config (or ``only`` those ids) into ``work/pkg/<id>``; returns ``work/pkg``.

    ``jobs`` trainings run at once (longest first), each with ``cores // jobs`` torch threads; the progress of
    each goes to ``work/logs/<id>.log`` (JSON lines). A training interrupted earlier (its ``<id>.work`` folder
    holds a checkpoint) continues from that checkpoint."""
    from concurrent.futures import ThreadPoolExecutor

    out, logs = work / "pkg", work / "logs"
    out.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    ids = sorted((i for i in config_ids() if not only or i in only), key=_training_cost, reverse=True)
    threads = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    # the children run in the caller's folder with this very package first on their path
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": path}

    def run(model_id: str) -> None:
        task = task_of(model_id)
        command = [sys.executable, "-m", "MedTranslateLib", "train", "--config", str(CONFIG_DIR / f"{model_id}.toml"),
                   "--data", str(data_root / task.subfolder), "--output", str(out / model_id), "--progress", "jsonl"]
        resume = (out / f"{model_id}.work" / "checkpoint" / "state.json").is_file()
        command += ["--resume"] if resume else []
        print(f"{'resuming' if resume else 'training'} {model_id} ({threads} thread(s)); "
              f"log: {logs / (model_id + '.log')}", flush=True)
        with open(logs / f"{model_id}.log", "a" if resume else "w", encoding="utf-8") as log:
            done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"training {model_id} failed (exit {done.returncode}); see {logs / (model_id + '.log')}")
        print(f"trained {model_id}", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(run, model_id) for model_id in ids]:
            future.result()
    return out


# ------------------------------------------------------------------ table
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def headline_mae(metrics: dict[str, Any]) -> float:
    """The MAE models are ranked by: HU for CT, the common reference scale for MR (see mae_on_common_scale)."""
    return float(metrics.get("mae_common", metrics.get("mae", math.inf)))


def model_label(result: dict[str, Any]) -> str:
    """The family, with the dimensionality when it is not 2D (``unet 2.5D``)."""
    dims = str(result.get("dimensionality") or "2d").upper()
    return result["family"] + ("" if dims == "2D" else f" {dims}")


def render_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown tables, one per task, sorted by held-out MAE."""
    lines = []
    for task in TASKS:
        rows = sorted((r for r in results if r["task"] == task.prefix), key=lambda r: headline_mae(r["metrics"]))
        if not rows:
            continue
        ct = task.prefix.startswith("mr2ct")
        lines += [f"### {task.title}", "", f"Held out: {', '.join(rows[0]['cases'])}.", ""]
        head = ["model", "family", "MAE", "PSNR", "SSIM"]
        head += ["MAE air", "MAE soft", "MAE bone", "Dice bone"] if ct else []
        head += ["unc. Pearson", "unc. Spearman", "err top/bottom 10 %", "CPU s/vol", "wall s/vol", "params", "MB",
                 "train s (steps)"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            m = r["metrics"]
            psnr, ssim = (m.get("psnr"), m.get("ssim")) if ct else (m.get("psnr_norm"), m.get("ssim_norm"))
            samples = int(r.get("samples") or 1)
            sampler = SAMPLER_LABELS.get(r.get("sampler"), "DDIM")  # rows of earlier runs: DDIM
            sampler = "" if sampler == r["family"] else sampler + " "  # the bridge family's own sampler
            family = model_label(r) + (f" ({r['sampling_steps']} {sampler}steps, "
                                    f"{f'mean of {samples} samples' if samples > 1 else '1 sample'})"
                                    if r.get("sampling_steps") else "")
            cells = [f"`{r['id']}`", family, _fmt(headline_mae(m)), _fmt(psnr, 2), _fmt(ssim, 3)]
            if ct:
                cells += [_fmt(m.get("mae_air")), _fmt(m.get("mae_soft")), _fmt(m.get("mae_bone")),
                          _fmt(m.get("dice_bone"), 3)]
            unc = "unc_pearson" in m
            cells += [_fmt(m.get("unc_pearson"), 2) if unc else "-", _fmt(m.get("unc_spearman"), 2) if unc else "-",
                      f"{m['unc_error_top10']:.1f} / {m['unc_error_bottom10']:.1f}" if unc else "-",
                      _fmt(r["cpu_seconds"]), _fmt(r.get("wall_seconds")), f"{r['parameters']:,}",
                      _fmt(r["size_mb"], 2),
                      f"{_fmt(r['training_seconds'], 0)} ({r['training_steps'] or 'fit'})"]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines += ["", summary(rows), ""]
    return "\n".join(lines)


def summary(rows: Sequence[dict[str, Any]]) -> str:
    """One plain sentence per task: the ranking by held-out MAE and how far each family is behind the best."""
    best = rows[0]
    top = headline_mae(best["metrics"])
    behind = ", ".join(f"{model_label(r)} {headline_mae(r['metrics']):.1f} (+{headline_mae(r['metrics']) - top:.1f})"
                       for r in rows[1:])
    text = f"Lowest held-out MAE: **{model_label(best)}** ({top:.1f})."
    if behind:
        text += f" Behind it (MAE, difference): {behind}."
    if "mae_bone" in best["metrics"]:
        bone = min(rows, key=lambda r: r["metrics"].get("mae_bone", math.inf))
        text += (f" Best bone MAE: {model_label(bone)} ({bone['metrics']['mae_bone']:.1f} HU, Dice "
                 f"{bone['metrics'].get('dice_bone', math.nan):.3f}).")
    return text


def write_section(path: Path, body: str) -> None:
    """Replace the text between the models markers of ``path`` (created with the speed section's markers too)."""
    from MedTranslateLib.bench import splice_markdown

    splice_markdown(path, body, START, END)


NOTES = """\
Every model was trained by `medtranslate train` from `MedTranslateLib/configs/<id>.toml` on the 2-core CPU
(`--train --jobs 2`: two trainings at a time, one torch thread each; warm-up + cosine learning rate):
batches of 8 slices of 128 x 128 for the U-Nets and pix2pix, of 96 x 96 for the diffusion families, and of 4 of
96 x 96 for CycleGAN (steps and seconds per model in the table). The unpaired families (CycleGAN, ContourDiff) train
on the same slab without ever seeing a pair: MR and CT slices are drawn independently, and ContourDiff uses the CT
images only. GAN and above all diffusion models usually get tens of thousands of steps on a GPU: their rows show
what this CPU budget buys, not what the families can do. All BraTS models use z-score intensities (input and
output) and `contrast_augment`, the U-Nets and pix2pix also instance norm (the U-Net configs give the held-out MAE
of each step).
The held-out data is recorded in each card's split: MR -> CT: slices 64-85 of phantom case 1PA001 (axial z-slab;
the models trained on slices 0-59, 4-slice gap; 1PA003, a slab with almost no bone, was not used); BraTS: patient
TCGA-DU-7294 (trained on the other three). MAE/PSNR/SSIM follow SynthRAD 2023 (CT in HU inside the body mask); MR
targets: MAE on a common scale, the reference's 0-1000 range between its 0.5th and 99.5th percentiles in the brain,
after the prediction is mapped back to the reference's units with the reference's own statistics under the model's
output normalisation (for percentile-normalised models this is their MAE on their output scale; z-score models
would otherwise be measured in other units); PSNR/SSIM on [0, 1]-normalised images. Diffusion: the prediction is
the mean of the samples (sampler, steps and count in the family column). Uncertainty vs error: U-Net,
pix2pix and CycleGAN = flip test-time augmentation spread, random forest = none (no map), diffusion
families = spread of their samples (Pearson/Spearman of std vs |error|, and mean |error| in the 10 % most / least uncertain voxels).
A pork phantom is not a patient and four brains are a tiny cohort: these numbers rank the families on this data
only. Not for clinical use.
"""


def header(trained: bool, results: Sequence[dict[str, Any]]) -> str:
    """The section's heading, regeneration command and notes."""
    threads = results[0]["torch_threads"] if results else "?"
    which = ("the models trained by this run" if trained else
             "the shipped (built-in) packages only; add `--train --jobs 2` to retrain and compare every family")
    missing = sorted(set(config_ids()) - {r["id"] for r in results})
    if trained and missing:
        which += "; not trained by this run, so not in the tables: " + ", ".join(f"`{m}`" for m in missing)
    return (f"## Real-data models (held-out)\n\nRegenerate: `python -m MedTranslateLib.benchmark_models --train --jobs 2 "
            f"--write BENCHMARKS.md` (retrains every config, then evaluates). This table: {which}.\n\n{NOTES}\n"
            f"CPU s/vol: process CPU time to translate one whole source volume with {threads} torch thread(s) on "
            f"this machine ({os.cpu_count()} shared cores); wall s/vol is elapsed time, inflated by other jobs. "
            f"params: the numbers in the weights file, batch-norm running statistics included.\n\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m MedTranslateLib.benchmark_models",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="real data folder (default MEDTRANSLATE_DATA or ../shared/data)")
    parser.add_argument("--train", action="store_true", help="retrain every real-data config first")
    parser.add_argument("--jobs", type=int, default=1,
                        help="trainings (and evaluations) run at once, each with cores/jobs threads (default 1)")
    parser.add_argument("--only", nargs="*", default=[], help="model ids to train/evaluate (default all)")
    parser.add_argument("--models", type=Path, default=None, help="folder of packages (default: the built-in ones)")
    parser.add_argument("--work", type=Path, default=Path("benchmark_models_work"), help="training output folder")
    parser.add_argument("--write", type=Path, default=None, help="markdown file whose models section is replaced")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    parser.add_argument("--steps", type=int, default=None, help="diffusion sampling steps (default: the card's)")
    parser.add_argument("--sampler", default=None,
                        help="diffusion sampler: ddim, dpm++2m or ddpm (default: the card's)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help="diffusion samples averaged per volume (default %(default)s; their spread is the "
                             "uncertainty)")
    parser.add_argument("--results", nargs="*", type=Path, default=[],
                        help="render the table from earlier --json result files instead of evaluating")
    parser.add_argument("--update-cards", action="store_true", help="write the measured cpu_seconds into the cards")
    args = parser.parse_args(argv)
    data_root = (args.data or default_data_dir()).resolve()
    if not data_root.is_dir():
        print(f"error: the real data folder {data_root} does not exist (set --data or MEDTRANSLATE_DATA)",
              file=sys.stderr)
        return 2
    from MedTranslateLib.models.registry import BUILTIN_DIR

    results = [r for f in args.results for r in json.loads(Path(f).read_text(encoding="utf-8"))]
    folder = train_all(data_root, args.work.resolve(), args.only, args.jobs) if args.train else (args.models or BUILTIN_DIR)
    paths = [] if args.results else sorted(p for p in Path(folder).iterdir() if (p / "model.json").is_file())
    ids = {path: json.loads((path / "model.json").read_text(encoding="utf-8")).get("id", "") for path in paths}
    chosen = [path for path in paths if task_of(ids[path]) and (not args.only or ids[path] in args.only)]
    for path, result in zip(chosen, evaluate_all(chosen, data_root, args.steps, args.jobs, args.samples, args.sampler)):
        results.append(result)
        if args.update_cards:
            update_card_performance(path, result)
    trained = args.train or any(Path(r["path"]).parent != Path(BUILTIN_DIR) for r in results)
    body = header(trained, results) + render_table(results)
    print(body)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    if args.write:
        write_section(args.write, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
