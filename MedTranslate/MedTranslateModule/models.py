"""Model management for the panel: list, search, import, remove and locate model packages.

Every call asks the backend worker (``<worker> models ...``) in a subprocess, so the panel never imports torch
and shows the backend's own error messages.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from MedTranslateModule.process import kill_process_tree, popen_options

#: Card fields a search looks in.
SEARCH_FIELDS = ("id", "title", "source_modality", "target_modality", "anatomy", "field_of_view", "family")


@dataclass
class ModelInfo:
    """What the panel shows about one model."""

    id: str
    version: str = ""
    title: str = ""
    source_modality: str = ""
    target_modality: str = ""
    anatomy: str = ""
    field_of_view: str = ""
    family: str = ""
    license: str = ""
    performance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    limitations: str = ""
    sample_data: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    normalization: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelInfo":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data and data[name] is not None}
        return cls(**known)

    @property
    def removable(self) -> bool:
        """Only packages in the user's model folder can be removed; built-ins ship with the extension."""
        return self.source == "user"

    @property
    def label(self) -> str:
        """The line in the model list."""
        return f"{self.title or self.id} ({self.source_modality} -> {self.target_modality})"

    def matches(self, query: str) -> bool:
        """True when every word of ``query`` starts a word (case-insensitive) of the id, title, modalities,
        anatomy, field of view or family: "t2" finds T1 -> T2 models, not "unet2d"."""
        words = _words(" ".join(str(getattr(self, name)) for name in SEARCH_FIELDS))
        return all(any(word.startswith(wanted) for word in words) for wanted in _words(query))

    def evaluation_settings(self) -> tuple[str, dict[str, Any] | None]:
        """The metrics' modality for this model's output and, for MR, the card part that puts a reference on
        the model's output scale (as ``medtranslate evaluate --model``); None when the listing lacks it."""
        from MedTranslateLib.preprocess.modality import CT_LIKE

        if not self.target_modality or self.target_modality.upper() in CT_LIKE:
            return "CT", None
        card = {"target_modality": self.target_modality, "normalization": self.normalization}
        return "MR", card if self.normalization.get("output") else None

    def card_text(self) -> str:
        """Card: modalities, anatomy and field of view, held-out figures, expected GPU / CPU time, licence,
        version and origin, and the model's limits."""
        esc = html.escape
        lines = [f"<b>{esc(self.title or self.id)}</b>",
                 f"{esc(self.source_modality)} &rarr; {esc(self.target_modality)}; {esc(self.anatomy)}, "
                 f"{esc(self.field_of_view)}"]
        held_out = self._held_out_text()
        if held_out:
            lines.append(held_out)
        times = []
        for key, value in sorted(self.performance.items()):
            lowered = key.lower()
            label = "GPU" if ("gpu" in lowered or "cuda" in lowered) else "CPU" if "cpu" in lowered else None
            if label and "second" in lowered and "train" not in lowered and isinstance(value, (int, float)):
                times.append(f"{label} about {value:.0f} s")
        if times:
            lines.append("Expected time: " + ", ".join(times) + self._uncertainty_time_text())
        origin = "built-in" if self.source == "builtin" else "your model folder" if self.source == "user" else ""
        lines.append(f"Licence: {esc(self.license or 'unknown')}"
                     + (f"; version {esc(self.version)}" if self.version else "")
                     + (f", {origin}" if origin else ""))
        if self.limitations:
            lines.append(f"<i>Limits: {esc(self.limitations)}</i>")
        return "<br>".join(lines)

    def _uncertainty_time_text(self) -> str:
        """What an uncertainty map adds to the time, by family (measured: flip TTA 2.5-4x the plain run)."""
        from MedTranslateLib.families import FAMILY_NAMES, NO_UNCERTAINTY_FAMILIES, SAMPLED_FAMILIES

        if self.family in NO_UNCERTAINTY_FAMILIES or self.family not in FAMILY_NAMES:
            return ""
        if self.family in SAMPLED_FAMILIES:
            return "; an uncertainty map needs several samples, each taking about as long"
        return "; with an uncertainty map (four flipped passes) about 2.5-4x as long"

    def _held_out_text(self) -> str:
        values = self.metrics.get("values", {}) if isinstance(self.metrics, dict) else {}
        unit = " HU" if self.target_modality.upper() == "CT" else ""
        parts = [f"{label} {values[key]:{spec}}{suffix}"
                 for key, label, spec, suffix in (("mae", "MAE", ".1f", unit), ("ssim", "SSIM", ".3f", ""),
                                                  ("mae_bone", "bone MAE", ".0f", unit))
                 if isinstance(values.get(key), (int, float))]
        return "Held-out: " + ", ".join(parts) if parts else ""


@dataclass
class PackageProblem:
    """A model package the backend could not read: where, why and what to do."""

    path: str
    problem: str
    fix: str = ""

    @property
    def folder(self) -> str:
        """The package's folder (or zip) name."""
        return Path(self.path).name


def parse_listing(text: str) -> tuple[list[ModelInfo], list[PackageProblem]]:
    """Parse ``models list --json`` output: ``{"models": [...], "problems": [...]}``, or a plain list of models."""
    data = json.loads(text)
    items, problems = (data.get("models", []), data.get("problems", [])) if isinstance(data, dict) else (data, [])
    models = [ModelInfo.from_dict(item) for item in items if isinstance(item, dict) and item.get("id")]
    return models, [PackageProblem(str(item["path"]), str(item.get("problem", "")), str(item.get("fix") or ""))
                    for item in problems if isinstance(item, dict) and item.get("path")]


