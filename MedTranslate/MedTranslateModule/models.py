"""Model list for the panel: asks the backend (``models list --json``) in a subprocess and formats cards."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class ModelInfo:
    """What the panel shows about one model."""

    id: str
    title: str = ""
    source_modality: str = ""
    target_modality: str = ""
    anatomy: str = ""
    field_of_view: str = ""
    license: str = ""
    performance: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    sample_data: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelInfo":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data and data[name] is not None}
        return cls(**known)

    def card_text(self) -> str:
        """Short card: modalities, anatomy and field of view, licence, expected GPU / CPU time."""
        lines = [f"<b>{self.title or self.id}</b>",
                 f"{self.source_modality} &rarr; {self.target_modality}; {self.anatomy}, {self.field_of_view}",
                 f"Licence: {self.license or 'unknown'}"]
        times = []
        for key, value in sorted(self.performance.items()):
            lowered = key.lower()
            label = "GPU" if ("gpu" in lowered or "cuda" in lowered) else "CPU" if "cpu" in lowered else None
            if label and "second" in lowered and "train" not in lowered and isinstance(value, (int, float)):
                times.append(f"{label} about {value:.0f} s")
        if times:
            lines.append("Expected time: " + ", ".join(times))
        return "<br>".join(lines)


def parse_model_list(text: str) -> list[ModelInfo]:
    """Parse ``models list --json`` output (a list of objects, or ``{"models": [...]}``)."""
    data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("models", [])
    return [ModelInfo.from_dict(item) for item in data if isinstance(item, dict) and item.get("id")]


def list_models(worker_command: Sequence[str], timeout: float = 60.0,
                env: dict[str, str] | None = None) -> list[ModelInfo]:
    """Run ``<worker> models list --json`` and return the models (raises RuntimeError with a message)."""
    done = subprocess.run([*worker_command, "models", "list", "--json"], capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError("Could not list the models: " + (done.stderr.strip().splitlines() or ["no output"])[-1])
    return parse_model_list(done.stdout)
