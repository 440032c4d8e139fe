"""Guards for the recorded geometric steps: the crop keeps the whole body and its margin on both sides, padding
is centred, and a resampled mask keeps voxels that are half inside."""

from __future__ import annotations

import numpy as np

from MedTranslateLib.preprocess import geometry


def test_crop_keeps_the_whole_body_with_the_margin_on_both_sides() -> None:
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[5:9, 6:11, 7:13] = True
    step = geometry.crop_step(mask, margin=0)
    cropped = geometry.crop_array(mask, step)
    assert cropped.shape == (4, 5, 6) and cropped.all()
    step = geometry.crop_step(mask, margin=2)
    assert step["start"] == [3, 4, 5] and step["stop"] == [11, 13, 15]
    assert geometry.crop_array(mask, step).sum() == mask.sum()


def test_padding_is_split_evenly_with_the_extra_voxel_after() -> None:
    step = geometry.pad_step((10, 7, 16), (16, 16, 16), -1.0)
    assert step["before"] == [3, 4, 0] and step["after"] == [3, 5, 0]
    array = np.ones((10, 7, 16), dtype=np.float32)
    padded = geometry.pad_array(array, step, -1.0)
    assert padded.shape == (16, 16, 16)
    assert padded[3:13, 4:11].all() and (padded[:3] == -1).all() and (padded[:, 11:] == -1).all()
    np.testing.assert_array_equal(geometry.unpad_array(padded, step), array)


def test_a_resampled_voxel_half_inside_the_mask_is_inside() -> None:
    # 8 voxels of 1 mm -> 4 of 2 mm: each new centre lies half-way between two old ones
    source = {"size": [8, 1, 1], "spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0],
              "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]}
    target = geometry.resampled_grid(source, [2.0, 1.0, 1.0])
    assert target["size"] == [4, 1, 1] and target["origin"][0] == 0.5
    mask = np.zeros((1, 1, 8), dtype=bool)
    mask[..., :5] = True  # voxels 0-4: the centre at 4.5 is half inside
    out = geometry.resample_mask(mask, source, target)
    np.testing.assert_array_equal(out[0, 0], [True, True, True, False])
