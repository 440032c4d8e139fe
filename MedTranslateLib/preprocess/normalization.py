"""Intensity normalisation to and from the network range [-1, 1] (the only implementation: training,
inference and evaluation all call these functions).

Specs (``model.json`` -> ``normalization.input`` / ``normalization.output``):

- ``clip``: ``range: [lo, hi]`` maps linearly to [-1, 1]; values outside are clipped.
- ``percentile``: ``percentiles: [p_lo, p_hi]`` of the volume (inside the body mask when ``within_mask``)
  map to [-1, 1]; values beyond are clipped to [-1, 1] (so background below ``p_lo`` becomes exactly -1
  and bright outliers above ``p_hi`` saturate at 1).
- ``zscore``: ``(x - mean) / std`` inside the mask, divided by 3 and clipped to [-1, 1] (3 sd -> 1).

Output specs add ``background`` (physical value outside the body) and, for ``percentile`` / ``zscore``
targets, ``output_range``: the physical range that [-1, 1] maps back to (the target's own statistics are
unknown at inference time). All work is done in float32.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from MedTranslateLib.errors import ModelError

METHODS = ("clip", "percentile", "zscore")
_EPS = 1e-6


def _method(spec: Mapping[str, Any]) -> str:
    method = spec.get("method")
    if method not in METHODS:
        raise ModelError(f"Unknown normalisation method {method!r} in the model card.",
                         f"Use one of {', '.join(METHODS)}.")
    return str(method)


def _pair(spec: Mapping[str, Any], key: str) -> tuple[float, float]:
    value = spec.get(key)
    if value is None or len(value) != 2:
        raise ModelError(f"The {spec.get('method')} normalisation spec needs {key!r} as [low, high].",
                         f"Add \"{key}\": [low, high] to the model card's normalization spec.")
    lo, hi = float(value[0]), float(value[1])
    if not hi > lo:
        raise ModelError(f"Normalisation {key} {list(value)} is empty or reversed.",
                         "Give [low, high] with high > low.")
    return lo, hi


def check_spec(spec: Mapping[str, Any], role: str) -> None:
    """Raise :class:`ModelError` when a spec cannot work: an unknown method, a missing, empty or reversed range,
    or (``role`` "output") a percentile / zscore target without the ``output_range`` it maps back to. Run when a
    card is read and before training, so a package that could never translate is refused before it is used."""
    method = _method(spec)
    if method == "clip":
        _pair(spec, "range")
    elif method == "percentile":
        _pair(spec, "percentiles")
    if role == "output":
        if method != "clip":
            _inverse_bounds(spec, None)
        background = spec.get("background")
        if background is not None and not np.isfinite(float(background)):
            raise ModelError(f"The output background {background!r} is not a finite number.",
                             "Give the physical value written outside the body, e.g. -1024 for CT.")


def _linear_to_unit(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 copy of ``array`` with lo -> -1 and hi -> 1, clipped to [-1, 1]."""
    out = np.array(array, dtype=np.float32, copy=True)
    out -= np.float32(lo)
    out *= np.float32(2.0 / (hi - lo))
    out -= np.float32(1.0)
    np.clip(out, -1.0, 1.0, out=out)
    return out


def _unit_to_linear(array: np.ndarray, lo: float, hi: float, clip: bool = True) -> np.ndarray:
    """float32 copy of ``array`` with -1 -> lo and 1 -> hi (clipped to [-1, 1] first when ``clip``)."""
    out = np.array(array, dtype=np.float32, copy=True)
    if clip:
        np.clip(out, -1.0, 1.0, out=out)
    out += np.float32(1.0)
    out *= np.float32((hi - lo) / 2.0)
    out += np.float32(lo)
    return out


def _statistics_values(array: np.ndarray, mask: np.ndarray | None, use_mask: bool) -> np.ndarray:
    """The voxel values the statistics are computed on (the body when a non-empty mask is given)."""
    if use_mask and mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != array.shape:
            raise ValueError(f"mask shape {mask.shape} differs from array shape {array.shape}")
        if mask.any():
            return np.asarray(array[mask], dtype=np.float32)
    return np.asarray(array, dtype=np.float32).ravel()


