"""Automatic body mask: the phantom's body for MR and CT, robust to outliers, holes filled, dilation, fallback."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from MedTranslateLib.preprocess.body_mask import BodyMaskFallbackWarning, body_mask, dilate_by_mm


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def phantom():
    from MedTranslateLib.phantom import make_head_phantom

    return make_head_phantom((28, 48, 40), (4.0, 4.0, 6.0), seed=1)


@pytest.mark.parametrize("name, modality", [("t1", "MR"), ("t2", "T2"), ("ct", "CT")])
def test_phantom_body_is_found(phantom, name: str, modality: str) -> None:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(getattr(phantom, name))
    truth = sitk.GetArrayFromImage(phantom.mask) > 0
    mask = body_mask(array, phantom.ct.GetSpacing(), modality=modality)
    assert mask.dtype == bool and mask.shape == array.shape
    assert _dice(mask, truth) > 0.95


def test_bright_outliers_do_not_change_the_mask(phantom) -> None:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(phantom.t1).copy()
    truth = sitk.GetArrayFromImage(phantom.mask) > 0
    array[14, 24, 20:23] = 1e6  # a few metal-like voxels inside the head
    mask = body_mask(array, phantom.t1.GetSpacing(), modality="MR")
    assert _dice(mask, truth) > 0.95


@pytest.mark.parametrize("scale", [1e-3, 1e-6, 20.0])
def test_the_mr_mask_does_not_depend_on_the_intensity_unit(phantom, scale: float) -> None:
    """The log domain took log(1 + x - p_lo): an MR stored in 0-1 got a threshold deep inside the body."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(phantom.t1).astype(np.float64)
    plain = body_mask(array, phantom.t1.GetSpacing(), modality="MR")
    scaled = body_mask(array * scale, phantom.t1.GetSpacing(), modality="MR")
    np.testing.assert_array_equal(plain, scaled)


def test_holes_filled_and_largest_component_kept() -> None:
    z, y, x = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in (24, 32, 32)], indexing="ij")
    r = np.sqrt(z**2 + y**2 + x**2)
    array = np.zeros(r.shape, np.float32)
    array[(r > 7) & (r < 10)] = 500.0  # a hollow shell (air inside)
    array[0:2, 0:2, 0:2] = 500.0  # a small separate blob (e.g. a marker)
    mask = body_mask(array, (1.0, 1.0, 1.0), method="threshold", threshold=100.0)
    assert mask[12, 16, 16]  # the inside of the shell is filled
    assert not mask[0, 0, 0]  # the small blob is dropped
    assert mask.sum() == pytest.approx(np.count_nonzero(r < 10), rel=0.02)


def test_a_separate_body_part_is_kept_and_specks_are_not() -> None:
    """An arm beside the trunk (not touching it) used to be dropped with every other component: air in the CT."""
    array = np.zeros((20, 80, 80), np.float32)
    z, y, x = np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij")
    array[(y - 40) ** 2 + (x - 30) ** 2 < 20**2] = 400.0  # trunk: about 200 ml at 2 mm
    array[(y - 40) ** 2 + (x - 68) ** 2 < 6**2] = 400.0  # arm, 8 voxels from the trunk: about 18 ml
    array[2, 5, 75] = array[10, 75, 5] = 400.0  # specks
    mask = body_mask(array, (2.0, 2.0, 2.0), method="threshold", threshold=100.0, modality="MR")
    assert mask[10, 40, 68] and mask[10, 40, 30]
    assert not mask[2, 5, 75] and not mask[10, 75, 5]
    small = body_mask(array, (0.5, 0.5, 0.5), method="threshold", threshold=100.0, modality="MR")  # arm 0.3 ml
    assert small[10, 40, 30] and not small[10, 40, 68]
    for modality in ("CT", "CBCT"):  # there a separate object is the couch or a fixation: left out
        other = body_mask(array, (2.0, 2.0, 2.0), method="threshold", threshold=100.0, modality=modality)
        assert other[10, 40, 30] and not other[10, 40, 68]


def test_per_slice_fill_closes_an_open_airway() -> None:
    array = np.zeros((10, 20, 20), np.float32)
    array[:, 4:16, 4:16] = 300.0
    array[:, 9:11, 9:11] = 0.0  # a tube open at both ends: not a 3D hole
    mask = body_mask(array, (1.0, 1.0, 1.0), modality="MR")
    assert mask[5, 10, 10]


def test_ct_uses_minus_500_hu() -> None:
    array = np.full((8, 16, 16), -1000.0, np.float32)
    array[:, 4:12, 4:12] = -100.0  # fat: above -500 but far below an Otsu split with bone present
    array[3:5, 7:9, 7:9] = 1500.0
    mask = body_mask(array, (1.0, 1.0, 1.0), modality="CT")
    assert mask[:, 4:12, 4:12].all() and mask.sum() == 8 * 8 * 8


