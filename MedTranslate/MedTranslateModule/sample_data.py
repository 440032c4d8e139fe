"""Sample data for bundled models, registered in Slicer's Sample Data module from the model cards.

Each card may list ``sample_data: [{"name", "url" | "sample", "sha256"}]``. An entry with a URL is
downloaded by Sample Data; an entry naming a ``sample`` (see ``MedTranslateLib.samples``) is rendered
locally into ``cache_dir`` and offered as a ``file://`` URL. Either way Sample Data checks the SHA256.
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


def sample_sources(cards: Iterable[dict[str, Any]], cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """Keyword arguments of ``registerCustomSampleDataSource`` for each card's samples (generated samples
    are written to ``cache_dir``; without one they are skipped)."""
    sources = []
    for card in cards:
        for sample in card.get("sample_data") or []:
            url, sha256 = sample.get("url"), str(sample.get("sha256", "")).lower()
            if not url and sample.get("sample") and cache_dir is not None:
                from MedTranslateLib.samples import cached_sample

                url = Path(cached_sample(sample["sample"], cache_dir, sha256)).resolve().as_uri()
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
    import slicer

    cache = Path(slicer.app.cachePath) / "MedTranslate" / "samples"
    sources = sample_sources(read_cards(builtin_card_paths()), cache_dir=cache)
    for source in sources:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(thumbnailFileName=thumbnail, **source)
    return len(sources)
