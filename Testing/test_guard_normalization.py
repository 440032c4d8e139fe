"""Guards for intensity normalisation: exact (chunked) statistics and the documented default ``within_mask = true``."""

from __future__ import annotations

import numpy as np
import pytest

from MedTranslateLib.preprocess.normalization import mean_std, normalize


@pytest.mark.parametrize("chunk", [1 << 20, 7, 1])
def test_mean_std_counts_every_value(chunk) -> None:
    values = np.random.default_rng(1).normal(50.0, 10.0, 100).astype(np.float32)
    values[-1] = 5000.0  # the last value of the last chunk matters too
    mean, std = mean_std(values, chunk=chunk)
    assert mean == pytest.approx(float(np.mean(values, dtype=np.float64)), rel=1e-9)
    assert std == pytest.approx(float(np.std(values, dtype=np.float64)), rel=1e-9)


@pytest.mark.parametrize("spec", [{"method": "percentile", "percentiles": [5, 95]}, {"method": "zscore"}])
def test_statistics_are_taken_inside_the_mask_by_default(spec) -> None:
    # docs/TRAINING.md: within_mask defaults to true for percentile and zscore
    rng = np.random.default_rng(2)
    array = rng.normal(0.0, 2.0, (8, 10, 12)).astype(np.float32)  # dark background
    mask = np.zeros(array.shape, dtype=bool)
    mask[2:6, 2:8, 3:9] = True
    array[mask] = rng.uniform(200.0, 800.0, int(mask.sum())).astype(np.float32)
    _, default = normalize(array, mask, spec)
    _, masked = normalize(array, mask, {**spec, "within_mask": True})
    _, whole = normalize(array, mask, {**spec, "within_mask": False})
    assert default == masked
    assert default != whole
