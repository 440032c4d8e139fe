"""Training data that would silently teach the wrong thing: swapped or offset modalities are refused before
training, targets resampled onto their source's grid are reported, and padding never counts in slabs or metrics."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from MedTranslateLib.errors import InputError
from test_training_loop import _config, write_pairs


def _rewrite(path, change):
    image = sitk.ReadImage(str(path))
    new = change(image)
    sitk.WriteImage(new, str(path))


def _swap_source_and_target(data):
    for folder in data.iterdir():
        mr, ct = folder / "mr.nii.gz", folder / "ct.nii.gz"
        mr.rename(folder / "tmp.nii.gz")
        ct.rename(mr)
        (folder / "tmp.nii.gz").rename(ct)


def _offset_ct(data, subject):  # a CT stored as 0-4095 instead of Hounsfield units
    _rewrite(data / subject / "ct.nii.gz", lambda image: image + 1024.0)


@pytest.mark.parametrize("spoil, message", [
    (_swap_source_and_target, r"Training case (subj\d) \(.*\): The source .*\1.mr\.nii\.gz looks like a CT"),
    (lambda data: _offset_ct(data, "subj2"), r"Training case subj2 \(.*\): The target .*subj2.ct\.nii\.gz has no air "),
])
def test_a_case_that_is_not_the_configured_modality_is_refused_before_training(tmp_path, spoil, message):
    from MedTranslateLib.training.loop import train

    config = _config(tmp_path)
    spoil(tmp_path / "data")
    with pytest.raises(InputError, match=message):
        train(config)
    assert not (tmp_path / "pkg").exists() and not (tmp_path / "pkg.work" / "checkpoint").exists()


def test_a_target_resampled_onto_its_source_grid_is_reported(tmp_path):
    from MedTranslateLib.training.loop import train

    config = _config(tmp_path, steps=2, val_interval=2, checkpoint_interval=2)

    def shift(image):
        image.SetOrigin((4.0, 0.0, 0.0))
        return image

    _rewrite(tmp_path / "data" / "subj1" / "ct.nii.gz", shift)
    heard = []
    result = train(config, on_warning=heard.append)
    assert len(heard) == 1 and "1 of 3 case(s)" in heard[0] and "subj1 (origin (4, 0, 0) vs (0, 0, 0)" in heard[0]
    assert "covers 88% of the source" in heard[0]
    card = json.loads((result.package / "model.json").read_text(encoding="utf-8"))
    assert card["training"]["warnings"] == heard == result.warnings


def test_zslab_holdout_of_a_padded_3d_volume_cuts_real_slices(tmp_path):
    """A volume thinner than the 3D patch is padded in z: the held-out slabs must be slices of the volume."""
    from MedTranslateLib.training.loop import train

    config = _config(tmp_path, data=str(write_pairs(tmp_path / "thin", n=1, shape=(12, 32, 32))),
                     dimensionality="3d", patch_size=[16, 16, 16], split="zslab", test_fraction=0.25,
                     val_fraction=0.0, slab_gap=1, steps=2, val_interval=2, checkpoint_interval=2,
                     architecture={"features": [4, 8, 8, 8]})
    result = train(config)
    split = json.loads((result.package / "model.json").read_text(encoding="utf-8"))["training"]["split"]
    assert split["n_slices"] == 12 and split["test"] == [9, 12] and split["train"] == [0, 8]
    # the 3 test slices are too thin for SSIM: measured on the padded 16 slices it came out flatteringly high
    assert result.best_metrics["mae"] is not None and result.best_metrics.get("ssim") is None


def test_held_out_metrics_leave_the_padding_out():
    from MedTranslateLib.training.sampling import PreparedCase

    rng = np.random.default_rng(0)
    real = rng.normal(size=(3, 8, 8)).astype(np.float32)
    padded = np.pad(real, ((5, 6), (1, 1), (0, 0)), constant_values=-1.0)
    case = PreparedCase("c", "c", padded, padded, np.ones(padded.shape, bool), (1.0, 1.0, 1.0),
                        region=((5, 8), (1, 9), (0, 8)))
    np.testing.assert_array_equal(case.unpadded(case.target), real)
    slab = case.slab(1, 3)  # slices 1-2 of the real voxels
    np.testing.assert_array_equal(slab.unpadded(slab.target), real[1:3])


def test_a_held_out_share_that_comes_out_empty_is_reported(tmp_path):
    from MedTranslateLib.progress import ProgressTracker
    from MedTranslateLib.training import card_builder
    from MedTranslateLib.training.run_data import load_data

    config = _config(tmp_path, data=str(write_pairs(tmp_path / "two", n=2)), val_fraction=0.2, test_fraction=0.2)
    heard: list[str] = []
    listed = replace(config, test_subjects=["subj0"])  # the lists set the parts: the fractions do not apply
    assert not load_data(listed, card_builder.base_card(listed), ProgressTracker(), heard.append).val and not heard
    data = load_data(config, card_builder.base_card(config), ProgressTracker(), heard.append)
    assert not data.val and heard == [
        "val_fraction = 0.2 of 2 paired subject(s) left no validation subject: the exported weights are the last "
        "ones, not the best validated. Give more subjects, name them (val_subjects), or use split = \"zslab\" for a "
        "single volume."]


@pytest.mark.parametrize("family, warned", [("contourdiff", True), ("cyclegan", False)])
def test_contrast_augment_for_a_family_that_never_sees_the_source_is_called_useless(tmp_path, monkeypatch, family,
                                                                                    warned):
    from MedTranslateLib.training import loop
    from test_training_loop import _config

    def stop(*args, **kwargs):
        raise RuntimeError("stopped before the data")

    monkeypatch.setattr(loop, "load_data", stop)
    heard: list[str] = []
    with pytest.raises(RuntimeError, match="stopped before the data"):
        loop.train(_config(tmp_path, family=family, architecture={}, contrast_augment=True), on_warning=heard.append)
    assert any("contrast_augment" in message for message in heard) == warned


@pytest.mark.parametrize("dimensionality, setting", [("2d", {"slice_size": [256, 256]}),
                                                     ("3d", {"patch_size": [64, 256, 256]})])
def test_a_crop_larger_than_every_training_volume_is_reported(tmp_path, dimensionality, setting):
    """slice_size [512, 512] on 200 x 200 slices trained without a word on samples mostly of padding (and a 3D
    patch larger than the volume was killed for memory on a 23 GB machine, with no message at all)."""
    from MedTranslateLib.training.loop import train

    heard: list[str] = []
    config = _config(tmp_path, steps=1, checkpoint_interval=1, val_fraction=0.0, test_fraction=0.0, batch_size=1,
                     dimensionality=dimensionality, **setting)
    train(config, on_warning=heard.append)
    key = next(iter(setting))
    assert [m for m in heard if m.startswith(f"{key} {setting[key]} is larger than every training volume")], heard
    heard.clear()
    train(replace(config, output=str(tmp_path / "fits"), **{key: [8] * len(setting[key])}), on_warning=heard.append)
    assert not [m for m in heard if "larger than every training volume" in m]


def test_the_default_slice_size_and_a_crop_a_little_larger_than_the_body_are_not_reported(tmp_path):
    """The default slice_size (the padded in-plane size, a few voxels larger than the body) warned about itself in
    every 2D example of TRAINING.md; a crop is reported only when padding is most of it."""
    from MedTranslateLib.training.loop import train

    heard: list[str] = []
    config = _config(tmp_path, steps=1, checkpoint_interval=1, val_fraction=0.0, test_fraction=0.0, batch_size=1,
                     dimensionality="2d", slice_size=None)
    train(config, on_warning=heard.append)
    train(replace(config, output=str(tmp_path / "a-little-larger"), slice_size=[40, 40]), on_warning=heard.append)
    assert not [m for m in heard if "larger than every training volume" in m], heard
