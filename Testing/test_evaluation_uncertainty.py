"""Uncertainty vs error: correlation when std tracks the error, none when it does not; ensembles."""

from __future__ import annotations

import numpy as np
import pytest

from MedTranslateLib.errors import InputError
from MedTranslateLib.evaluation.uncertainty import (RunningStats, ensemble_stats, uncertainty_error_relation,
                                                     uncertainty_figure)


def test_informative_uncertainty_correlates_with_error():
    rng = np.random.default_rng(0)
    std = rng.uniform(1, 50, (10, 20, 20))
    error = np.abs(rng.normal(0, std))  # errors drawn with that std: calibrated
    mask = np.ones(std.shape, bool)
    mask[:, :2] = False
    rel = uncertainty_error_relation(std, error, mask)
    assert rel["pearson"] > 0.4 and rel["spearman"] > 0.4
    assert rel["error_top10"] > 5 * rel["error_bottom10"]
    cal = rel["calibration"]
    assert len(cal) == 10 and sum(c["count"] for c in cal) == int(mask.sum())
    assert [c["std_mean"] for c in cal] == sorted(c["std_mean"] for c in cal)
    # calibrated: RMS error of each bin is close to its mean std
    assert all(abs(c["rmse"] / c["std_mean"] - 1) < 0.3 for c in cal[2:])
    assert uncertainty_figure(rel)[:8] == b"\x89PNG\r\n\x1a\n"


def test_uninformative_uncertainty_has_no_correlation():
    rng = np.random.default_rng(1)
    std = rng.uniform(1, 50, (10, 20, 20))
    error = np.abs(rng.normal(0, 20, std.shape))
    rel = uncertainty_error_relation(std, error)
    assert abs(rel["pearson"]) < 0.1 and abs(rel["spearman"]) < 0.1
    assert rel["error_ratio"] == pytest.approx(1.0, abs=0.25)


def test_ensemble_stats_and_errors():
    a, b = np.zeros((2, 3, 4)), np.full((2, 3, 4), 2.0)
    mean, std = ensemble_stats([a, b])
    assert np.allclose(mean, 1.0) and np.allclose(std, 1.0) and mean.dtype == np.float32
    with pytest.raises(InputError):
        ensemble_stats([a, np.zeros((2, 3, 5))])
    with pytest.raises(InputError):
        ensemble_stats([])
    with pytest.raises(InputError):
        uncertainty_error_relation(a, b, np.zeros_like(a))


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_running_stats_equal_those_of_the_stacked_predictions(count):
    """Folded in one at a time (a generator, no stack held), the mean is bit for bit the stack's float32 mean and
    the population std equal to float32 round-off (of HU-sized values), also for float64 and int16 inputs."""
    rng = np.random.default_rng(count)
    base = rng.uniform(-1024, 3071, (7, 30, 41))
    for dtype in (np.float32, np.float64, np.int16):
        arrays = [(base + rng.normal(0, spread, base.shape)).astype(dtype) for spread in (0.01, 1, 30, 300, 0)[:count]]
        stack = np.stack([a.astype(np.float32) for a in arrays])
        mean, std = ensemble_stats(a for a in arrays)
        assert mean.dtype == std.dtype == np.float32 and mean.shape == base.shape
        assert np.array_equal(mean, stack.mean(axis=0))
        assert np.allclose(std, stack.std(axis=0), rtol=1e-5, atol=np.spacing(np.float32(3100)))
        running = RunningStats(spread=False)
        for a in arrays:
            running.add(a)
        only_mean, no_std = running.result()
        assert no_std is None and np.array_equal(only_mean, mean)
