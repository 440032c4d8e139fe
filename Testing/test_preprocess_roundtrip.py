"""prepare -> identity model -> restore: the input's exact grid, values, background, record round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from MedTranslateLib.errors import InputError, ModelError
from MedTranslateLib.preprocess import (PrepRecord, on_input_grid, prepare, prepare_pair, restore,
                                        restore_array)
from MedTranslateLib.preprocess import geometry

CT_SPEC = {"method": "clip", "range": [-1024.0, 3071.0], "background": -1024.0}
ODD_SHAPE_ZYX = (23, 41, 37)  # x 37, y 41, z 23
ANISO = (0.7, 0.9, 2.5)


def oblique_direction() -> tuple[float, ...]:
    """A rotation about two axes times an axis permutation with a flip (closest code is not LPS)."""
    a, b = 0.35, -0.2
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    perm = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]])
    return tuple(float(v) for v in (rz @ rx @ perm).ravel())


def ct_image(shape_zyx=ODD_SHAPE_ZYX, spacing=ANISO, direction=None, origin=(12.5, -33.25, 101.0),
             smooth: bool = False):
    """A CT-like volume: air at -1000 around an ellipsoidal body with soft tissue and a bone ring.

    ``smooth``: the body is a linear ramp along every voxel axis (no noise, no ring), which linear
    interpolation reproduces exactly, so resampling there and back must give the same values.
    """
    import SimpleITK as sitk

    rng = np.random.default_rng(1)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    r = np.sqrt(x**2 + y**2 + (z / 1.2) ** 2)
    array = np.full(shape_zyx, -1000.0, np.float32) + rng.normal(0, 5, shape_zyx).astype(np.float32)
    if smooth:
        array[r < 0.8] = (100.0 + 300.0 * x + 200.0 * y + 150.0 * z)[r < 0.8]
    else:
        array[r < 0.8] = (40.0 + 300.0 * x + rng.normal(0, 10, shape_zyx))[r < 0.8]
        array[(r > 0.6) & (r < 0.7)] = 1200.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def card(spacing=None, orientation=None, dimensionality="3d", **input_extra):
    return {
        "source_modality": "CT", "target_modality": "CT", "dimensionality": dimensionality,
        "input": {"spacing": spacing, "orientation": orientation, "slice_axis": "axial", **input_extra},
        "normalization": {"input": CT_SPEC, "output": CT_SPEC},
    }


def assert_same_grid(a, b) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-9)


GRID_CASES = [
    pytest.param(None, None, "3d", id="native"),
    pytest.param(None, "RAS", "3d", id="reorient"),
    pytest.param([1.0, 1.0, 1.0], None, "2d", id="resample-2d"),
    pytest.param([1.3, 0.8, 1.7], "LPS", "3d", id="reorient+resample"),
]


@pytest.mark.parametrize("direction", [None, oblique_direction()], ids=["axis-aligned", "oblique"])
@pytest.mark.parametrize("spacing, orientation, dim", GRID_CASES)
def test_restore_gives_the_exact_input_grid(direction, spacing, orientation, dim) -> None:
    import SimpleITK as sitk

    image = ct_image(direction=direction, smooth=spacing is not None)
    model_card = card(spacing, orientation, dim, min_size=[4, 16, 16])
    prepared = prepare(image, model_card)
    assert prepared.array.dtype == np.float32 and prepared.mask.dtype == bool
    assert prepared.array.shape == prepared.mask.shape == tuple(prepared.record.model_shape)
    names = [s["step"] for s in prepared.record.steps]
    assert ("resample" in names) == (spacing is not None)
    if orientation is not None and geometry.orientation_code(image) != orientation:
        assert "reorient" in names
    restored = restore(prepared.array, prepared.record, CT_SPEC)
    assert_same_grid(restored, image)
    assert restored.GetPixelID() == sitk.sitkFloat32
    original = sitk.GetArrayFromImage(image)
    result = sitk.GetArrayFromImage(restored)
    body = prepared.input_mask
    assert np.all(result[~body] == -1024.0)  # background outside the body
    if spacing is None:  # no interpolation: the identity model round-trips within 1 HU
        assert np.abs(result[body] - original[body]).max() < 1.0
    else:  # interpolated there and back: a linear ramp is kept inside the body, away from its edge
        from scipy import ndimage

        core = ndimage.binary_erosion(body, iterations=2)
        assert core.sum() > 500
        assert np.median(np.abs(result[core] - original[core])) < 0.5


def test_reorientation_matches_dicomorient_and_inverts_exactly() -> None:
    import SimpleITK as sitk

    image = ct_image(direction=oblique_direction())
    array = sitk.GetArrayFromImage(image)
    for code in ("LPS", "RAS", "ASL", "IRP", "SAR"):
        oriented, step = geometry.reorient(image, code)
        if step is None:
            continue
        assert geometry.orientation_code(oriented) == code
        moved = geometry.reorient_array(array, step)
        np.testing.assert_array_equal(moved, sitk.GetArrayFromImage(oriented))
        np.testing.assert_array_equal(geometry.unreorient_array(moved, step), array)


def test_model_grid_is_in_card_orientation_and_spacing() -> None:
    image = ct_image(direction=oblique_direction())
    prepared = prepare(image, card([1.5, 1.5, 2.0], "RAS"))
    resample = prepared.record.step("resample")
    assert resample["to"]["spacing"] == [1.5, 1.5, 2.0]
    assert geometry.orientation_code(resample["to"]["direction"]) == "RAS"

    def centre(grid):  # physical centre of a grid's voxel extent
        direction = np.array(grid["direction"]).reshape(3, 3)
        half = (np.array(grid["size"]) - 1) * np.array(grid["spacing"]) / 2.0
        return np.array(grid["origin"]) + direction @ half

    np.testing.assert_allclose(centre(resample["to"]), centre(resample["from"]), atol=1e-9)


def test_record_survives_json() -> None:
    import SimpleITK as sitk

    image = ct_image(direction=oblique_direction())
    prepared = prepare(image, card([1.0, 1.0, 2.0], "RAS", "2.5d"))
    text = json.dumps(prepared.record.to_dict())
    record = PrepRecord.from_dict(json.loads(text))
    a = sitk.GetArrayFromImage(restore(prepared.array, record, CT_SPEC))
    b = sitk.GetArrayFromImage(restore(prepared.array, prepared.record, CT_SPEC))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(record.input_mask(), prepared.input_mask)


def test_crop_and_pad_for_2d_and_3d() -> None:
    image = ct_image(shape_zyx=(20, 50, 60), spacing=(1.0, 1.0, 1.0))
    prepared = prepare(image, card(dimensionality="2d"))
    crop, pad = prepared.record.step("crop"), prepared.record.step("pad")
    assert crop is not None and pad is not None
    z, y, x = prepared.array.shape
    assert y % 16 == 0 and x % 16 == 0 and z == crop["stop"][0] - crop["start"][0]
    assert pad["value"] == prepared.array.min() < -0.99  # the normalised background (air)
    assert not prepared.mask[:, : pad["before"][1]].any()  # padding is outside the body
    sized = prepare(image, card(dimensionality="2d", slice_size=[96, 80]))
    assert sized.array.shape[1:] == (96, 80)
    patched = prepare(image, card(dimensionality="3d", patch_size=[32, 32, 32]))
    assert patched.array.shape[0] >= 32 and min(patched.array.shape) >= 32


def test_outside_the_crop_is_background() -> None:
    import SimpleITK as sitk

    image = ct_image(shape_zyx=(16, 40, 40), spacing=(1.0, 1.0, 1.0))
    prepared = prepare(image, card(dimensionality="2d"))
    predicted = np.full(prepared.array.shape, 0.5, np.float32)  # a model that writes bone everywhere
    result = sitk.GetArrayFromImage(restore(predicted, prepared.record, CT_SPEC))
    assert np.all(result[~prepared.input_mask] == -1024.0)
    assert np.allclose(result[prepared.input_mask], 2047.25, atol=0.01)


def test_user_mask_replaces_automatic_mask() -> None:
    import SimpleITK as sitk

    image = ct_image(spacing=(1.0, 1.0, 1.0))
    user = np.zeros(ODD_SHAPE_ZYX, np.uint8)
    user[8:15, 15:25, 12:24] = 1
    mask_image = sitk.GetImageFromArray(user)
    mask_image.CopyInformation(image)
    prepared = prepare(image, card(), mask=mask_image)
    assert prepared.record.mask_source == "user"
    np.testing.assert_array_equal(prepared.input_mask, user > 0)
    assert prepared.array.shape[0] <= 7 + 2 * 4  # cropped to the user's box plus the margin
    result = sitk.GetArrayFromImage(restore(prepared.array, prepared.record, CT_SPEC))
    assert np.all(result[user == 0] == -1024.0)
    with pytest.raises(InputError, match="mask"):
        prepare(image, card(), mask=np.ones((3, 4, 5), np.uint8))


def test_body_mask_settings_from_the_card() -> None:
    image = ct_image(spacing=(1.0, 1.0, 1.0))
    model_card = card()
    model_card["body_mask"] = {"method": "none"}
    everything = prepare(image, model_card)
    assert everything.record.mask_source == "none" and everything.mask.all()
    assert everything.record.step("crop") is None
    model_card["body_mask"] = {"method": "threshold", "threshold": 5000.0}  # finds nothing: falls back
    fallback = prepare(image, model_card)
    assert fallback.record.warnings and "empty" in fallback.record.warnings[0]
    assert fallback.input_mask.sum() > 0


def test_too_small_volume_is_refused() -> None:
    image = ct_image(shape_zyx=(6, 20, 20), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="smaller than the model's window"):
        prepare(image, card(min_size=[8, 16, 16]))
    with pytest.raises(InputError, match="smaller than the model's window"):  # after resampling to 2 mm
        prepare(image, card([2.0, 2.0, 1.0], min_size=[4, 16, 16]))


def test_wrong_model_output_shape_is_a_model_error() -> None:
    prepared = prepare(ct_image(spacing=(1.0, 1.0, 1.0)), card())
    with pytest.raises(ModelError):
        restore(prepared.array[:-1], prepared.record, CT_SPEC)


def test_prepare_pair_puts_target_through_the_same_steps() -> None:
    import SimpleITK as sitk

    source = ct_image(direction=oblique_direction())
    model_card = card([1.0, 1.0, 2.0], "RAS", "2d")
    model_card["source_modality"] = "CT"
    model_card["normalization"] = {
        "input": CT_SPEC,
        "output": {"method": "percentile", "percentiles": [0.0, 100.0], "within_mask": True,
                   "output_range": [0.0, 1000.0], "background": 0.0},
    }
    target = sitk.Cast(source + 1024.0, sitk.sitkFloat32)  # an "MR" that is a shifted copy
    prepared, target_array = prepare_pair(source, target, model_card)
    alone = prepare(source, model_card)
    np.testing.assert_array_equal(prepared.array, alone.array)
    assert target_array.shape == prepared.array.shape and target_array.dtype == np.float32
    inside = prepared.mask
    assert target_array[inside].min() == pytest.approx(-1.0) and target_array[inside].max() == pytest.approx(1.0)
    # same geometry: the target is a monotone function of the source voxel by voxel
    order = np.argsort(prepared.array[inside], kind="stable")
    assert np.all(np.diff(target_array[inside][order]) >= -1e-5)


def test_prepare_pair_resamples_a_target_on_another_grid() -> None:
    import SimpleITK as sitk
    from scipy import ndimage

    source = ct_image(spacing=(1.0, 1.0, 1.0), smooth=True)
    target = sitk.Resample(source, [s // 2 for s in source.GetSize()], sitk.Transform(), sitk.sitkLinear,
                           source.GetOrigin(), [2.0, 2.0, 2.0], source.GetDirection(), -1000.0, sitk.sitkFloat32)
    prepared, target_array = prepare_pair(source, target, card())
    assert target_array.shape == prepared.array.shape
    core = ndimage.binary_erosion(prepared.mask, iterations=3)
    assert core.sum() > 200
    assert np.median(np.abs(target_array[core] - prepared.array[core])) < 0.01


def test_prepare_pair_refuses_a_target_that_misses_its_source() -> None:
    """A CT whose origin is 1000 mm off would train the model towards an all-air target: refused."""
    source = ct_image(spacing=(1.0, 1.0, 1.0), smooth=True)
    target = ct_image(spacing=(1.0, 1.0, 1.0), smooth=True)
    target.SetOrigin(tuple(o + (1000.0 if axis == 0 else 0.0) for axis, o in enumerate(source.GetOrigin())))
    with pytest.raises(InputError, match="covers only 0% of its source.*not aligned"):
        prepare_pair(source, target, card())
    target.SetOrigin(tuple(o + (0.5 if axis == 0 else 0.0) for axis, o in enumerate(source.GetOrigin())))
    prepare_pair(source, target, card())  # half a voxel off: resampled, fine


def test_target_role_uses_output_spec() -> None:
    image = ct_image(spacing=(1.0, 1.0, 1.0))
    model_card = card()
    model_card["normalization"]["output"] = {"method": "clip", "range": [-200.0, 200.0], "background": -200}
    as_target = prepare(image, model_card, role="target")
    assert as_target.record.normalization["lo"] == -200.0 and as_target.record.role == "target"


def test_restore_array_is_the_restored_image_without_its_geometry() -> None:
    """The uncertainty map takes each pass's spread from restore_array on the input grid."""
    import SimpleITK as sitk

    image = ct_image(direction=oblique_direction())
    prepared = prepare(image, card(None, "RAS"))
    array = restore_array(prepared.array, prepared.record, CT_SPEC)
    restored = restore(prepared.array, prepared.record, CT_SPEC)
    np.testing.assert_array_equal(array, sitk.GetArrayFromImage(restored))
    rebuilt = on_input_grid(array, prepared.record)
    assert (rebuilt.GetSpacing(), rebuilt.GetOrigin(), rebuilt.GetDirection()) == \
        (image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def test_percentile_input_restores_through_recorded_params() -> None:
    import SimpleITK as sitk

    image = ct_image(spacing=(1.0, 1.0, 1.0)) + 1000.0  # positive, MR-like
    model_card = card()
    model_card["source_modality"] = "MR"
    spec = {"method": "percentile", "percentiles": [1.0, 99.0], "within_mask": True}
    model_card["normalization"]["input"] = spec
    prepared = prepare(image, model_card)
    params = prepared.record.normalization
    restored = sitk.GetArrayFromImage(restore(prepared.array, prepared.record, spec, 0.0, params=params))
    original = sitk.GetArrayFromImage(image)
    inside = prepared.input_mask & (original >= params["lo"]) & (original <= params["hi"])
    assert inside.sum() > 100
    np.testing.assert_allclose(restored[inside], original[inside], rtol=1e-4, atol=0.05)


@pytest.mark.parametrize("spacing", [None, [2.0, 2.0, 2.0]], ids=["native", "2mm"])
def test_real_pair_round_trip(real_data, spacing) -> None:
    """The real MR/CT pair (int16 files): target through prepare_pair and restore comes back on the CT."""
    import SimpleITK as sitk

    case = real_data / "Task1" / "phantom" / "1PA003"
    if not (case / "ct.nii.gz").exists():
        pytest.skip("Task1/phantom/1PA003 not present")
    mr, ct = sitk.ReadImage(str(case / "mr.nii.gz")), sitk.ReadImage(str(case / "ct.nii.gz"))
    mask = sitk.ReadImage(str(case / "mask.nii.gz"))
    model_card = card(spacing, "LPS", "2d", min_size=[1, 32, 32])
    model_card["source_modality"] = "MR"
    model_card["normalization"]["input"] = {"method": "percentile", "percentiles": [0.5, 99.5], "within_mask": True}
    prepared, target = prepare_pair(mr, ct, model_card, mask=mask)
    assert prepared.record.target_normalization["lo"] == -1024.0
    restored = restore(target, prepared.record, CT_SPEC)
    assert_same_grid(restored, ct)
    original = sitk.GetArrayFromImage(ct).astype(np.float32)
    result = sitk.GetArrayFromImage(restored)
    body = sitk.GetArrayFromImage(mask) > 0
    assert np.all(result[~body] == -1024.0)
    error = np.abs(result[body] - original[body])
    if spacing is None:
        assert error.max() < 1.0
    else:  # 1 mm -> 2 mm -> 1 mm loses detail but not position
        assert np.median(error) < 15.0 and error.mean() < 30.0


def test_a_rounding_change_of_the_direction_leaves_the_model_grid_mask_alone() -> None:
    """A 2x downsampling puts every model-grid sample half-way between input voxels: with a nearest-neighbour mask,
    a 1e-6 rad change of the direction cosines moved the whole mask (and the crop) by a voxel, and the synthetic CT
    of the head phantom model by 20 HU in the body."""
    image = ct_image(shape_zyx=(24, 40, 36), spacing=(1.0, 1.0, 1.0), direction=None)
    tilted = ct_image(shape_zyx=(24, 40, 36), spacing=(1.0, 1.0, 1.0), direction=None)
    a = 1e-6
    tilted.SetDirection((math.cos(a), -math.sin(a), 0.0, math.sin(a), math.cos(a), 0.0, 0.0, 0.0, 1.0))
    plain, turned = (prepare(im, card([2.0, 2.0, 2.0], None, "2d")) for im in (image, tilted))
    np.testing.assert_array_equal(plain.mask, turned.mask)
    assert plain.record.step("crop") == turned.record.step("crop")
    np.testing.assert_allclose(plain.array, turned.array, atol=1e-4)


@pytest.mark.parametrize("slices, spacing_z, model_z", [(73, 1.0, 3.0), (140, 0.5, 3.0), (98, 0.5, 2.0)])
def test_every_input_slice_gets_a_prediction_after_resampling(slices, spacing_z, model_z) -> None:
    """The model grid has a whole number of slices, so the input's outermost slice centres can lie just outside
    it: they take the nearest model slice's value instead of the background (a whole edge slice was air)."""
    import SimpleITK as sitk

    image = ct_image(shape_zyx=(slices, 24, 24), spacing=(1.0, 1.0, spacing_z))
    array = sitk.GetArrayFromImage(image)
    array[:] = 40.0  # the body fills the volume: every slice, the first and the last included
    body = sitk.GetImageFromArray(array)
    body.CopyInformation(image)
    prepared = prepare(body, card(spacing=[1.0, 1.0, model_z], dimensionality="2d"))
    predicted = np.full(prepared.array.shape, 0.5, np.float32)
    result = sitk.GetArrayFromImage(restore(predicted, prepared.record, CT_SPEC))
    assert prepared.input_mask.all()
    assert np.allclose(result, 2047.25, atol=0.01), np.flatnonzero((result == -1024.0).all(axis=(1, 2)))