def test_dilation_in_millimetres_honours_anisotropic_spacing() -> None:
    seed = np.zeros((11, 21, 21), bool)
    seed[5, 10, 10] = True
    grown = dilate_by_mm(seed, (1.0, 1.0, 3.0), 3.0)  # spacing (x, y, z)
    assert grown[5, 10, 13] and not grown[5, 10, 14]  # 3 voxels along x
    assert grown[6, 10, 10] and not grown[7, 10, 10]  # 1 voxel along z (3 mm)
    array = np.zeros((11, 21, 21), np.float32)
    array[4:7, 8:13, 8:13] = 100.0
    plain = body_mask(array, (1.0, 1.0, 3.0), method="threshold", threshold=50.0)
    dilated = body_mask(array, (1.0, 1.0, 3.0), method="threshold", threshold=50.0, dilate_mm=2.0)
    assert dilated.sum() > plain.sum() and (dilated | plain).sum() == dilated.sum()


def test_empty_result_falls_back_with_a_warning() -> None:
    array = np.zeros((6, 8, 8), np.float32)
    array[2, 3, 3] = 5.0
    with pytest.warns(BodyMaskFallbackWarning):
        mask = body_mask(array, (1.0, 1.0, 1.0), method="threshold", threshold=10.0)
    assert mask.sum() == 1 and mask[2, 3, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert body_mask(array, (1.0, 1.0, 1.0), method="none").all()


def test_input_array_is_not_modified(phantom) -> None:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(phantom.t2).astype(np.float32)
    copy = array.copy()
    body_mask(array, phantom.t2.GetSpacing(), modality="MR")
    np.testing.assert_array_equal(array, copy)


def test_real_mr_mask_matches_the_provided_mask(real_data) -> None:
    import SimpleITK as sitk

    case = real_data / "Task1" / "phantom" / "1PA001"
    if not (case / "mr.nii.gz").exists():
        pytest.skip("Task1/phantom/1PA001 not present")
    image = sitk.ReadImage(str(case / "mr.nii.gz"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "mask.nii.gz"))) > 0
    mask = body_mask(sitk.GetArrayFromImage(image).astype(np.float32), image.GetSpacing(), modality="MR")
    assert _dice(mask, truth) > 0.9


def test_largest_component_equals_scipy_26_connected_labelling():
    from scipy import ndimage

    from MedTranslateLib.preprocess.body_mask import body_components

    rng = np.random.default_rng(0)
    for shape in [(10, 18, 15)] * 30 + [(41, 12, 11)] * 10:  # 41 slices: labels counted over several slabs
        mask = ndimage.gaussian_filter(rng.random(shape), 1.5) > rng.uniform(0.45, 0.55)
        labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        expected = labels == int(np.argmax(sizes)) if count else mask
        assert np.array_equal(body_components(mask), expected)
    diagonal = np.zeros((3, 3, 3), bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = diagonal[2, 2, 2] = True  # touching only at corners: one component
    assert body_components(diagonal).sum() == 3
    assert not body_components(np.zeros((2, 2, 2), bool)).any()


def test_holes_are_filled_slice_by_slice_across_slabs():
    """fill_holes labels a slab of slices at a time: every slice must come out as scipy fills it alone."""
    from scipy import ndimage

    from MedTranslateLib.preprocess.body_mask import fill_holes

    rng = np.random.default_rng(1)
    mask = ndimage.gaussian_filter(rng.random((37, 24, 20)), 1.2) > 0.5
    mask[:, 4:20, 4] = mask[:, 4:20, 15] = mask[:, 4, 4:16] = mask[:, 19, 4:16] = True  # a ring in every slice
    expected = np.stack([ndimage.binary_fill_holes(plane) for plane in mask])
    assert np.array_equal(fill_holes(mask), expected) and not np.array_equal(mask, expected)


@pytest.mark.parametrize("spacing_xyz, distance_mm", [((0.625, 0.75, 0.65625), 8.0), ((1.0, 1.0, 3.0), 3.0),
                                                      ((0.9765625, 0.9765625, 2.5), 5.0)])
def test_dilation_equals_the_euclidean_distance_transform(spacing_xyz, distance_mm) -> None:
    """The fast (multi-threaded SimpleITK) dilation gives exactly the voxels that scipy's exact Euclidean distance
    transform puts within the distance, on irregular blobs with anisotropic voxels."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    mask = ndimage.gaussian_filter(rng.random((30, 48, 64)), 2.0) > 0.52
    mask[:, :, 30:] = False  # blobs on one side only: voxels farther than the distance exist
    mask[0, 0, 0] = True  # a voxel at the edge of the volume
    expected = ndimage.distance_transform_edt(~mask, sampling=tuple(reversed(spacing_xyz))) <= distance_mm
    assert mask.any() and not expected.all()
    np.testing.assert_array_equal(dilate_by_mm(mask, spacing_xyz, distance_mm), expected)


def test_dilation_of_a_full_or_single_voxel_mask() -> None:
    assert dilate_by_mm(np.ones((5, 6, 7), bool), (1.0, 1.0, 1.0), 2.0).all()
    single = np.zeros((9, 9, 9), bool)
    single[4, 4, 4] = True
    assert dilate_by_mm(single, (1.0, 1.0, 1.0), 1.5).sum() == 19  # the centre, 6 faces and 12 edges
