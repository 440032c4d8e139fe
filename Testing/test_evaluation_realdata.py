"""Evaluation and OOD checks on the real phantom (skipped when ../shared/data is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from MedTranslateLib.evaluation.metrics import compute_metrics
from MedTranslateLib.evaluation.ood import check_input, intensity_reference

pytestmark = pytest.mark.data


def _load(path):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image).astype(np.float32), image.GetSpacing()


def test_phantom_metrics_known_offset(real_data):
    case = real_data / "Task1" / "phantom" / "1PA003"
    ct, _ = _load(case / "ct.nii.gz")
    mask, _ = _load(case / "mask.nii.gz")
    out = compute_metrics(ct + 25.0, ct, mask)
    assert out["mae"] == pytest.approx(25.0, abs=1e-3) and out["me"] == pytest.approx(25.0, abs=1e-3)
    assert 0.97 < out["ssim"] < 1.0 and 0.97 < out["ms_ssim"] < 1.0
    assert compute_metrics(ct, ct, mask)["ms_ssim"] == pytest.approx(1.0)


def test_phantom_ood_ct_reference_flags_mr_input(real_data):
    site = real_data / "Task1" / "phantom"
    ct1, spacing = _load(site / "1PA001" / "ct.nii.gz")
    mask1, _ = _load(site / "1PA001" / "mask.nii.gz")
    card = {"intensity_reference": intensity_reference([ct1], [mask1], spacing)}
    ct3, _ = _load(site / "1PA003" / "ct.nii.gz")
    mr3, _ = _load(site / "1PA003" / "mr.nii.gz")
    mask3, _ = _load(site / "1PA003" / "mask.nii.gz")
    assert not [w for w in check_input(ct3, mask3, spacing, card) if w.kind == "intensity"]
    assert [w for w in check_input(mr3, mask3, spacing, card) if w.kind == "intensity"]


def test_brats_contrast_check(real_data):
    import SimpleITK as sitk

    root = real_data / "BraTS2023"
    cases = sorted(p.name for p in root.iterdir() if p.is_dir())

    def load(case, contrast):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(root / case / f"{case}-{contrast}.nii.gz"))).astype(np.float32)

    train = [load(c, "t1n") for c in cases[:2]]
    card = {"intensity_reference": intensity_reference(train, [a > 0 for a in train], (1.0, 1.0, 1.0)),
            "normalization": {"input": {"method": "zscore"}}}
    t1 = load(cases[-1], "t1n")
    t2 = load(cases[-1], "t2w")
    assert not [w for w in check_input(t1, t1 > 0, (1.0, 1.0, 1.0), card) if w.kind == "intensity"]
    assert [w for w in check_input(t2, t2 > 0, (1.0, 1.0, 1.0), card) if w.kind == "intensity"]


@pytest.mark.parametrize("model_id, contrast, flagged", [
    ("t1-t2-brats-unet2d", "t1n", False),   # the held-out brain's own T1
    ("t1-t2-brats-unet2d", "t2f", True),    # FLAIR given to the T1 model (missed before the bright-tail check)
    ("t1-t2-brats-unet2d", "t2w", True),
    ("mr2ct-phantom-unet2d", "t1n", True),  # a brain T1 given to the pork T2 MR -> CT model
])
def test_shipped_models_warn_about_another_contrast(real_data, model_id, contrast, flagged):
    """The translate path's own check (automatic body mask, model orientation) against the shipped cards."""
    import SimpleITK as sitk

    from MedTranslateLib.models.registry import ModelRegistry
    from MedTranslateLib.preprocess import in_model_orientation, prepare

    card = ModelRegistry().resolve(model_id).card.to_dict()
    image = sitk.ReadImage(str(real_data / "BraTS2023" / "TCGA-DU-7294" / f"TCGA-DU-7294-{contrast}.nii.gz"))
    prepared = prepare(image, card)
    warnings = check_input(*in_model_orientation(image, prepared.input_mask, prepared.record), card)
    assert bool([w for w in warnings if w.kind == "intensity"]) == flagged, [w.message for w in warnings]


def test_pork_model_is_quiet_on_the_other_phantom_slab(real_data):
    """1PA003 (never trained on) through the pork model's own check: no intensity warning."""
    import SimpleITK as sitk

    from MedTranslateLib.models.registry import ModelRegistry
    from MedTranslateLib.preprocess import in_model_orientation, prepare

    card = ModelRegistry().resolve("mr2ct-phantom-unet2d").card.to_dict()
    image = sitk.ReadImage(str(real_data / "Task1" / "phantom" / "1PA003" / "mr.nii.gz"))
    prepared = prepare(image, card)
    warnings = check_input(*in_model_orientation(image, prepared.input_mask, prepared.record), card)
    assert not [w for w in warnings if w.kind == "intensity"], [w.message for w in warnings]
