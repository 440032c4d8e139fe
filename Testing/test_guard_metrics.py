"""Guards for the evaluation metrics: PSNR clips both images, MR windows are the 0.5th/99.5th percentiles, and the
MR SSIM ignores everything outside the mask."""

from __future__ import annotations

import math

import numpy as np
import pytest

from MedTranslateLib.evaluation.metrics import mr_window, psnr_2023, psnr_2025, psnr_norm, ssim_norm


@pytest.mark.parametrize("psnr, hi", [(psnr_2023, 3000.0), (psnr_2025, 3071.0)])
def test_psnr_clips_the_reference_too(psnr, hi) -> None:
    # metal in the reference above the clip range: a synthetic image saturated at the range's top is perfect
    ref = np.full((4, 4, 4), 100.0)
    ref[0, 0, :2] = 8000.0
    pred = ref.copy()
    pred[0, 0, :2] = hi
    assert psnr(pred, ref) == math.inf
    # below the range too: -2000 and -1024 are the same after clipping
    ref[1, 1, 1], pred[1, 1, 1] = -2000.0, -1024.0
    assert psnr(pred, ref) == math.inf


def test_mr_window_is_the_half_percent_percentiles_inside_the_mask() -> None:
    values = np.arange(1000, dtype=np.float64).reshape(10, 10, 10)
    mask = np.ones(values.shape, dtype=bool)
    lo, hi = mr_window(values, mask)
    assert lo == pytest.approx(np.percentile(values, 0.5)) == pytest.approx(4.995)
    assert hi == pytest.approx(np.percentile(values, 99.5)) == pytest.approx(994.005)
    # only the mask's voxels count: a bright outside does not move the window
    outside = np.zeros((20, 10, 10))
    outside[:10] = values
    outside[10:] = 1e6
    inside = np.zeros(outside.shape, dtype=bool)
    inside[:10] = True
    assert mr_window(outside, inside) == pytest.approx((lo, hi))


def test_mr_psnr_is_perfect_for_images_that_differ_only_beyond_the_window() -> None:
    # the 0.5 % darkest and brightest voxels saturate: changing them further changes nothing
    ref = np.arange(1000, dtype=np.float64).reshape(10, 10, 10)
    pred = ref.copy()
    pred.flat[:4] -= 500.0
    pred.flat[-4:] += 500.0
    assert psnr_norm(pred, ref) == math.inf


def test_mr_metrics_ignore_everything_outside_the_mask() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(100.0, 900.0, (12, 12, 12))
    pred = ref + rng.normal(0.0, 30.0, ref.shape)
    mask = np.zeros(ref.shape, dtype=bool)
    mask[3:9, 3:9, 3:9] = True
    noisy = pred.copy()
    noisy[~mask] = rng.uniform(-5000.0, 5000.0, int((~mask).sum()))  # garbage outside the body
    assert ssim_norm(noisy, ref, mask) == pytest.approx(ssim_norm(pred, ref, mask), abs=1e-12)
