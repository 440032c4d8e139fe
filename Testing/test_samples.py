"""Generated sample data is byte-reproducible: its SHA256 matches the one the bundled card registers."""

import json
from pathlib import Path

from MedTranslateLib.samples import SAMPLES, sha256_of, write_sample

BUILTIN = Path(__file__).resolve().parents[1] / "MedTranslateLib" / "models" / "builtin"


def test_bundled_cards_register_reproducible_samples(tmp_path):
    checked = 0
    for card_path in BUILTIN.glob("*/model.json"):
        for entry in json.loads(card_path.read_text()).get("sample_data", []):
            if "sample" in entry:
                assert entry["sample"] in SAMPLES
                assert sha256_of(write_sample(entry["sample"], tmp_path)) == entry["sha256"], entry
                checked += 1
    assert checked >= 1, "the demo model registers at least one sample"


def test_sample_is_a_valid_volume(tmp_path):
    from MedTranslateLib.io import read_volume

    image, _ = read_volume(write_sample("phantom-t1", tmp_path))
    assert image.GetSize() == (80, 96, 56)


def test_a_cached_sample_is_not_rendered_again(tmp_path, monkeypatch):
    """Slicer registers the samples at every start: rendering them each time blocked the start for seconds."""
    import time

    import MedTranslateLib.samples as samples

    card = json.loads((BUILTIN / "mr2ct-headphantom-unet2d" / "model.json").read_text())
    entry = next(e for e in card["sample_data"] if e.get("sample") == "phantom-t1")
    path = samples.cached_sample("phantom-t1", tmp_path, entry["sha256"])
    rendered = []
    monkeypatch.setattr(samples, "write_sample", lambda *a: rendered.append(a) or path)
    started = time.perf_counter()
    assert samples.cached_sample("phantom-t1", tmp_path, entry["sha256"]) == path and not rendered
    assert time.perf_counter() - started < 1.0
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a damaged cache is rendered again
    samples.cached_sample("phantom-t1", tmp_path, entry["sha256"])
    assert rendered == [("phantom-t1", tmp_path)]
