"""Body-weighted slice / patch sampling, 2.5D context, unpaired draws, augmentation, and the card builder."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from MedTranslateLib.training import card_builder
from MedTranslateLib.training.config import TrainConfig
from MedTranslateLib.training.sampling import PreparedCase, Sampler, default_slice_size



def _case(name="a", shape=(20, 40, 48), source=True, target=True, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[8:12, 10:20, 12:24] = True  # a small body: 0.6 % of the volume
    z = np.arange(shape[0], dtype=np.float32)[:, None, None] * np.ones(shape, np.float32)
    src = np.where(mask, 0.5, -1.0).astype(np.float32) + 0.001 * z  # encodes the slice index
    tgt = np.where(mask, 0.2, -1.0).astype(np.float32) + rng.normal(0, 0.01, shape).astype(np.float32)
    return PreparedCase(name, name, src if source else None, tgt if target else None, mask, (1.0, 1.0, 2.0))


def test_2d_samples_mostly_contain_body():
    sampler = Sampler([_case()], "2d", (32, 32), body_fraction=0.9, seed=0)
    batch = sampler.batch(64)
    assert batch["source"].shape == (64, 1, 32, 32) and batch["target"].shape == (64, 1, 32, 32)
    assert batch["mask"].shape == (64, 1, 32, 32) and batch["source"].dtype == np.float32
    with_body = (batch["mask"].reshape(64, -1).max(axis=1) > 0).mean()
    assert with_body > 0.75  # uniform sampling would give ~ 4/20 slices
    uniform = Sampler([_case()], "2d", (32, 32), body_fraction=0.0, seed=0).batch(64)
    assert (uniform["mask"].reshape(64, -1).max(axis=1) > 0).mean() < with_body
    assert sampler.samples_per_epoch() == 4


def test_25d_context_replicates_edges_and_keeps_centre():
    sampler = Sampler([_case()], "2.5d", (16, 16), context=2, body_fraction=0.0, seed=1)
    for _ in range(30):
        item = sampler.sample()
        assert item["source"].shape == (5, 16, 16) and item["target"].shape == (1, 16, 16)
        # slice-index encoding: neighbours differ by 0.001 (or 0 at replicated edges), centre is channel 2
        diffs = np.diff(item["source"][:, 0, 0])
        assert np.all((np.abs(diffs - 0.001) < 1e-5) | (np.abs(diffs) < 1e-6))


def test_3d_patches_and_coronal_axis():
    sampler = Sampler([_case()], "3d", (8, 16, 16), seed=2)
    batch = sampler.batch(4)
    assert batch["source"].shape == (4, 1, 8, 16, 16) and batch["mask"].shape == (4, 1, 8, 16, 16)
    coronal = Sampler([_case()], "2d", (16, 16), slice_axis="coronal", seed=2).sample()
    assert coronal["source"].shape == (1, 16, 16)
    assert default_slice_size([_case()], "axial") == (32, 48)
    assert default_slice_size([_case()], "sagittal") == (16, 32)


def test_unpaired_draws_other_subjects_and_augmentation():
    cases = [_case("s1", target=False), _case("t1", source=False, seed=1), _case("t2", source=False, seed=2)]
    sampler = Sampler(cases, "2d", (32, 32), seed=3, augment=True)
    assert not sampler.paired
    batch = sampler.batch(6)
    assert set(batch) == {"source", "target", "mask", "target_mask"}
    assert batch["target"].shape == (6, 1, 32, 32)
    paired = Sampler([_case()], "2d", (32, 32), seed=4, augment=True).batch(8)
    assert paired["source"].shape == (8, 1, 32, 32) and np.isfinite(paired["source"]).all()


def test_unpaired_families_draw_source_and_target_independently_from_paired_cases():
    shape = (30, 16, 16)
    z = np.arange(shape[0], dtype=np.float32)[:, None, None] * np.ones(shape, np.float32)
    case = PreparedCase("p", "p", z.copy(), z.copy(), np.ones(shape, bool), (1.0, 1.0, 1.0))  # both encode the slice

    def slices(batch):
        return batch["source"][:, 0, 8, 8], batch["target"][:, 0, 8, 8]

    source, target = slices(Sampler([case], "2d", (16, 16), seed=0).batch(64))
    assert np.array_equal(source, target)  # paired: always the same slice
    unpaired = Sampler([case], "2d", (16, 16), seed=0, unpaired=True)
    assert not unpaired.paired
    source, target = slices(unpaired.batch(64))
    assert np.mean(source != target) > 0.8  # different slices: no correspondence leaks


def _schema():
    from pathlib import Path

    return json.loads((Path(__file__).resolve().parents[1] / "MedTranslateLib/models/model.schema.json").read_text())


@pytest.mark.parametrize("dims", ["2d", "2.5d", "3d"])
def test_card_builder_cards_validate(dims):
    config = TrainConfig(data="/home/me/BraTS2023", dimensionality=dims, source_modality="T1", target_modality="FLAIR",
                         model_id="t1-flair-test", architecture={"features": [8, 16]}, epochs=2,
                         output="/home/me/out/pkg", limitations="Four brains. Not for clinical use.")
    card = card_builder.base_card(config)
    jsonschema.validate(card, _schema())
    assert card["architecture"]["in_channels"] == (5 if dims == "2.5d" else 1)
    assert card["normalization"]["output"]["output_range"] == [0.0, 1000.0]
    ref = {"percentiles": {"p1": 0.0, "p50": 10.0}, "extent_mm": [100.0, 120.0, 80.0], "spacing_mm": [1.0, 1.0, 1.0]}
    ref2 = {"percentiles": {"p1": 2.0, "p50": 30.0}, "extent_mm": [110.0, 120.0, 90.0], "spacing_mm": [1.0, 1.0, 3.0]}
    final = card_builder.final_card(card, config, split={"method": "by subject", "train": ["a"], "test": ["b"]},
                                    metrics={"mae": 12.5, "psnr_norm": float("nan")}, metrics_on="test",
                                    metrics_subjects=["b"], seconds=3.2, device="cpu", steps=40,
                                    references=[ref, ref2, None])
    jsonschema.validate(final, _schema())
    assert final["metrics"]["values"] == {"mae": 12.5, "psnr_norm": None}
    assert "test" in final["metrics"]["data"] and "b" in final["metrics"]["data"]
    assert final["intensity_reference"]["percentiles"] == {"p1": 1.0, "p50": 20.0}
    assert final["intensity_reference"]["spacing_mm"] == [1.0, 1.0, 2.0]
    assert final["limitations"].lower().count("not for clinical use") == 1 and final["clinical_use"] is False
    assert "/home/me" not in json.dumps(final["training"])  # no local paths in a card that travels
    assert final["training"]["data"].startswith("BraTS2023") and final["training"]["config"]["output"] == "pkg"
    assert final["training"]["steps"] == 40 and final["training"]["device"] == "cpu"
    assert card_builder.aggregate_metrics([{"mae": 1.0}, {"mae": 3.0}]) == {"mae": 2.0}


@pytest.mark.data
def test_real_phantom_case_is_prepared_once_with_the_card(real_data):
    from MedTranslateLib.training.datasets import load_cases
    from MedTranslateLib.training.sampling import load_case

    case = next(c for c in load_cases(real_data / "Task1", source="MR", target="CT") if c.subject_id == "1PA003")
    card = card_builder.base_card(TrainConfig(data=str(real_data), model_id="phantom-test"))
    prepared = load_case(case, card)
    assert prepared.source.dtype == np.float32 and prepared.target.dtype == np.float32
    assert prepared.source.shape == prepared.target.shape == prepared.mask.shape
    assert prepared.mask.any() and prepared.source[prepared.mask].min() >= -1.0001
    body_target = prepared.target[prepared.mask]
    assert body_target.min() >= -1.0001 and body_target.max() <= 1.0001 and body_target.std() > 0.01
    assert prepared.reference is not None and prepared.reference["spacing_mm"] == [1.0, 1.0, 1.0]
    sampler = Sampler([prepared], "2d", default_slice_size([prepared], "axial"), seed=0)
    assert sampler.batch(2)["source"].shape[0] == 2


def test_contrast_augmentation_is_monotone_keeps_background_and_changes_contrast():
    from monai.transforms import Compose

    from MedTranslateLib.training.sampling import source_contrast_ops

    rng = np.random.default_rng(0)
    source = np.full((1, 32, 32), -1.0, dtype=np.float32)
    source[0, 4:28, 4:28] = rng.uniform(-0.9, 1.0, (24, 24))
    remap = Compose(source_contrast_ops(prob=1.0))
    changed = 0
    for seed in range(8):
        remap.set_random_state(seed=seed)
        out = np.asarray(remap({"source": source.copy()})["source"])
        assert out.shape == source.shape and np.isfinite(out).all()
        assert np.allclose(out[source == -1.0], -1.0, atol=1e-5)      # background stays background
        assert np.isclose(out.max(), source.max(), atol=1e-4)
        order = np.argsort(source.ravel(), kind="stable")
        assert np.all(np.diff(out.ravel()[order]) >= -1e-5)          # monotone: tissue order kept
        body = source[0, 4:28, 4:28].ravel()
        fit = np.polyval(np.polyfit(body, out[0, 4:28, 4:28].ravel(), 1), body)
        changed += float(np.abs(fit - out[0, 4:28, 4:28].ravel()).max()) > 0.02   # not just a linear rescale
    assert changed >= 6


def test_contrast_augment_config_reaches_the_sampler():
    from MedTranslateLib.training.config import config_from_dict

    assert config_from_dict({"train": {"contrast_augment": True}}).contrast_augment is True
    sampler = Sampler([_case()], "2d", (32, 32), seed=5, contrast_augment=True)
    assert sampler.augment is not None
    assert Sampler([_case()], "2d", (32, 32), seed=5).augment is None


def test_contrast_augment_alone_keeps_geometry():
    case = _case()
    plain = Sampler([case], "2d", (32, 32), seed=6)
    remapped = Sampler([case], "2d", (32, 32), seed=6, contrast_augment=True)
    for _ in range(6):
        a, b = plain.sample(), remapped.sample()
        assert np.array_equal(a["target"], b["target"]) and np.array_equal(a["mask"], b["mask"])
        order = np.argsort(a["source"].ravel(), kind="stable")
        assert np.all(np.diff(b["source"].ravel()[order]) >= -1e-5)   # same voxels, monotone remap only


def test_training_reference_uses_the_automatic_mask_in_the_model_orientation(tmp_path):
    """The OOD reference summarises a training input as translate will see an input without a mask: inside
    the automatic body mask (not the data set's, here a small box) and with the card's orientation applied."""
    import SimpleITK as sitk

    from MedTranslateLib.evaluation.ood import intensity_reference
    from MedTranslateLib.preprocess import automatic_body
    from MedTranslateLib.training.datasets import Case
    from MedTranslateLib.training.sampling import load_case

    shape = (24, 40, 56)  # z, y, x
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (x**2 + y**2 + z**2) < 0.7
    rng = np.random.default_rng(0)
    values = np.where(body, 400 + 300 * (x > 0) + rng.normal(0, 20, shape), rng.normal(0, 2, shape))
    stored_ras = np.diag([-1.0, -1.0, 1.0]).ravel().tolist()  # flipped x and y: reoriented to LPS for the model
    paths = {}
    for name, array in (("mr", values), ("ct", np.where(body, 40.0, -1000.0)), ("mask", body & (x < 0) & (y < 0))):
        image = sitk.GetImageFromArray(array.astype(np.uint8 if name == "mask" else np.float32))
        image.SetSpacing((1.0, 2.0, 3.0))
        image.SetDirection(stored_ras)
        paths[name] = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    card = card_builder.base_card(TrainConfig(data=str(tmp_path), model_id="ref-test", orientation="LPS"))
    reference = load_case(Case("a", paths["mr"], paths["ct"], paths["mask"], "a"), card).reference

    array, auto, spacing = automatic_body(sitk.ReadImage(str(paths["mr"])), card)
    assert auto.sum() > 3 * (body & (x < 0) & (y < 0)).sum()  # the data set's mask is a quarter of the body
    assert reference == intensity_reference([array], [auto], spacing)
    unmasked = load_case(Case("a", paths["mr"], paths["ct"], None, "a"), card).reference
    assert unmasked == reference  # with or without the data set's mask: the same statistics


def test_z_slab_description_counts_the_slices_between_training_and_test():
    """With a validation slab between them, the test slab lies more than one gap above the training slices."""
    from MedTranslateLib.training.datasets import zslab_holdout

    split = {**zslab_holdout(86, test_fraction=0.25, val_fraction=0.2, gap=4), "subject": "1PA001"}
    text = card_builder.held_out_description(split, "test", ["1PA001"])
    (lo, _), (_, t_hi) = split["test"], split["train"]
    assert f"{lo - t_hi} slices between" in text and lo - t_hi > 4 + 4
