"""Guards for the automatic body mask: a given threshold is exclusive, and background cut by the field of view's
bottom or right edge is never filled in as body."""

from __future__ import annotations

import numpy as np

from MedTranslateLib.preprocess.body_mask import body_mask, fill_holes


def test_threshold_is_exclusive_so_zero_background_stays_out() -> None:
    # an MR with exactly-zero background and `body_mask = {method = "threshold", threshold = 0}`
    array = np.zeros((6, 10, 10), dtype=np.float32)
    array[1:5, 2:8, 2:8] = 100.0
    mask = body_mask(array, (1.0, 1.0, 1.0), method="threshold", threshold=0.0, modality="MR")
    assert mask.sum() == 4 * 6 * 6
    assert not mask[0].any() and not mask[:, 0].any()


def test_background_touching_only_the_far_edges_is_not_a_hole() -> None:
    # a body cut by the field of view: the air is open only towards the last row and the last column
    mask = np.zeros((3, 20, 20), dtype=bool)
    mask[:, :10, :] = True
    mask[:, :, :10] = True
    filled = fill_holes(mask)
    np.testing.assert_array_equal(filled, mask)
    # a real hole is still filled
    mask[:, 3:6, 3:6] = False
    assert fill_holes(mask)[:, 3:6, 3:6].all()
