"""Sample data for bundled models, registered in Slicer's Sample Data module from the model cards.

Each card may list ``sample_data: [{"name", "url", "sha256"}]``; every entry with a URL becomes a
Sample Data source (category "MedTranslate") checked with its SHA256.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

CATEGORY = "MedTranslate"


def builtin_card_paths(package_dir: Path | None = None) -> list[Path]:
    """``model.json`` of every built-in model package (read as files: no torch needed)."""
    if package_dir is None:
        import MedTranslateLib

        package_dir = Path(MedTranslateLib.__file__).resolve().parent
    return sorted((package_dir / "models" / "builtin").glob("*/model.json"))


def sample_sources(cards: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keyword arguments of ``registerCustomSampleDataSource`` for each card's downloadable samples."""
    sources = []
    for card in cards:
        for sample in card.get("sample_data") or []:
            url, sha256 = sample.get("url"), str(sample.get("sha256", "")).lower()
            if not url or len(sha256) != 64:
                continue
            file_name = url.rstrip("/").split("/")[-1]
            sources.append({
                "category": CATEGORY,
                "sampleName": sample["name"],
                "uris": [url],
                "fileNames": [file_name],
                "nodeNames": [sample["name"]],
                "checksums": [f"SHA256:{sha256}"],
            })
    return sources


def read_cards(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Parse model cards, skipping unreadable ones."""
    cards = []
    for path in paths:
        try:
            cards.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return cards


def register_sample_data(thumbnail: str | None = None) -> int:
    """Register the built-in models' sample data in Slicer (inside Slicer only). Returns the count."""
    import SampleData

    sources = sample_sources(read_cards(builtin_card_paths()))
    for source in sources:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(thumbnailFileName=thumbnail, **source)
    return len(sources)