def parse_model_list(text: str) -> list[ModelInfo]:
    """The models of ``models list --json`` output."""
    return parse_listing(text)[0]


def problems_text(problems: Sequence[PackageProblem], width: int = 160) -> tuple[str, str]:
    """The line under the model list about packages that could not be read (the first one's reason cut to about
    ``width`` characters) and its tooltip (every path, reason and fix, as HTML); empty when there are none."""
    if not problems:
        return "", ""
    first = problems[0]
    reason = first.problem if len(first.problem) <= width else first.problem[:width - 1].rstrip() + "\u2026"
    count = len(problems)
    line = f"{count} model package{'s' if count > 1 else ''} could not be read: {first.folder}: {reason}"
    if count > 1:
        line += f" (and {count - 1} more)"
    tooltip = "".join(f"<p><b>{html.escape(p.path)}</b><br>{html.escape(p.problem)} {html.escape(p.fix)}</p>"
                      for p in problems)
    return line, tooltip


def show_problems(label: Any, problems: Sequence[PackageProblem]) -> None:
    """Put the line about unreadable packages, and its tooltip, on ``label`` (a QLabel), hidden when there are none."""
    label.text, label.toolTip = problems_text(problems)
    label.visible = bool(problems)


def model_of_node(models: Sequence[ModelInfo], node: Any) -> ModelInfo | None:
    """The listed model that made a synthetic volume node (its provenance attributes: id, then version; another
    version of the id, the last listed, when that version is gone)."""
    model_id = node.GetAttribute("MedTranslate.model_id") if node is not None else None
    matches = [model for model in models if model_id and model.id == model_id]
    version = node.GetAttribute("MedTranslate.model_version") if matches else None
    return next((model for model in matches if model.version == version), matches[-1] if matches else None)


def filter_models(models: Sequence[ModelInfo], query: str = "") -> list[ModelInfo]:
    """The models matching ``query``, one per id: the one the backend runs for that id (``models list`` is
    sorted by id, version and origin, so the last entry of an id is its newest version, yours on a tie)."""
    newest = {model.id: model for model in models}
    return [model for model in newest.values() if model.matches(query)]


def _words(text: str) -> list[str]:
    """Lower-case runs of letters and digits."""
    return re.findall(r"[a-z0-9]+", text.lower())


def run_models_command(worker_command: Sequence[str], arguments: Sequence[str], timeout: float = 120.0,
                       env: dict[str, str] | None = None) -> str:
    """Run ``<worker> models <arguments>`` and return its standard output; a failure raises RuntimeError with
    the worker's own message (the last line it wrote to standard error). A worker that does not answer in time
    is killed with all its children (``PythonSlicer`` is a launcher: the real Python is its child)."""
    try:
        process = subprocess.Popen([*worker_command, "models", *arguments], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True,
                                   encoding="utf-8", errors="replace", **popen_options(own_group=True))
    except FileNotFoundError as error:
        raise RuntimeError(f"Could not start the MedTranslate backend ({worker_command[0]}): {error.strerror}. "
                           "Reinstall the MedTranslate extension.") from error
    try:
        output, errors = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as error:
        kill_process_tree(process)
        try:
            process.communicate(timeout=5)  # collect the killed tree's output; never block the panel for long
        except subprocess.TimeoutExpired:
            pass
        raise RuntimeError(f"The MedTranslate backend did not answer within {timeout:.0f} s: try again, or "
                           "restart Slicer if it keeps happening.") from error
    if process.returncode != 0:
        lines = [line for line in errors.strip().splitlines() if line.strip()] or ["no output"]
        raise RuntimeError(lines[-1].removeprefix("error: "))
    return output


def list_models_and_problems(worker_command: Sequence[str], timeout: float = 60.0,
                              env: dict[str, str] | None = None) -> tuple[list[ModelInfo], list[PackageProblem]]:
    """Every model package the backend finds, and those it could not read (raises RuntimeError with a message)."""
    return parse_listing(run_models_command(worker_command, ["list", "--json"], timeout, env))


def list_models(worker_command: Sequence[str], timeout: float = 60.0,
                env: dict[str, str] | None = None) -> list[ModelInfo]:
    """Every model package the backend finds (raises RuntimeError with a message)."""
    return list_models_and_problems(worker_command, timeout, env)[0]


def import_model(worker_command: Sequence[str], path: str | Path, overwrite: bool = False,
                 env: dict[str, str] | None = None) -> str:
    """Import a package (a .zip, a package folder, or the ``model.json`` inside one) into the user's model
    folder; returns the worker's confirmation."""
    arguments = ["import", str(path)] + (["--overwrite"] if overwrite else [])
    return run_models_command(worker_command, arguments, env=env).strip()


def remove_model(worker_command: Sequence[str], model: ModelInfo, env: dict[str, str] | None = None) -> str:
    """Remove this version of an imported model from the user's model folder (the backend refuses built-ins)."""
    name = f"{model.id}@{model.version}" if model.version else model.id
    return run_models_command(worker_command, ["remove", name], env=env).strip()


def user_models_folder(worker_command: Sequence[str], env: dict[str, str] | None = None) -> Path:
    """The user's model folder as the backend sees it (created if missing, so it can be opened)."""
    folder = Path(run_models_command(worker_command, ["folder"], env=env).strip())
    folder.mkdir(parents=True, exist_ok=True)
    return folder
