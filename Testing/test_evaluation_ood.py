"""Out-of-distribution warnings: quiet on training-like input; flags shifts, corrupted slabs, field of view, spacing."""

from __future__ import annotations

import jsonschema
import json
from pathlib import Path

import numpy as np
import pytest

from MedTranslateLib.evaluation.ood import OodWarning, check_input, intensity_reference

SCHEMA = Path(__file__).resolve().parents[1] / "MedTranslateLib" / "models" / "model.schema.json"


def _scan(seed: int, shape=(30, 40, 40)):
    """A CT-like body: soft tissue with a bone block, air outside; mask = body."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (x**2 + y**2) < 0.6
    array = np.where(body, 40 + rng.normal(0, 30, shape), -1000 + rng.normal(0, 10, shape))
    array[(np.abs(x) < 0.2) & (np.abs(y) < 0.2)] += 700
    return array.astype(np.float32), body


def _card():
    arrays, masks = zip(*[_scan(seed) for seed in range(3)])
    return {"intensity_reference": intensity_reference(list(arrays), list(masks), (1.0, 1.0, 2.0))}


def test_reference_content_and_schema():
    ref = _card()["intensity_reference"]
    assert list(ref["percentiles"]) == ["p1", "p5", "p25", "p50", "p75", "p95", "p99"]
    assert ref["percentiles"]["p1"] < ref["percentiles"]["p50"] < ref["percentiles"]["p99"]
    assert ref["spacing_mm"] == [1.0, 1.0, 2.0]
    assert ref["extent_mm"][2] == 60.0  # 30 slices x 2 mm
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(ref, schema["properties"]["intensity_reference"] | {"$defs": schema["$defs"]})


def test_in_distribution_input_is_quiet():
    array, mask = _scan(seed=10)
    assert check_input(array, mask, (1.0, 1.0, 2.0), _card()) == []


def test_shifted_and_scaled_inputs_are_flagged():
    array, mask = _scan(seed=11)
    card = _card()
    for changed in (array + 600, array * 2.5):
        warnings = check_input(changed, mask, (1.0, 1.0, 2.0), card)
        kinds = [w.kind for w in warnings]
        assert "intensity" in kinds
        message = next(w for w in warnings if w.kind == "intensity").message
        assert "training" in message and "percentile" in message


def test_corrupted_slab_is_flagged_with_its_slices():
    array, mask = _scan(seed=12)
    array[12:15] = np.random.default_rng(0).uniform(-1000, 3000, array[12:15].shape)
    warnings = check_input(array, mask, (1.0, 1.0, 2.0), _card())
    slabs = [w for w in warnings if w.kind == "slices"]
    assert len(slabs) == 1 and slabs[0].slices == (12, 14)
    assert "12-14" in slabs[0].message
    assert isinstance(slabs[0], OodWarning) and slabs[0].to_dict()["slices"] == (12, 14)


def test_field_of_view_and_spacing_are_flagged():
    array, mask = _scan(seed=13)
    warnings = check_input(array, mask, (1.0, 1.0, 5.0), _card())  # 30 slices x 5 mm = 150 mm vs 60 mm
    kinds = {w.kind for w in warnings}
    assert {"field_of_view", "spacing"} <= kinds
    assert any("head-foot" in w.message and "larger" in w.message for w in warnings)
    spacing = next(w for w in warnings if w.kind == "spacing").message
    assert "another scale" in spacing and "Resampling" not in spacing  # this card keeps the input's voxels
    resampling_card = {**_card(), "input": {"spacing": [1.0, 1.0, 2.0]}}
    spacing = next(w for w in check_input(array, mask, (1.0, 1.0, 5.0), resampling_card) if w.kind == "spacing")
    assert "Resampling to the model's grid" in spacing.message
    assert check_input(array, mask, (1.0, 1.0, 2.0), {"id": "no-reference"}) == []


def _mr_scan(seed: int, gain: float = 1.0, contrast: str = "t1"):
    """An MR-like body: two tissues; 't2' swaps which one is bright and adds bright fluid."""
    rng = np.random.default_rng(seed)
    shape = (20, 32, 32)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (x**2 + y**2) < 0.7
    inner = (x**2 + y**2) < 0.3
    if contrast == "t1":
        array = np.where(inner, 600.0, 400.0)
    else:
        array = np.where(inner, 300.0, 500.0)
        array[inner & (x > 0.2)] = 1800.0
    array = np.where(body, array + rng.normal(0, 30, shape), 0.0)
    return (gain * array).astype(np.float32), body


def test_mr_models_compare_contrast_not_scanner_gain():
    arrays, masks = zip(*[_mr_scan(seed) for seed in range(3)])
    card = {"intensity_reference": intensity_reference(list(arrays), list(masks), (1.0, 1.0, 1.0)),
            "normalization": {"input": {"method": "zscore"}, "output": {"method": "zscore"}}}
    scaled, mask = _mr_scan(7, gain=3.0)
    assert check_input(scaled, mask, (1.0, 1.0, 1.0), card) == []  # normalisation removes the gain
    raw_card = {"intensity_reference": card["intensity_reference"]}
    assert [w.kind for w in check_input(scaled, mask, (1.0, 1.0, 1.0), raw_card)] == ["intensity"]
    other, mask = _mr_scan(8, contrast="t2")
    warnings = check_input(other, mask, (1.0, 1.0, 1.0), card)
    assert [w.kind for w in warnings] == ["intensity"] and "contrast" in warnings[0].message


def test_bundled_model_is_quiet_on_a_held_out_phantom():
    """The head's ends (skull cap) change fast along z: translating the demo input raises no slice warning."""
    from MedTranslateLib.models.registry import ModelRegistry
    from MedTranslateLib.phantom import make_head_phantom
    from MedTranslateLib.pipeline import Translator

    translator = Translator(ModelRegistry().resolve("mr2ct-headphantom-unet2d"), device="cpu")
    result = translator.translate(make_head_phantom(seed=1000).t1)
    assert not [w for w in result.warnings if "along z" in w], result.warnings