def mean_std(values: np.ndarray, chunk: int = 1 << 20) -> tuple[float, float]:
    """Mean and (population) standard deviation of a 1D float32 array, accumulated in float64 chunk by
    chunk (no float64 copy of the whole array)."""
    count = values.size
    total = sum(float(np.sum(values[i:i + chunk], dtype=np.float64)) for i in range(0, count, chunk))
    mean = total / count
    squares = 0.0
    for i in range(0, count, chunk):
        part = values[i:i + chunk].astype(np.float64) - mean
        squares += float(np.dot(part, part))
    return mean, (squares / count) ** 0.5


def normalize(array: np.ndarray, mask: np.ndarray | None, spec: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
    """Map ``array`` to [-1, 1] with ``spec``; returns (float32 array, the parameters actually used).

    The parameters are JSON-serialisable floats: ``{"lo", "hi"}`` for clip and percentile (the physical
    values that became -1 and 1), ``{"mean", "std"}`` for zscore.
    """
    method = _method(spec)
    if method == "clip":
        lo, hi = _pair(spec, "range")
        return _linear_to_unit(array, lo, hi), {"method": method, "lo": lo, "hi": hi}
    if method == "percentile":
        p_lo, p_hi = _pair(spec, "percentiles")
        values = _statistics_values(array, mask, bool(spec.get("within_mask", True)))
        lo, hi = (float(v) for v in np.percentile(values, [p_lo, p_hi]))
        if hi - lo <= _EPS * max(abs(lo), abs(hi)):  # relative: an MR stored in units of 1e-9 is no constant
            hi = lo + 1.0  # constant body: keep the map defined (the body becomes -1)
        return _linear_to_unit(array, lo, hi), {"method": method, "lo": lo, "hi": hi,
                                                "percentiles": [p_lo, p_hi]}
    values = _statistics_values(array, mask, bool(spec.get("within_mask", True)))
    mean, std = mean_std(values)
    if std <= _EPS * abs(mean):  # relative, as for percentiles
        std = 1.0
    # x/3 after standardising == linear map with mean - 3 sd -> -1 and mean + 3 sd -> 1
    out = _linear_to_unit(array, mean - 3.0 * std, mean + 3.0 * std)
    return out, {"method": method, "mean": mean, "std": std}


def _inverse_bounds(spec: Mapping[str, Any], params: Mapping[str, Any] | None) -> tuple[float, float]:
    """The physical values that -1 and 1 map back to."""
    method = _method(spec)
    if method == "clip":
        return _pair(spec, "range")
    if params is not None:
        if method == "percentile":
            return float(params["lo"]), float(params["hi"])
        mean, std = float(params["mean"]), float(params["std"])
        return mean - 3.0 * std, mean + 3.0 * std
    if spec.get("output_range") is None:
        raise ModelError(f"The output normalisation ({method}) has no output_range, so the prediction "
                         "cannot be mapped back to physical intensities.",
                         "Add \"output_range\": [low, high] to normalization.output in model.json.")
    return _pair(spec, "output_range")


def denormalize(array: np.ndarray, spec: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> np.ndarray:
    """Map a network-range array back to physical intensities (float32).

    ``clip``: [-1, 1] -> ``range``. ``percentile`` / ``zscore``: with ``params`` (from :func:`normalize`)
    the exact inverse of that normalisation; without, [-1, 1] -> the spec's ``output_range``.
    Values outside [-1, 1] are clipped first (the network range is [-1, 1]).
    """
    lo, hi = _inverse_bounds(spec, params)
    return _unit_to_linear(array, lo, hi, clip=True)


def output_to_unit(array: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`denormalize` without parameters: a model output in the spec's physical range
    (``range`` for clip, ``output_range`` otherwise) back to network units [-1, 1] (clipped)."""
    lo, hi = _inverse_bounds(spec, None)
    return _linear_to_unit(array, lo, hi)
