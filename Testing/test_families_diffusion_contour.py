"""ContourDiff family: modality-agnostic contour maps, target-only training, source-contour conditioning."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from scipy import ndimage

from MedTranslateLib.families import get_family
from MedTranslateLib.families.base import InferenceOptions
from MedTranslateLib.families.contourdiff import FAMILY, contour_map

TINY = {"in_channels": 1, "out_channels": 1, "channels": [8, 16], "attention_levels": [False, False],
        "num_res_blocks": 1, "num_head_channels": 8, "norm_num_groups": 4}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def phantom(kind: str, shape: tuple[int, ...] = (64, 64), seed: int = 0) -> torch.Tensor:
    """The same anatomy (body, soft organ, bone) with CT-like or MR-like (inverted bone) intensities + noise."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    y, x = grids[-2], grids[-1]
    z = grids[0] if len(shape) == 3 else 0.0
    body = (x / 0.8) ** 2 + (y / 0.7) ** 2 + z**2 < 1
    bone = (x - 0.3) ** 2 + y**2 + z**2 < 0.04
    organ = (x + 0.3) ** 2 + (y + 0.2) ** 2 + z**2 < 0.06
    if kind == "ct":
        image = np.full(shape, -1000.0)
        image[body], image[organ], image[bone] = 40.0, 80.0, 1000.0
    else:
        image = np.zeros(shape)
        image[body], image[organ], image[bone] = 300.0, 600.0, 80.0
    image += np.random.default_rng(seed).normal(0, 0.02 * np.ptp(image), shape)
    return torch.tensor(image, dtype=torch.float32)[None, None]


def _dilated_dice(a: np.ndarray, b: np.ndarray, iterations: int = 1) -> float:
    da, db = ndimage.binary_dilation(a, iterations=iterations), ndimage.binary_dilation(b, iterations=iterations)
    return 2.0 * float((da & db).sum()) / float(da.sum() + db.sum())


def test_family_registry_and_flags():
    family = get_family("contourdiff")
    assert family is FAMILY and family.paired is False and family.gradient_trained
    nets = family.build(TINY, 2)
    assert nets["denoiser"].unet.conv_in.conv.in_channels == 2  # noisy target + 1 contour channel


def test_contours_of_mr_and_ct_agree_2d():
    ct = contour_map(phantom("ct"))[0, 0].numpy() > 0
    mr = contour_map(phantom("mr", seed=1))[0, 0].numpy() > 0
    assert ct.sum() > 50 and mr.sum() > 50
    assert _dilated_dice(ct, mr) > 0.75
    # an unrelated anatomy (shifted body) agrees much less
    shifted = contour_map(torch.roll(phantom("mr", seed=1), shifts=9, dims=-1))[0, 0].numpy() > 0
    assert _dilated_dice(ct, shifted) < _dilated_dice(ct, mr) - 0.2


def test_contours_are_intensity_scale_invariant_and_work_in_3d():
    image = phantom("mr", shape=(24, 32, 32))
    a = contour_map(image)
    b = contour_map(3.0 * image - 500.0)
    assert a.shape == (1, 1, 24, 32, 32)
    assert (a != b).float().mean() < 0.01
    ct3 = contour_map(phantom("ct", shape=(24, 32, 32)))[0, 0].numpy() > 0
    assert _dilated_dice(ct3, a[0, 0].numpy() > 0) > 0.6


def test_training_uses_target_only_and_lowers_loss():
    nets = FAMILY.build(TINY, 2)
    optimizers = FAMILY.configure_optimizers(nets, 2e-3)
    target = torch.cat([phantom("ct", (32, 32), seed=s) for s in range(4)]) / 1000.0
    batch = {"target": target.clamp(-1, 1), "mask": torch.ones_like(target)}  # no "source" at all
    losses = [FAMILY.training_step(nets, optimizers, batch, contextlib.nullcontext, {})["loss"] for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_predictor_is_conditioned_on_source_contours_and_seeded():
    nets = FAMILY.build(TINY, 2)
    for parameter in nets["denoiser"].unet.out.parameters():  # MONAI zero-initialises the output layer
        torch.nn.init.normal_(parameter, std=0.05)
    predictor = FAMILY.make_predictor(nets, {"sampling": {"steps": 3}}, InferenceOptions())
    source = phantom("mr", (30, 30))
    assert torch.equal(predictor.condition_fn(source), contour_map(source))
    a = predictor(source, torch.Generator().manual_seed(0))
    b = predictor(source, torch.Generator().manual_seed(0))
    c = predictor(source, torch.Generator().manual_seed(1))
    assert a.shape == (1, 1, 30, 30) and torch.equal(a, b) and not torch.equal(a, c)
    # a different anatomy (different contours) changes the sample drawn from the same noise
    other = predictor(torch.roll(source, shifts=8, dims=-1), torch.Generator().manual_seed(0))
    assert not torch.equal(a, other)


def test_blank_slices_have_no_contours():
    blank = torch.full((2, 1, 16, 16), -1.0)
    assert contour_map(blank).sum() == 0


def test_masked_loss_uses_the_target_body_mask_in_unpaired_batches(monkeypatch):
    import MedTranslateLib.families.diffusion as diffusion

    seen = []
    real_masked_mse = diffusion.masked_mse
    monkeypatch.setattr(diffusion, "masked_mse", lambda p, t, m: seen.append(m) or real_masked_mse(p, t, m))
    nets = FAMILY.build(TINY, 2)
    optimizers = FAMILY.configure_optimizers(nets, 1e-3)
    source_mask, target_mask = torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
    source_mask[..., :16, :], target_mask[..., 16:, :] = 1.0, 1.0
    batch = {"source": torch.randn(1, 1, 32, 32), "target": torch.randn(1, 1, 32, 32),
             "mask": source_mask, "target_mask": target_mask}
    FAMILY.training_step(nets, optimizers, batch, contextlib.nullcontext, {"masked_loss": True})
    assert torch.equal(seen[-1], target_mask)  # the loss is on the target image: its own body, not the source's
    paired = {k: v for k, v in batch.items() if k != "target_mask"}
    FAMILY.training_step(nets, optimizers, paired, contextlib.nullcontext, {"masked_loss": True})
    assert torch.equal(seen[-1], source_mask)  # paired: one mask for both
