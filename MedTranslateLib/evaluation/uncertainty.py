"""Does the model's voxel-wise uncertainty (standard deviation) tell where its errors are?"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from MedTranslateLib.errors import InputError

MAX_RANK_SAMPLES = 500_000  # Spearman ranks at most this many voxels (a fixed random subset)


#: elements folded per step: bounds the float64 temporaries of :meth:`RunningStats.add` to a few MiB
_CHUNK = 1 << 20


class RunningStats:
    """Voxel-wise mean and population standard deviation of predictions folded in one at a time, so that no stack
    of them is held. The mean is their float32 sum divided by their count, as ``np.mean`` of their stack computes
    it; the spread (only with ``spread``) comes from a float64 running mean and a float32 sum of squared
    deviations (Welford)."""

    def __init__(self, spread: bool = True) -> None:
        self.spread = spread
        self.count = 0
        self.total: np.ndarray | None = None
        self.running_mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, array: np.ndarray) -> None:
        """Fold in one prediction (any shape, the same for all; read as float32)."""
        values = np.asarray(array, dtype=np.float32)
        if self.total is None:
            self.total = values.copy()
            if self.spread:
                self.running_mean = values.astype(np.float64)
                self.m2 = np.zeros(values.shape, np.float32)
            self.count = 1
            return
        if values.shape != self.total.shape:
            raise InputError(f"The predictions have different shapes {sorted({values.shape, self.total.shape})}.",
                             "Combine predictions of the same volume on the same grid.")
        self.count += 1
        self.total += values
        if self.running_mean is None or self.m2 is None:
            return
        flat, mean, m2 = values.reshape(-1), self.running_mean.reshape(-1), self.m2.reshape(-1)
        for start in range(0, flat.size, _CHUNK):
            part = slice(start, start + _CHUNK)
            delta = flat[part] - mean[part]
            mean[part] += delta / self.count
            m2[part] += delta * (flat[part] - mean[part])

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean and standard deviation (None without ``spread``), float32, computed in place of the running sums to
        save memory: call once, after the last :meth:`add`."""
        total, m2 = self.total, self.m2
        self.total = self.running_mean = self.m2 = None  # the caller owns the results, freed when it drops them
        if total is None:
            raise InputError("No predictions were given to combine.", "Pass at least one prediction.")
        mean = np.true_divide(total, self.count, out=total)
        if m2 is None:
            return mean, None
        return mean, np.sqrt(np.true_divide(m2, self.count, out=m2), out=m2)


def ensemble_stats(arrays: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-wise mean and standard deviation (population, ddof 0) of several predictions, float32; ``arrays`` may
    be a generator, each array folded in (:class:`RunningStats`) before the next is made."""
    stats = RunningStats()
    for array in arrays:
        stats.add(array)
    mean, std = stats.result()
    assert std is not None  # a spread was asked for
    return mean, std


def uncertainty_error_relation(std: np.ndarray, abs_error: np.ndarray, mask: np.ndarray | None = None,
                               bins: int = 10) -> dict:
    """Relation of per-voxel uncertainty to |error| inside the mask.

    Returns ``pearson``, ``spearman``, ``error_top10`` / ``error_bottom10`` (mean |error| in the 10 % most
    / least uncertain voxels), ``error_ratio`` (top / bottom) and ``calibration``: per equal-count bin of
    std, the mean std, mean |error| and RMS error (a well-calibrated model has RMS error ~ mean std).
    """
    from scipy.stats import pearsonr, spearmanr

    std, abs_error = np.asarray(std), np.asarray(abs_error)
    if std.shape != abs_error.shape:
        raise InputError(f"The uncertainty map {std.shape} and the error map {abs_error.shape} differ in shape.",
                         "Use the uncertainty map written with this prediction.")
    m = np.ones(std.shape, bool) if mask is None else np.asarray(mask) > 0
    if m.shape != std.shape or not m.any():
        raise InputError("The mask is empty or does not match the uncertainty map.", "Use the case's body mask.")
    s, e = std[m].astype(np.float64), np.abs(abs_error[m].astype(np.float64))  # mask first: float64 of the mask only
    constant = np.ptp(s) == 0 or np.ptp(e) == 0
    pearson = math.nan if constant else float(pearsonr(s, e)[0])
    if constant:
        spearman = math.nan
    else:
        idx = np.arange(s.size)
        if s.size > MAX_RANK_SAMPLES:
            idx = np.random.default_rng(0).choice(s.size, MAX_RANK_SAMPLES, replace=False)
        spearman = float(spearmanr(s[idx], e[idx])[0])
    order = np.argsort(s, kind="stable")
    tenth = max(1, s.size // 10)
    top, bottom = float(e[order[-tenth:]].mean()), float(e[order[:tenth]].mean())
    calibration = []
    for chunk in np.array_split(order, min(bins, s.size)):
        if chunk.size:
            calibration.append({"std_mean": float(s[chunk].mean()), "abs_error_mean": float(e[chunk].mean()),
                                "rmse": float(np.sqrt(np.mean(e[chunk] ** 2))), "count": int(chunk.size)})
    return {"pearson": pearson, "spearman": spearman, "error_top10": top, "error_bottom10": bottom,
            "error_ratio": top / bottom if bottom > 0 else math.inf, "calibration": calibration}


def uncertainty_figure(relation: dict, units: str = "HU") -> bytes:
    """PNG: binned calibration curve (RMS and mean |error| against mean std, with the identity line)."""
    from MedTranslateLib.evaluation.report import figure_png, new_figure

    fig, ax = new_figure(1, 1, size=(4.8, 4.0))
    cal = relation["calibration"]
    stds = [c["std_mean"] for c in cal]
    ax.plot(stds, [c["rmse"] for c in cal], "o-", label="RMS error")
    ax.plot(stds, [c["abs_error_mean"] for c in cal], "s--", label="mean |error|")
    top = max(stds + [c["rmse"] for c in cal] + [1e-6])
    ax.plot([0, top], [0, top], color="grey", lw=1, label="ideal (error = std)")
    ax.set_xlabel(f"predicted std ({units}), binned by decile")
    ax.set_ylabel(f"error ({units})")
    ax.set_title(f"Uncertainty vs error  (Spearman {relation['spearman']:.2f})", fontsize=10)
    ax.legend(fontsize=8)
    return figure_png(fig)
