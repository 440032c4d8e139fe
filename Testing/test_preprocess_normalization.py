"""Normalisation to [-1, 1] and back: clip, percentile, zscore; recorded parameters; std scaling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedTranslateLib.errors import ModelError
from MedTranslateLib.preprocess.normalization import denormalize, normalize

CT_SPEC = {"method": "clip", "range": [-1024.0, 3071.0], "background": -1024.0}


@pytest.fixture
def mr_volume() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    array = rng.normal(0.0, 3.0, (12, 16, 20)).astype(np.float32)  # background noise
    mask = np.zeros(array.shape, dtype=bool)
    mask[2:10, 3:13, 4:16] = True
    array[mask] = rng.uniform(100.0, 900.0, int(mask.sum())).astype(np.float32)
    return array, mask


def test_clip_maps_range_to_unit_interval_and_clips() -> None:
    array = np.array([-2000.0, -1024.0, 1023.5, 3071.0, 5000.0], dtype=np.float32)
    out, params = normalize(array, None, CT_SPEC)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-6)
    assert params["lo"] == -1024.0 and params["hi"] == 3071.0
    back = denormalize(out, CT_SPEC)
    np.testing.assert_allclose(back, [-1024.0, -1024.0, 1023.5, 3071.0, 3071.0], atol=1e-3)


def test_clip_round_trip_within_a_tenth_of_a_hu() -> None:
    array = np.random.default_rng(0).uniform(-1024, 3071, (8, 9, 10)).astype(np.float32)
    out, _ = normalize(array, None, CT_SPEC)
    assert np.abs(denormalize(out, CT_SPEC) - array).max() < 0.1


def test_normalize_does_not_modify_its_input(mr_volume) -> None:
    array, mask = mr_volume
    copy = array.copy()
    for spec in (CT_SPEC, {"method": "percentile", "percentiles": [1, 99], "within_mask": True},
                 {"method": "zscore"}):
        normalize(array, mask, spec)
    np.testing.assert_array_equal(array, copy)


def test_percentile_within_mask_records_and_inverts(mr_volume) -> None:
    array, mask = mr_volume
    spec = {"method": "percentile", "percentiles": [1.0, 99.0], "within_mask": True}
    out, params = normalize(array, mask, spec)
    lo, hi = np.percentile(array[mask], [1.0, 99.0])
    assert params["lo"] == pytest.approx(lo, rel=1e-5) and params["hi"] == pytest.approx(hi, rel=1e-5)
    json.dumps(params)  # plain floats
    assert out.min() == -1.0 and out.max() == 1.0  # background below p_lo and outliers clipped
    assert np.all(out[~mask] == -1.0)
    inside = mask & (array >= lo) & (array <= hi)
    back = denormalize(out, spec, params)
    np.testing.assert_allclose(back[inside], array[inside], rtol=1e-5, atol=1e-3)


def test_percentile_whole_volume_differs_from_within_mask(mr_volume) -> None:
    array, mask = mr_volume
    _, masked = normalize(array, mask, {"method": "percentile", "percentiles": [5, 95], "within_mask": True})
    _, whole = normalize(array, mask, {"method": "percentile", "percentiles": [5, 95], "within_mask": False})
    assert whole["lo"] == pytest.approx(float(np.percentile(array, 5)), rel=1e-5)
    assert whole["lo"] < masked["lo"]


def test_zscore_uses_mask_statistics_and_three_sd(mr_volume) -> None:
    array, mask = mr_volume
    spec = {"method": "zscore", "within_mask": True}
    out, params = normalize(array, mask, spec)
    assert params["mean"] == pytest.approx(float(array[mask].mean()), rel=1e-5)
    assert params["std"] == pytest.approx(float(array[mask].std()), rel=1e-5)
    z = (array - params["mean"]) / params["std"]
    np.testing.assert_allclose(out, np.clip(z / 3.0, -1, 1), atol=1e-5)
    back = denormalize(out, spec, params)
    np.testing.assert_allclose(back[mask], array[mask], rtol=1e-4, atol=0.05)


def test_output_specs_map_to_output_range() -> None:
    spec = {"method": "percentile", "percentiles": [0.5, 99.5], "output_range": [0.0, 1000.0], "background": 0}
    np.testing.assert_allclose(denormalize(np.array([-1.0, 0.0, 1.0, 2.0], np.float32), spec), [0, 500, 1000, 1000])
    z_spec = {"method": "zscore", "output_range": [-50.0, 150.0]}
    np.testing.assert_allclose(denormalize(np.array([-1.0, 1.0], np.float32), z_spec), [-50, 150])
    with pytest.raises(ModelError, match="output_range"):
        denormalize(np.zeros(3, np.float32), {"method": "percentile", "percentiles": [1, 99]})


def test_target_normalised_with_output_spec_inverts_to_output_range(mr_volume) -> None:
    """Training normalises a percentile target by its own statistics; inference maps [-1, 1] to output_range."""
    array, mask = mr_volume
    spec = {"method": "percentile", "percentiles": [0.0, 100.0], "within_mask": True, "output_range": [0.0, 1.0]}
    out, params = normalize(array, mask, spec)
    back = denormalize(out, spec)  # no params: output_range
    expected = (array[mask] - params["lo"]) / (params["hi"] - params["lo"])
    np.testing.assert_allclose(back[mask], expected, atol=1e-5)


def test_unknown_method_and_empty_range_are_refused() -> None:
    with pytest.raises(ModelError):
        normalize(np.zeros(3, np.float32), None, {"method": "minmax"})
    with pytest.raises(ModelError, match="range"):
        normalize(np.zeros(3, np.float32), None, {"method": "clip", "range": [5, 5]})


def test_constant_body_keeps_map_finite() -> None:
    array = np.full((4, 5, 6), 7.0, np.float32)
    for spec in ({"method": "percentile", "percentiles": [1, 99]}, {"method": "zscore"}):
        out, params = normalize(array, None, spec)
        assert np.isfinite(out).all()
        assert np.isfinite(list(v for v in params.values() if isinstance(v, float))).all()


@pytest.mark.parametrize("spec", [{"method": "percentile", "percentiles": [0.5, 99.5]}, {"method": "zscore"}])
def test_tiny_units_are_normalised_like_any_other(spec) -> None:
    """An MR stored in units of 1e-10 is the same image: per-volume normalisation must give the same result
    (an absolute threshold took it for a constant body and wrote garbage)."""
    values = np.random.default_rng(0).uniform(100.0, 900.0, (4, 8, 8)).astype(np.float32)
    plain, _ = normalize(values, None, spec)
    tiny, _ = normalize(values * np.float32(1e-10), None, spec)
    np.testing.assert_allclose(tiny, plain, atol=1e-5)
    constant, _ = normalize(np.full((4, 8, 8), 3e-10, np.float32), None, spec)
    assert np.all(np.isfinite(constant))
