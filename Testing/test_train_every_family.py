"""For every family: ``medtranslate train`` runs a few steps on a tiny volume pair, the loss goes down, the
package exports, reloads and translates through ``medtranslate translate`` with the input's geometry."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import SimpleITK as sitk

from MedTranslateLib.cli.main import main
from MedTranslateLib.io import read_volume
from MedTranslateLib.models.package import open_package
from test_training_loop import write_pairs

FAMILIES = {
    "unet": ({"features": [4, 8, 16, 16]}, {}),
    "pix2pix": ({"features": [4, 8, 16, 16], "disc_channels": 8, "disc_layers": 2}, {}),
    "cyclegan": ({"features": [4, 8, 16, 16], "disc_channels": 8, "disc_layers": 2}, {}),
    "diffusion": ({"channels": [8, 16], "attention_levels": [False, False], "num_res_blocks": 1,
                   "num_head_channels": 8, "norm_num_groups": 4}, {}),
    "contourdiff": ({"channels": [8, 16], "attention_levels": [False, False], "num_res_blocks": 1,
                     "num_head_channels": 8, "norm_num_groups": 4}, {}),
    "bridge": ({"channels": [8, 16], "attention_levels": [False, False], "num_res_blocks": 1,
                "num_head_channels": 8, "norm_num_groups": 4}, {}),
    "random_forest": ({}, {"n_trees": 5, "max_depth": 8, "n_samples": 4000}),
}


def losses(work: Path) -> list[float]:
    with open(work / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    key = next(k for k in rows[0] if k not in ("step", "seconds", "elapsed"))
    return [float(r[key]) for r in rows]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_exports_and_translates(tmp_path, family):
    import json

    arch, options = FAMILIES[family]
    data = write_pairs(tmp_path / "data", n=3)
    package = tmp_path / f"pkg-{family}"
    steps = 40
    argv = ["train", "--data", str(data), "--layout", "paired_folder", "--family", family,
            "--steps", str(steps), "--batch-size", "4", "--lr", "2e-3", "--val-interval", str(steps),
            "--output", str(package), "--id", f"test-{family.replace('_', '-')}", "--progress", "none",
            "--set", "source_name=mr", "--set", "target_name=ct", "--set", "log_interval=5",
            "--set", "slice_size=[32, 32]", "--set", f"architecture={json.dumps(arch)}",
            "--set", f"family_options={json.dumps(options)}", "--set", "val_fraction=0.34"]
    assert main(argv) == 0
    card = open_package(package).card
    assert card.family == family and card.get("clinical_use") is False
    if family != "random_forest":
        history = losses(Path(str(package) + ".work"))
        first, last = sum(history[:2]) / 2, sum(history[-2:]) / 2
        assert last < first, f"{family}: loss did not go down ({history})"
    source = data / "subj0" / "mr.nii.gz"
    out = tmp_path / "sct.nii.gz"
    assert main(["translate", str(source), "-m", str(package), "-o", str(out), "--progress", "none",
                 "--steps", "3"]) == 0
    result, _ = read_volume(out)
    image, _ = read_volume(source)
    assert result.GetSize() == image.GetSize() and result.GetSpacing() == image.GetSpacing()
    assert result.GetOrigin() == image.GetOrigin() and result.GetDirection() == image.GetDirection()
    assert sitk.GetArrayFromImage(result).min() >= -1024.5
