"""Modality check from intensities: a CT given to an MR model (and the reverse) is refused, clearly."""

from __future__ import annotations

import numpy as np
import pytest

from MedTranslateLib.errors import InputError
from MedTranslateLib.preprocess.modality import check_modality, guess_modality


@pytest.fixture(scope="module")
def phantom():
    from MedTranslateLib.phantom import make_head_phantom

    return make_head_phantom((24, 40, 32), (5.0, 5.0, 7.0), seed=2)


def _arrays(phantom):
    import SimpleITK as sitk

    mask = sitk.GetArrayFromImage(phantom.mask) > 0
    return (sitk.GetArrayFromImage(phantom.ct), sitk.GetArrayFromImage(phantom.t1),
            sitk.GetArrayFromImage(phantom.t2), mask)


def test_guess_on_phantom(phantom) -> None:
    ct, t1, t2, mask = _arrays(phantom)
    assert guess_modality(ct) == "CT"
    assert guess_modality(t1, mask) == "MR"
    assert guess_modality(t2) == "MR"


def test_ct_given_to_mr_model_is_refused_with_a_useful_message(phantom) -> None:
    ct, _, _, mask = _arrays(phantom)
    with pytest.raises(InputError) as info:
        check_modality(ct, mask, "T1")
    message = str(info.value)
    assert "looks like a CT" in message and "expects an MR (T1) volume" in message
    assert "Give the T1 series" in message and "source modality is CT, if one is installed" in message


def test_refusal_names_the_modality_once_and_claims_no_model(phantom) -> None:
    """A CT given to a generic MR model: "an MR volume", not "an MR (MR) volume"; no CT model is promised."""
    ct, t1, _, mask = _arrays(phantom)
    with pytest.raises(InputError) as info:
        check_modality(ct, mask, "MR")
    message = str(info.value)
    assert "expects an MR volume" in message and "(MR)" not in message
    assert "Choose a model whose source modality is CT" not in message
    with pytest.raises(InputError) as info:
        check_modality(t1, mask, "CT")
    assert "if one is installed" in str(info.value) and "Choose a model whose source" not in str(info.value)


def test_mr_given_to_ct_model_is_refused(phantom) -> None:
    _, t1, _, mask = _arrays(phantom)
    for expected in ("CT", "CBCT"):
        with pytest.raises(InputError, match=f"looks like an MR.*expects {expected}"):
            check_modality(t1, mask, expected)


def test_matching_modalities_pass(phantom) -> None:
    ct, t1, t2, mask = _arrays(phantom)
    check_modality(ct, mask, "CT")
    check_modality(ct, mask, "cbct")
    check_modality(t1, mask, "MR")
    check_modality(t2, None, "T2")
    check_modality(ct, mask, "PET")  # not checked


def test_mr_with_small_negatives_and_odd_scale_is_still_mr() -> None:
    rng = np.random.default_rng(0)
    mr = rng.uniform(0.0, 1.0, (10, 20, 20)).astype(np.float32)  # scaled to [0, 1]
    mr[:, :3] = rng.normal(0.0, 0.05, (10, 3, 20))  # bias-corrected background, slightly negative
    mr[0, 0, :5] = -60.0
    assert guess_modality(mr) == "MR"
    check_modality(mr, None, "FLAIR")
    with pytest.raises(InputError):
        check_modality(mr, None, "CT")


def test_ambiguous_volume_is_not_refused() -> None:
    """Some voxels far below zero, but no air near -1000: neither clearly CT nor clearly MR."""
    array = np.random.default_rng(0).normal(40.0, 5.0, (10, 20, 20)).astype(np.float32)
    array[:, :2] = -300.0
    check_modality(array, None, "MR")
    check_modality(array, None, "CT")


@pytest.mark.parametrize("relative, expected", [
    ("Task1/phantom/1PA001/ct.nii.gz", "CT"), ("Task1/phantom/1PA001/mr.nii.gz", "MR"),
    ("Task1/phantom/1PA003/ct.nii.gz", "CT"), ("Task1/phantom/1PA003/mr.nii.gz", "MR"),
    ("unpaired/abdomen_ct.nii.gz", "CT"), ("unpaired/abdomen_mr_sm.nii.gz", "MR"),
    ("BraTS2023/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1n.nii.gz", "MR"),
    ("BraTS2023/TCGA-DU-7294/TCGA-DU-7294-t1n.nii.gz", "MR"),
])
def test_real_volumes(real_data, relative: str, expected: str) -> None:
    import SimpleITK as sitk

    path = real_data / relative
    if not path.exists():
        pytest.skip(f"{relative} not present")
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    assert guess_modality(array) == expected
    check_modality(array, None, expected)
    with pytest.raises(InputError):
        check_modality(array, None, "MR" if expected == "CT" else "CT")


@pytest.mark.parametrize("expected", ["CT", "T1", "PET"])
def test_a_label_map_is_refused_whatever_the_model_expects(expected: str) -> None:
    """BraTS's -seg file beside its contrasts (labels 0, 1, 2, 3) was translated like a scan."""
    seg = np.zeros((12, 40, 40), np.int16)
    seg[3:9, 10:30, 10:30] = 2
    seg[5:7, 15:25, 15:25] = 1
    seg[6, 18:20, 18:20] = 3
    with pytest.raises(InputError, match=r"only 4 different values \(0, 1, 2, 3\): it looks like a segmentation"):
        check_modality(seg, None, expected)
    with pytest.raises(InputError, match="only 2 different values"):
        check_modality((seg > 0).astype(np.float32), None, expected)


def test_few_valued_volumes_that_are_not_label_maps_pass() -> None:
    """Negative, fractional or many-valued volumes are not label maps; a 4M-voxel strided sample that misses the
    rare values is counted whole."""
    from MedTranslateLib.preprocess.modality import LABEL_MAP_VALUES, label_values

    assert label_values(np.array([0.0, 0.5, 1.0] * 10, np.float32)) is None
    assert label_values(np.array([-1, 0, 1] * 10, np.int16)) is None
    assert label_values(np.arange(LABEL_MAP_VALUES + 1, dtype=np.uint8)) is None
    assert label_values(np.arange(LABEL_MAP_VALUES, dtype=np.uint8)).size == LABEL_MAP_VALUES
    big = np.zeros(9_000_001, np.float32)
    big[1::2][:LABEL_MAP_VALUES] = np.arange(1, LABEL_MAP_VALUES + 1)  # odd indices: the stride-2 sample misses them
    assert label_values(big) is None
