"""Image-similarity metrics exactly as the SynthRAD 2023 / 2025 challenges compute them.

Arrays are numpy ``(z, y, x)``; the mask is ``mask > 0``. Definitions (see ``DEFINITIONS``):

* MAE / mean error (bias): over mask voxels, no clipping.
* PSNR 2023: clip to [-1024, 3000] (range 4024); PSNR 2025: clip to [-1024, 3071] (range 4095);
  mask voxels only; ``10 log10(range^2 / MSE)``.
* SSIM 2023: clip [-1024, 3000], outside mask -> -1024, shift +1024; 3D SSIM with a 7x7x7 uniform
  window, sample covariance, K1 0.01, K2 0.03, data range 4024 (scikit-image's defaults, scipy
  ``uniform_filter`` with reflect borders); mean of the SSIM map over mask voxels after cropping
  a 3-voxel border.
* MS-SSIM 2025: outside mask -> -1024, clip [-1024, 3071], shift +1024, range 4095; every axis
  edge-padded to >= 97 voxels (the mask is zero-padded); 5 scales, weights
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); per scale the luminance, contrast and structure maps
  (7^3 uniform window, sample covariance) are each clipped at >= 0 and raised to the scale's weight,
  their product is averaged over the mask after a 3-voxel crop and clipped to [0, 1]; between
  scales a 2x2x2 mean filter then stride-2 subsampling (mask: stride 2). Result: product over scales.
* Tissue MAE by the reference's class: air < -400, soft tissue -400..300, bone > 300 HU.
* Bone Dice: ``pred > 300`` vs ``ref > 300`` inside the mask.
* MR targets (arbitrary units): each image is scaled independently to [0, 1] between its own
  0.5th and 99.5th in-mask percentiles (clipped, outside mask 0), then PSNR (range 1, mask voxels)
  and SSIM (as SSIM 2023 with range 1) are computed: ``psnr_norm``, ``ssim_norm``.

The SSIM and MS-SSIM maps are computed in z-slabs of ``SLAB`` slices, each read with a halo of the filter's
reach, in float64: the values of the whole-volume computation (to rounding, ~1e-15) in bounded memory.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np

from MedTranslateLib.errors import InputError

CT_MIN = -1024.0
CT_MAX_2023 = 3000.0
CT_MAX_2025 = 3071.0
WINDOW = 7
CROP = 3
K1, K2 = 0.01, 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIZE = 97
AIR_MAX_HU = -400.0
BONE_MIN_HU = 300.0
MR_PERCENTILES = (0.5, 99.5)
SLAB = 24  # z-slices per slab of the SSIM / MS-SSIM maps (each read with a halo of the filter's reach)

CT_KEYS = ("mae", "me", "psnr", "psnr_2025", "ssim", "ms_ssim", "mae_air", "mae_soft", "mae_bone", "dice_bone")
MR_KEYS = ("mae", "me", "psnr_norm", "ssim_norm")

DEFINITIONS: dict[str, str] = {
    "mae": "Mean absolute error over mask voxels, no clipping (SynthRAD 2023/2025).",
    "me": "Mean error (synthetic - reference) over mask voxels: the bias.",
    "psnr": "PSNR SynthRAD 2023: both clipped to [-1024, 3000] HU, mask voxels, 10 log10(4024^2 / MSE).",
    "psnr_2025": "PSNR SynthRAD 2025: both clipped to [-1024, 3071] HU, mask voxels, 10 log10(4095^2 / MSE).",
    "ssim": ("SSIM SynthRAD 2023: clip [-1024, 3000], outside mask -1024, shift +1024, 3D SSIM with 7x7x7 "
             "uniform window, sample covariance, K1 0.01, K2 0.03, data range 4024; mean of the SSIM map "
             "over mask voxels after a 3-voxel border crop."),
    "ms_ssim": ("MS-SSIM SynthRAD 2025: outside mask -1024, clip [-1024, 3071], shift +1024, range 4095; axes "
                "edge-padded to >= 97; 5 scales, weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); luminance, "
                "contrast, structure each clipped >= 0 and raised to the weight; masked mean after a 3-voxel "
                "crop per scale; 2x2x2 mean filter + stride 2 between scales; product over scales."),
    "mae_air": "MAE over mask voxels where the reference is air (< -400 HU).",
    "mae_soft": "MAE over mask voxels where the reference is soft tissue (-400..300 HU).",
    "mae_bone": "MAE over mask voxels where the reference is bone (> 300 HU).",
    "dice_bone": "Dice of bone (> 300 HU) in synthetic vs reference, inside the mask.",
    "psnr_norm": ("MR: each image scaled to [0, 1] between its own 0.5th/99.5th in-mask percentiles (clipped, "
                  "outside mask 0); PSNR over mask voxels with range 1."),
    "ssim_norm": "MR: SSIM as SSIM 2023 on the [0, 1]-normalised images with data range 1.",
    "mr_scale": ("MR in `medtranslate evaluate` (intensities without unit): with --model the reference is put on "
                 "that model's output scale (its card's output normalisation), as in the card's metrics; without, "
                 "each image is put on a 0-1000 scale between its own 0.5th/99.5th in-mask percentiles (clipped)."),
}


def _prepare(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes; return the images as they are (each metric takes float64 of the voxels it needs) and a
    boolean mask; empty mask -> InputError."""
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise InputError(f"The synthetic image has shape {pred.shape} but the reference has {ref.shape}.",
                         "Compare images on the same voxel grid (resample the synthetic image onto the reference).")
    if mask is None:
        mask_bool = np.ones(ref.shape, dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != ref.shape:
            raise InputError(f"The mask has shape {mask.shape} but the images have {ref.shape}.",
                             "Use the mask that belongs to this reference image.")
        mask_bool = mask > 0
    if not mask_bool.any():
        raise InputError("The mask is empty: no voxel to evaluate.", "Use a mask that covers the body.")
    return pred, ref, mask_bool


def _values(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The mask voxels of both images, float64."""
    p, r, m = _prepare(pred, ref, mask)
    return p[m].astype(np.float64), r[m].astype(np.float64)


def _mae(pv: np.ndarray, rv: np.ndarray) -> float:
    return float(np.abs(pv - rv).mean())


def _mean_error(pv: np.ndarray, rv: np.ndarray) -> float:
    return float((pv - rv).mean())


def mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error over the mask (no clipping)."""
    return _mae(*_values(pred, ref, mask))


def mean_error(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean of (synthetic - reference) over the mask: positive means the synthetic image is too bright."""
    return _mean_error(*_values(pred, ref, mask))


def _psnr(pv: np.ndarray, rv: np.ndarray, lo: float, hi: float) -> float:
    diff = np.clip(pv, lo, hi) - np.clip(rv, lo, hi)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10((hi - lo) ** 2 / mse)


def psnr_2023(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SynthRAD 2023 PSNR: clip to [-1024, 3000], mask voxels, range 4024."""
    return _psnr(*_values(pred, ref, mask), CT_MIN, CT_MAX_2023)


def psnr_2025(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SynthRAD 2025 PSNR: clip to [-1024, 3071], mask voxels, range 4095."""
    return _psnr(*_values(pred, ref, mask), CT_MIN, CT_MAX_2025)


Moments = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Reader = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def _local_moments(x: np.ndarray, y: np.ndarray) -> Moments:
    """Local means, sample variances and covariance in a 7^3 uniform window (scikit-image's SSIM)."""
    from scipy.ndimage import uniform_filter

    n = WINDOW**x.ndim
    cov_norm = n / (n - 1.0)
    ux = uniform_filter(x, size=WINDOW)
    uy = uniform_filter(y, size=WINDOW)
    vx = cov_norm * (uniform_filter(x * x, size=WINDOW) - ux * ux)
    vy = cov_norm * (uniform_filter(y * y, size=WINDOW) - uy * uy)
    vxy = cov_norm * (uniform_filter(x * y, size=WINDOW) - ux * uy)
    return ux, uy, vx, vy, vxy


def fits_window(shape: tuple[int, ...]) -> bool:
    """Every axis holds the SSIM window (:data:`WINDOW` voxels)."""
    return min(shape) >= WINDOW


def _check_window(shape: tuple[int, ...], what: str) -> None:
    if not fits_window(shape):
        raise InputError(f"The volume {shape} is too small for {what} (every axis needs >= {WINDOW} voxels).",
                         "Evaluate on a larger region.")


def _slabs(depth: int, halo: int) -> Iterator[tuple[int, int, int, int]]:
    """``(lo, hi, start, stop)``: z-slabs ``[start, stop)`` of ``SLAB`` slices, read as ``[lo, hi)`` with ``halo``
    slices more on each side inside the volume (so that the volume's own borders keep their boundary mode)."""
    for start in range(0, depth, SLAB):
        stop = min(start + SLAB, depth)
        yield max(start - halo, 0), min(stop + halo, depth), start, stop


def _reader(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None,
            prepare: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Reader:
    """Reads z-slices ``[lo, hi)`` of ``x`` and ``y`` as float64, through ``prepare(slab, mask_slab)`` if given
    (an element-wise function: the same values as on the whole volume)."""
    def read(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = x[lo:hi].astype(np.float64), y[lo:hi].astype(np.float64)
        if prepare is None:
            return xs, ys
        return prepare(xs, mask[lo:hi]), prepare(ys, mask[lo:hi])
    return read


def _masked_map_mean(read: Reader, mask: np.ndarray, term: Callable[[Moments], np.ndarray]) -> float:
    """Mean over the mask, after a 3-voxel border crop, of ``term`` of the local moments of the two images
    from ``read``; computed slab by slab, each slab read with a halo of the window's reach so that its
    values equal those of the whole volume. NaN when no voxel is left."""
    depth = mask.shape[0]
    inner = tuple(slice(CROP, s - CROP) for s in mask.shape[1:])
    sums, count = [], 0
    for lo, hi, start, stop in _slabs(depth, WINDOW // 2):
        z0, z1 = max(start, CROP), min(stop, depth - CROP)  # the crop along z
        if z1 <= z0:
            continue
        selected = mask[(slice(z0, z1), *inner)]
        if not selected.any():
            continue
        region = (slice(z0 - lo, z1 - lo), *inner)
        values = term(tuple(a[region] for a in _local_moments(*read(lo, hi))))[selected]
        sums.append(float(values.sum(dtype=np.float64)))
        count += values.size
    return math.fsum(sums) / count if count else math.nan


def _ssim_term(data_range: float) -> Callable[[Moments], np.ndarray]:
    """The SSIM map of scikit-image's ``structural_similarity`` from the local moments."""
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2

    def term(moments: Moments) -> np.ndarray:
        ux, uy, vx, vy, vxy = moments
        return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return term


def _clip_2023(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.where(m, np.clip(a, CT_MIN, CT_MAX_2023), CT_MIN) - CT_MIN


def ssim_2023(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SynthRAD 2023 SSIM (masked mean of the 3D SSIM map after a 3-voxel crop)."""
    p, r, m = _prepare(pred, ref, mask)
    _check_window(r.shape, "SSIM")
    return _masked_map_mean(_reader(r, p, m, _clip_2023), m, _ssim_term(CT_MAX_2023 - CT_MIN))


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` edge-padded (about equally on both sides) to at least ``size`` voxels along every axis."""
    deficits = [max(size - s, 0) for s in a.shape]
    if not any(deficits):
        return a
    return np.pad(a, [(d // 2, d - d // 2) for d in deficits], mode="edge")


def _clip_2025(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.clip(np.where(m, a, CT_MIN), CT_MIN, CT_MAX_2025) - CT_MIN


def _ms_ssim_term(weight: float, data_range: float) -> Callable[[Moments], np.ndarray]:
    """l^w c^w s^w of the luminance, contrast and structure maps, each clipped at >= 0."""
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    c3 = c2 / 2.0

    def term(moments: Moments) -> np.ndarray:
        ux, uy, vx, vy, vxy = moments
        sx = np.sqrt(np.maximum(vx, 0.0))
        sy = np.sqrt(np.maximum(vy, 0.0))
        luminance = (2 * ux * uy + c1) / (ux * ux + uy * uy + c1)
        contrast = (2 * sx * sy + c2) / (vx + vy + c2)
        structure = (vxy + c3) / (sx * sy + c3)
        # one power of the product (same value as the product of three powers, 3x fewer powers)
        return (np.maximum(luminance, 0.0) * np.maximum(contrast, 0.0) * np.maximum(structure, 0.0)) ** weight
    return term


def _downsample(read: Reader, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Both images of ``read`` after a 2x2x2 mean of each voxel and its predecessors (zero before the first, as
    the challenge code) and stride-2 subsampling; slab by slab with the predecessor slice as halo."""
    from scipy.ndimage import uniform_filter

    out_shape = tuple((s + 1) // 2 for s in shape)
    out = (np.empty(out_shape), np.empty(out_shape))
    for lo, hi, start, stop in _slabs(shape[0], 1):
        first = start + start % 2  # the first even z of the slab
        for target, slab in zip(out, read(lo, hi)):
            filtered = uniform_filter(slab, size=2, mode="constant", cval=0.0)
            part = filtered[first - lo:stop - lo:2, ::2, ::2]
            target[first // 2:first // 2 + part.shape[0]] = part
    return out


def ms_ssim_2025(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SynthRAD 2025 multi-scale SSIM (5 scales, 7^3 window, masked, product over scales), slab by slab."""
    p, r, m = _prepare(pred, ref, mask)
    data_range = CT_MAX_2025 - CT_MIN
    # the mask is edge-padded like the images (as the challenge's evaluation does): a mask touching the border
    # stays inside it in the padding; padding before the (element-wise) clipping gives the same values
    p, r, m = (_pad_to(a, MS_SSIM_MIN_SIZE) for a in (p, r, m))
    read = _reader(r, p, m, _clip_2025)
    result = 1.0
    for scale, weight in enumerate(MS_SSIM_WEIGHTS):
        if scale > 0:
            read = _reader(*_downsample(read, m.shape))
            m = m[::2, ::2, ::2]
        value = _masked_map_mean(read, m, _ms_ssim_term(weight, data_range))
        if math.isnan(value):
            return math.nan
        result *= min(max(value, 0.0), 1.0)
    return float(result)


def _tissue_mae(pv: np.ndarray, rv: np.ndarray) -> dict[str, float]:
    err = np.abs(pv - rv)
    classes = {
        "mae_air": rv < AIR_MAX_HU,
        "mae_soft": (rv >= AIR_MAX_HU) & (rv <= BONE_MIN_HU),
        "mae_bone": rv > BONE_MIN_HU,
    }
    return {name: float(err[sel].mean()) if sel.any() else math.nan for name, sel in classes.items()}


def tissue_mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE per tissue class of the reference: air (< -400), soft (-400..300), bone (> 300); NaN if absent."""
    return _tissue_mae(*_values(pred, ref, mask))


def _bone_dice(pv: np.ndarray, rv: np.ndarray, threshold: float) -> float:
    bp = pv > threshold
    br = rv > threshold
    total = int(bp.sum()) + int(br.sum())
    if total == 0:
        return math.nan
    return 2.0 * int((bp & br).sum()) / total


def bone_dice(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None, threshold: float = 300.0) -> float:
    """Dice of ``pred > threshold`` vs ``ref > threshold`` inside the mask; NaN when neither has bone."""
    return _bone_dice(*_values(pred, ref, mask), threshold)


def _window(values: np.ndarray) -> tuple[float, float]:
    lo, hi = (float(v) for v in np.percentile(values, MR_PERCENTILES))
    return lo, (hi if hi > lo else lo + 1.0)


def mr_window(array: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The 0.5th and 99.5th percentiles inside the mask (an MR image's own intensity window)."""
    return _window(array[mask])


def _scale_mr(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """``values`` scaled to [0, 1] between the window's ends (clipped)."""
    lo, hi = window
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _psnr_norm(pv: np.ndarray, rv: np.ndarray) -> float:
    return _psnr(_scale_mr(pv, _window(pv)), _scale_mr(rv, _window(rv)), 0.0, 1.0)


def psnr_norm(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """MR PSNR on independently [0, 1]-normalised images (range 1, mask voxels)."""
    return _psnr_norm(*_values(pred, ref, mask))


def ssim_norm(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """MR SSIM on independently [0, 1]-normalised images (outside mask 0; range 1; masked mean after a
    3-voxel crop)."""
    p, r, m = _prepare(pred, ref, mask)
    _check_window(r.shape, "SSIM")
    p_window, r_window = (_window(a[m].astype(np.float64)) for a in (p, r))

    def read(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.where(m[lo:hi], _scale_mr(r[lo:hi].astype(np.float64), r_window), 0.0),
                np.where(m[lo:hi], _scale_mr(p[lo:hi].astype(np.float64), p_window), 0.0))
    return _masked_map_mean(read, m, _ssim_term(1.0))


def _voxel_metrics(pv: np.ndarray, rv: np.ndarray, modality: str) -> dict[str, float]:
    """The metrics of the mask voxels' values alone (all but the SSIMs)."""
    out = {"mae": _mae(pv, rv), "me": _mean_error(pv, rv)}
    if modality == "MR":
        out["psnr_norm"] = _psnr_norm(pv, rv)
        return out
    out["psnr"] = _psnr(pv, rv, CT_MIN, CT_MAX_2023)
    out["psnr_2025"] = _psnr(pv, rv, CT_MIN, CT_MAX_2025)
    out.update(_tissue_mae(pv, rv))
    out["dice_bone"] = _bone_dice(pv, rv, BONE_MIN_HU)
    return out


def compute_metrics(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None,
                    modality: str = "CT") -> dict[str, float]:
    """All metrics for one case: CT keys ``CT_KEYS``, MR keys ``MR_KEYS``. A volume thinner than the SSIM window
    (a slab of under ``WINDOW`` slices) has SSIM NaN; the other metrics do not need a window."""
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise InputError(f"Unknown target modality {modality!r} for evaluation.", "Use CT or MR.")
    p, r, m = _prepare(pred, ref, mask)
    out = _voxel_metrics(p[m].astype(np.float64), r[m].astype(np.float64), modality)
    windowed = fits_window(r.shape)
    if modality == "MR":
        out["ssim_norm"] = ssim_norm(p, r, m) if windowed else math.nan
        return {key: out[key] for key in MR_KEYS}
    out["ssim"] = ssim_2023(p, r, m) if windowed else math.nan
    out["ms_ssim"] = ms_ssim_2025(p, r, m)
    return {key: out[key] for key in CT_KEYS}
