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
