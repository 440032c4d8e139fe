"""SynthRAD metrics: hand-computed values, agreement with scikit-image, MS-SSIM behaviour, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from MedTranslateLib.errors import InputError
from MedTranslateLib.evaluation import metrics as M


def _line(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(1, 1, -1)


def test_mae_bias_psnr_hand_computed():
    ref = _line([0, 0, 0, 0])
    pred = _line([0, 10, 20, 1000])
    mask = _line([1, 1, 1, 0])  # last voxel is outside the body: ignored
    assert M.mae(pred, ref, mask) == pytest.approx(10.0)
    assert M.mean_error(pred, ref, mask) == pytest.approx(10.0)
    assert M.mean_error(ref, pred, mask) == pytest.approx(-10.0)
    mse = (0 + 100 + 400) / 3
    assert M.psnr_2023(pred, ref, mask) == pytest.approx(10 * math.log10(4024**2 / mse))
    assert M.psnr_2025(pred, ref, mask) == pytest.approx(10 * math.log10(4095**2 / mse))


def test_mae_is_not_clipped_but_psnr_is():
    ref = _line([3000, -1024])
    pred = _line([5000, -2000])
    assert M.mae(pred, ref) == pytest.approx((2000 + 976) / 2)
    assert M.psnr_2023(pred, ref) == math.inf  # both clipped to [-1024, 3000]: identical
    assert M.psnr_2025(pred, ref) == pytest.approx(10 * math.log10(4095**2 / (71**2 / 2)))


def test_tissue_mae_uses_reference_classes():
    ref = _line([-1000, -400, 0, 300, 1000])
    pred = _line([-900, -380, 50, 330, 700])
    got = M.tissue_mae(pred, ref)
    assert got["mae_air"] == pytest.approx(100.0)
    assert got["mae_soft"] == pytest.approx((20 + 50 + 30) / 3)  # -400 and 300 count as soft tissue
    assert got["mae_bone"] == pytest.approx(300.0)
    assert math.isnan(M.tissue_mae(pred[..., 1:3], ref[..., 1:3])["mae_bone"])


def test_bone_dice():
    ref = _line([0, 500, 500, 0, 900])
    pred = _line([500, 500, 0, 0, 900])
    mask = _line([1, 1, 1, 1, 0])
    assert M.bone_dice(pred, ref, mask) == pytest.approx(0.5)
    assert math.isnan(M.bone_dice(pred, ref, mask, threshold=600))  # no bone above 600 inside the mask
    assert M.bone_dice(ref, ref, mask) == pytest.approx(1.0)


def _pair(shape=(14, 16, 18), noise=80.0, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 400, shape).astype(np.float32)
    pred = (ref + rng.normal(0, noise, shape)).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[2:-2, 3:-3, 1:-4] = True
    return pred, ref, mask


def test_ssim_matches_scikit_image_masked_crop():
    from skimage.metrics import structural_similarity
    from skimage.util import crop

    pred, ref, mask = _pair()
    r = np.where(mask, np.clip(ref, -1024, 3000), -1024).astype(np.float64) + 1024
    p = np.where(mask, np.clip(pred, -1024, 3000), -1024).astype(np.float64) + 1024
    _, smap = structural_similarity(r, p, win_size=7, data_range=4024, full=True)
    expected = crop(smap, 3)[crop(mask, 3)].mean()
    assert M.ssim_2023(pred, ref, mask) == pytest.approx(expected, rel=1e-9)
    assert M.ssim_2023(ref, ref, mask) == pytest.approx(1.0)


def test_ms_ssim_identity_noise_and_padding():
    pred, ref, mask = _pair(noise=30.0)
    assert M.ms_ssim_2025(ref, ref, mask) == pytest.approx(1.0, abs=1e-9)
    low = M.ms_ssim_2025(pred, ref, mask)
    high = M.ms_ssim_2025(*_pair(noise=300.0)[:2], mask)
    assert 0.0 < high < low < 1.0
    # a small volume is edge-padded (centred) to 97 voxels per axis, the mask zero-padded
    pads = [((97 - s) // 2, 97 - s - (97 - s) // 2) for s in ref.shape]
    padded = M.ms_ssim_2025(np.pad(pred, pads, mode="edge"), np.pad(ref, pads, mode="edge"), np.pad(mask, pads))
    assert M.ms_ssim_2025(pred, ref, mask) == pytest.approx(padded, rel=1e-9)


def test_mr_metrics_are_scale_invariant():
    pred, ref, mask = _pair(noise=60.0)
    ref_mr, pred_mr = ref + 2000, pred + 2000
    out = M.compute_metrics(pred_mr, ref_mr, mask, modality="MR")
    assert set(out) == set(M.MR_KEYS)
    scaled = M.compute_metrics(pred_mr * 3.0, ref_mr, mask, modality="MR")
    assert scaled["psnr_norm"] == pytest.approx(out["psnr_norm"], rel=1e-6)
    assert scaled["ssim_norm"] == pytest.approx(out["ssim_norm"], rel=1e-6)
    assert scaled["mae"] > out["mae"] * 10
    assert M.ssim_norm(ref_mr, ref_mr, mask) == pytest.approx(1.0)


def test_compute_metrics_keys_and_errors():
    pred, ref, mask = _pair()
    out = M.compute_metrics(pred, ref, mask)
    assert set(out) == set(M.CT_KEYS)
    assert out["ssim"] < 1 and out["psnr"] > 0
    with pytest.raises(InputError, match="empty"):
        M.compute_metrics(pred, ref, np.zeros_like(mask))
    with pytest.raises(InputError, match="shape"):
        M.compute_metrics(pred[:-1], ref, mask)
    with pytest.raises(InputError, match="too small"):
        M.ssim_2023(pred[:5], ref[:5], mask[:5])


@pytest.mark.parametrize("modality, ssim_key", [("CT", "ssim"), ("MR", "ssim_norm")])
def test_a_slab_thinner_than_the_ssim_window_has_every_metric_but_ssim(modality, ssim_key):
    """A 5-slice slab (the panel's evaluation of a thin acquisition): SSIM cannot be taken with a 7-voxel window
    and is NaN; the voxel metrics are those of the slab, not lost with it."""
    pred, ref, mask = _pair()
    out = M.compute_metrics(pred[:5], ref[:5], mask[:5], modality=modality)
    assert np.isnan(out[ssim_key])
    assert out["mae"] == pytest.approx(float(np.abs(pred[:5] - ref[:5])[mask[:5]].mean()), rel=1e-6)
    assert all(np.isfinite(value) for key, value in out.items() if key != ssim_key)


@pytest.mark.slow
def test_full_size_volume():
    """A BraTS-sized volume goes through every metric (about 5 s on an idle 2-core machine)."""
    pred, ref, _ = _pair(shape=(155, 240, 240), noise=50.0)
    mask = np.zeros(ref.shape, bool)
    mask[10:140, 20:220, 20:220] = True
    out = M.compute_metrics(pred, ref, mask)
    assert 0.9 < out["ms_ssim"] <= 1.0


def test_ms_ssim_2025_pads_the_mask_like_the_images_and_filters_from_a_zero_border():
    """A volume under 97 voxels with the mask reaching every border: the value of an independent implementation
    of the challenge's rules (mask edge-padded like the images; 2x2x2 mean with zeros before the first voxel).
    The zero-padded mask and a mirrored border gave 0.96039."""
    from MedTranslateLib.evaluation.metrics import ms_ssim_2025

    rng = np.random.default_rng(0)
    ref = rng.normal(0, 200, (40, 50, 60)).astype(np.float32)
    pred = (ref + rng.normal(0, 100, ref.shape)).astype(np.float32)
    assert ms_ssim_2025(pred, ref, np.ones(ref.shape, bool)) == pytest.approx(0.9622666, abs=1e-6)


@pytest.mark.parametrize("shape", [(40, 30, 28), (101, 12, 16)])
def test_slabs_give_the_whole_volume_values(monkeypatch, shape):
    """The SSIM maps are computed in z-slabs with a halo: slabs of 5 slices (odd, many slabs, the mask touching
    the first and last slice) give the values of one slab holding the whole volume (including the padding
    and downsampling of MS-SSIM)."""
    pred, ref, _ = _pair(shape=shape, noise=150.0, seed=3)
    mask = np.zeros(shape, bool)
    mask[:, 2:-1, 1:-2] = True
    mask[shape[0] // 3] = False
    mr_pred, mr_ref = np.abs(pred) + 50, np.abs(ref) + 50

    def values() -> list[float]:
        return [M.ssim_2023(pred, ref, mask), M.ms_ssim_2025(pred, ref, mask), M.ssim_norm(mr_pred, mr_ref, mask)]

    monkeypatch.setattr(M, "SLAB", 1000)
    whole = values()
    assert all(0.0 < v < 1.0 for v in whole)
    monkeypatch.setattr(M, "SLAB", 5)
    assert values() == pytest.approx(whole, rel=1e-12, abs=0)