def test_large_inputs_are_checked_on_a_subsample_with_the_same_findings(monkeypatch):
    """Above CHECK_VOXELS the check runs on an in-plane strided subsample: same warnings, same slices."""
    import MedTranslateLib.evaluation.ood as ood

    array, mask = _scan(seed=12, shape=(30, 80, 80))
    array[12:15] = np.random.default_rng(0).uniform(-1000, 3000, array[12:15].shape)
    card = _card()
    full = check_input(array, mask, (0.3, 0.3, 2.0), card)
    seen = []
    original = ood._check_slices
    monkeypatch.setattr(ood, "_check_slices", lambda a, m, s: seen.append(a.shape) or original(a, m, s))
    monkeypatch.setattr(ood, "CHECK_VOXELS", array.size // 4)
    sampled = check_input(array, mask, (0.3, 0.3, 2.0), card)
    assert seen == [(30, 40, 40)]  # stride 2 in-plane
    assert [(w.kind, w.slices, w.region) for w in sampled] == [(w.kind, w.slices, w.region) for w in full]
    assert "spacing" in [w.kind for w in full]  # 0.3 mm in-plane against 1 mm in training: judged on the input's spacing


def test_mr_contrast_with_only_a_bright_tail_is_flagged():
    """FLAIR given to a T1 model: the body's bulk looks alike, only the bright tail (lesions) differs."""
    arrays, masks = zip(*[_mr_scan(seed) for seed in range(3)])
    card = {"intensity_reference": intensity_reference(list(arrays), list(masks), (1.0, 1.0, 1.0)),
            "normalization": {"input": {"method": "zscore"}, "output": {"method": "zscore"}}}
    same, mask = _mr_scan(9)
    assert check_input(same, mask, (1.0, 1.0, 1.0), card) == []
    bright = same.copy()
    lesion = mask & (np.random.default_rng(1).random(mask.shape) < 0.03)  # 3 % of the body
    bright[lesion] = 900.0
    warnings = check_input(bright, mask, (1.0, 1.0, 1.0), card)
    assert [w.kind for w in warnings] == ["intensity"]
    assert "99th percentile" in warnings[0].message and "very bright tissue" in warnings[0].message


def test_a_given_mask_does_not_change_what_the_input_is_compared_over():
    """The card's statistics come from the automatic body mask; inside a user's mask (here a box in the brain) the
    same input looked like another contrast."""
    import SimpleITK as sitk

    from MedTranslateLib.models.registry import ModelRegistry
    from MedTranslateLib.phantom import make_head_phantom
    from MedTranslateLib.pipeline import Translator

    translator = Translator(ModelRegistry().resolve("mr2ct-headphantom-unet2d"), device="cpu")
    t1 = make_head_phantom(seed=1000).t1
    box = np.zeros(sitk.GetArrayViewFromImage(t1).shape, np.uint8)
    z, y, x = (n // 2 for n in box.shape)
    box[z - 4:z + 4, y - 10:y + 10, x - 10:x + 10] = 1
    mask = sitk.GetImageFromArray(box)
    mask.CopyInformation(t1)
    plain = translator.translate(t1).warnings
    masked = translator.translate(t1, mask=mask).warnings
    assert not [w for w in masked if "contrast" in w or "intensit" in w.lower()], masked
    assert [w for w in masked if w in plain] == [w for w in plain if "mask" not in w.lower()]


def _banded_mr(seed: int, fat: float = 0.02, shape=(16, 64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like head whose mask, like the dilated automatic body mask, also holds a band of dark air around it."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(x**2 + y**2)
    array = np.where(r < 0.35, 600.0, 400.0)
    array[(r < 0.7) & (rng.random(shape) < fat)] = 1200.0  # fat: the bright tail
    array = np.where(r < 0.7, array + rng.normal(0, 25, shape), 15.0 + np.abs(rng.normal(0, 5, shape)))
    return array.astype(np.float32), r < 0.85


def _mr_card(arrays, masks, source: str = "T1") -> dict:
    """A card as training writes it: one reference per training volume, combined."""
    from MedTranslateLib.training.card_builder import combine_references

    reference = combine_references([intensity_reference([a], [m], (1.0, 1.0, 1.0)) for a, m in zip(arrays, masks)])
    return {"intensity_reference": reference, "source_modality": source,
            "normalization": {"input": {"method": "zscore"}, "output": {"method": "zscore"}}}


def test_dark_background_in_the_mask_does_not_make_a_crop_look_like_another_contrast():
    """The pork model warned on its own held-out slab: the share of dark air inside the (dilated) automatic mask
    depends on the field of view and moved the whole-mask statistics. A crop with little air stays quiet."""
    card = _mr_card(*zip(*[_banded_mr(seed) for seed in range(3)]))
    array, mask = _banded_mr(seed=5)
    assert check_input(array, mask, (1.0, 1.0, 1.0), card) == []
    crop = (slice(None), slice(12, 52), slice(12, 52))  # most of the air band cut away
    warnings = check_input(array[crop], mask[crop], (1.0, 1.0, 1.0), card)
    assert not [w for w in warnings if w.kind == "intensity"], warnings


def test_every_training_volume_is_in_distribution():
    """One BraTS T1 training brain lay outside the median of the three: the card keeps the range over volumes."""
    arrays, masks = zip(*[_banded_mr(seed, fat=f) for seed, f in enumerate((0.005, 0.02, 0.06))])
    card = _mr_card(arrays, masks)
    ranges = card["intensity_reference"]["relative_range"]
    assert ranges["p99"][0] < card["intensity_reference"]["relative_percentiles"]["p99"] < ranges["p99"][1]
    for array, mask in zip(arrays, masks):
        assert check_input(array, mask, (1.0, 1.0, 1.0), card) == []


def test_contrast_warning_names_the_models_source_modality():
    """A T1 given to a T2 model: the message speaks of the T2 training scans, not of "T2 or FLAIR instead of T1"."""
    t2 = [_banded_mr(seed) for seed in range(3)]
    for array, _ in t2:
        array[array > 1000] = 3000.0  # fluid: a heavy bright tail
    card = _mr_card(*zip(*t2), source="T2")
    t1, mask = _banded_mr(seed=7, fat=0.0)
    warnings = [w for w in check_input(t1, mask, (1.0, 1.0, 1.0), card) if w.kind == "intensity"]
    assert len(warnings) == 1
    assert "T2 training scans" in warnings[0].message and "less very bright tissue" in warnings[0].message
    assert "T1" not in warnings[0].message and "FLAIR" not in warnings[0].message


@pytest.mark.data
def test_shipped_cards_on_real_training_held_out_and_wrong_contrast(real_data: Path):
    """Automatic body mask as translate uses it: quiet on a held-out slab and a training brain, a FLAIR warns."""
    import SimpleITK as sitk

    from MedTranslateLib.models.registry import BUILTIN_DIR
    from MedTranslateLib.preprocess import automatic_body

    def contrast_warnings(model: str, image: "sitk.Image") -> list[OodWarning]:
        card = json.loads((BUILTIN_DIR / model / "model.json").read_text())
        return [w for w in check_input(*automatic_body(image, card), card) if w.kind == "intensity"]

    pork = sitk.ReadImage(str(real_data / "Task1" / "phantom" / "1PA001" / "mr.nii.gz"))
    assert contrast_warnings("mr2ct-phantom-unet2d", pork[:, :, 64:86]) == []  # the held-out slab
    assert contrast_warnings("mr2ct-phantom-unet2d", pork[40:160, 40:160, :]) == []
    brats = real_data / "BraTS2023"
    t1 = sitk.ReadImage(str(brats / "AURORA-example" / "AURORA-example-t1n.nii.gz"))
    assert contrast_warnings("t1-t2-brats-unet2d", t1) == []  # a training brain
    flair = sitk.ReadImage(str(brats / "TCGA-DU-7294" / "TCGA-DU-7294-t2f.nii.gz"))
    assert contrast_warnings("t1-t2-brats-unet2d", flair)
