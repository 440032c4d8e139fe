"""Uncertainty vs error: correlation when std tracks the error, none when it does not; ensembles."""

from __future__ import annotations

import numpy as np
import pytest

from MedTranslateLib.errors import InputError
from MedTranslateLib.evaluation.uncertainty import ensemble_stats, uncertainty_error_relation, uncertainty_figure


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
        uncertainty_error_relation(a, b, np.zeros_like(a))
