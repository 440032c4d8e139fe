"""Does the model's voxel-wise uncertainty (standard deviation) tell where its errors are?"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from MedTranslateLib.errors import InputError

MAX_RANK_SAMPLES = 500_000  # Spearman ranks at most this many voxels (a fixed random subset)


def ensemble_stats(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-wise mean and standard deviation (population, ddof 0) of several predictions, float32."""
    if len(arrays) == 0:
        raise InputError("No predictions were given to combine.", "Pass at least one prediction.")
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1:
        raise InputError(f"The predictions have different shapes {sorted(shapes)}.",
                         "Combine predictions of the same volume on the same grid.")
    stack = np.stack([np.asarray(a, dtype=np.float32) for a in arrays])
    return stack.mean(axis=0), stack.std(axis=0)


def uncertainty_error_relation(std: np.ndarray, abs_error: np.ndarray, mask: np.ndarray | None = None,
                               bins: int = 10) -> dict:
    """Relation of per-voxel uncertainty to |error| inside the mask.

    Returns ``pearson``, ``spearman``, ``error_top10`` / ``error_bottom10`` (mean |error| in the 10 % most
    / least uncertain voxels), ``error_ratio`` (top / bottom) and ``calibration``: per equal-count bin of
    std, the mean std, mean |error| and RMS error (a well-calibrated model has RMS error ~ mean std).
    """
    from scipy.stats import pearsonr, spearmanr

    std = np.asarray(std, dtype=np.float64)
    abs_error = np.abs(np.asarray(abs_error, dtype=np.float64))
    if std.shape != abs_error.shape:
        raise InputError(f"The uncertainty map {std.shape} and the error map {abs_error.shape} differ in shape.",
                         "Use the uncertainty map written with this prediction.")
    m = np.ones(std.shape, bool) if mask is None else np.asarray(mask) > 0
    if m.shape != std.shape or not m.any():
        raise InputError("The mask is empty or does not match the uncertainty map.", "Use the case's body mask.")
    s, e = std[m], abs_error[m]
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
