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
"""

from __future__ import annotations

import math

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
    """Check shapes, return float64 copies and a boolean mask; empty mask -> InputError."""
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
    return pred.astype(np.float64, copy=False), ref.astype(np.float64, copy=False), mask_bool


def mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error over the mask (no clipping)."""
    p, r, m = _prepare(pred, ref, mask)
    return float(np.abs(p[m] - r[m]).mean())


def mean_error(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean of (synthetic - reference) over the mask: positive means the synthetic image is too bright."""
    p, r, m = _prepare(pred, ref, mask)
    return float((p[m] - r[m]).mean())


def _psnr(p: np.ndarray, r: np.ndarray, m: np.ndarray, lo: float, hi: float) -> float:
    diff = np.clip(p[m], lo, hi) - np.clip(r[m], lo, hi)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10((hi - lo) ** 2 / mse)


def psnr_2023(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SynthRAD 2023 PSNR: clip to [-1024, 3000], mask voxels, range 4024."""
    return _psnr(*_prepare(pred, ref, mask), CT_MIN, CT_MAX_2023)


def psnr_2025(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SynthRAD 2025 PSNR: clip to [-1024, 3071], mask voxels, range 4095."""
    return _psnr(*_prepare(pred, ref, mask), CT_MIN, CT_MAX_2025)


def _local_moments(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
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


def _crop(a: np.ndarray, width: int = CROP) -> np.ndarray:
    return a[tuple(slice(width, s - width) for s in a.shape)]


def _check_window(shape: tuple[int, ...], what: str) -> None:
    if min(shape) < WINDOW:
        raise InputError(f"The volume {shape} is too small for {what} (every axis needs >= {WINDOW} voxels).",
                         "Evaluate on a larger region.")


def ssim_map(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    """The SSIM map of scikit-image's ``structural_similarity`` (7^3 uniform window, sample covariance)."""
    _check_window(x.shape, "SSIM")
    ux, uy, vx, vy, vxy = _local_moments(x, y)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def _masked_crop_mean(values: np.ndarray, mask: np.ndarray) -> float:
    selected = _crop(values)[_crop(mask)]
    return float(selected.mean(dtype=np.float64)) if selected.size else math.nan


def ssim_2023(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SynthRAD 2023 SSIM (masked mean of the 3D SSIM map after a 3-voxel crop)."""
    p, r, m = _prepare(pred, ref, mask)
    p = np.where(m, np.clip(p, CT_MIN, CT_MAX_2023), CT_MIN) - CT_MIN
    r = np.where(m, np.clip(r, CT_MIN, CT_MAX_2023), CT_MIN) - CT_MIN
    return _masked_crop_mean(ssim_map(r, p, CT_MAX_2023 - CT_MIN), m)


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` edge-padded (about equally on both sides) to at least ``size`` voxels along every axis."""
    deficits = [max(size - s, 0) for s in a.shape]
    if not any(deficits):
        return a
    return np.pad(a, [(d // 2, d - d // 2) for d in deficits], mode="edge")


def ms_ssim_2025(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SynthRAD 2025 multi-scale SSIM (5 scales, 7^3 window, masked, product over scales)."""
    from scipy.ndimage import uniform_filter

    p, r, m = _prepare(pred, ref, mask)
    data_range = CT_MAX_2025 - CT_MIN
    p = np.clip(np.where(m, p, CT_MIN), CT_MIN, CT_MAX_2025) - CT_MIN
    r = np.clip(np.where(m, r, CT_MIN), CT_MIN, CT_MAX_2025) - CT_MIN
    # the mask is edge-padded like the images (as the challenge's evaluation does): a mask touching the border
    # stays inside it in the padding
    p, r, m = (_pad_to(a, MS_SSIM_MIN_SIZE) for a in (p, r, m))
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    c3 = c2 / 2.0
    result = 1.0
    for scale, weight in enumerate(MS_SSIM_WEIGHTS):
        if scale > 0:  # 2x2x2 mean of each voxel and its predecessors, zero before the first (challenge code)
            p = uniform_filter(p, size=2, mode="constant", cval=0.0)[::2, ::2, ::2]
            r = uniform_filter(r, size=2, mode="constant", cval=0.0)[::2, ::2, ::2]
            m = m[::2, ::2, ::2]
        ux, uy, vx, vy, vxy = _local_moments(r, p)
        sx = np.sqrt(np.maximum(vx, 0.0))
        sy = np.sqrt(np.maximum(vy, 0.0))
        luminance = (2 * ux * uy + c1) / (ux * ux + uy * uy + c1)
        contrast = (2 * sx * sy + c2) / (vx + vy + c2)
        structure = (vxy + c3) / (sx * sy + c3)
        # l^w c^w s^w of the terms clipped at >= 0, computed as one power (same value, 3x fewer powers)
        terms = (np.maximum(luminance, 0.0) * np.maximum(contrast, 0.0) * np.maximum(structure, 0.0)) ** weight
        value = _masked_crop_mean(terms, m)
        if math.isnan(value):
            return math.nan
        result *= min(max(value, 0.0), 1.0)
    return float(result)


def tissue_mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE per tissue class of the reference: air (< -400), soft (-400..300), bone (> 300); NaN if absent."""
    p, r, m = _prepare(pred, ref, mask)
    pv, rv = p[m], r[m]
    err = np.abs(pv - rv)
    classes = {
        "mae_air": rv < AIR_MAX_HU,
        "mae_soft": (rv >= AIR_MAX_HU) & (rv <= BONE_MIN_HU),
        "mae_bone": rv > BONE_MIN_HU,
    }
    return {name: float(err[sel].mean()) if sel.any() else math.nan for name, sel in classes.items()}


def bone_dice(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None, threshold: float = 300.0) -> float:
    """Dice of ``pred > threshold`` vs ``ref > threshold`` inside the mask; NaN when neither has bone."""
    p, r, m = _prepare(pred, ref, mask)
    bp = (p > threshold) & m
    br = (r > threshold) & m
    total = int(bp.sum()) + int(br.sum())
    if total == 0:
        return math.nan
    return 2.0 * int((bp & br).sum()) / total


def mr_window(array: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The 0.5th and 99.5th percentiles inside the mask (an MR image's own intensity window)."""
    lo, hi = (float(v) for v in np.percentile(array[mask], MR_PERCENTILES))
    return lo, (hi if hi > lo else lo + 1.0)


def normalize_mr(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] between the 0.5th and 99.5th percentiles inside the mask; outside mask 0."""
    lo, hi = mr_window(array, mask)
    return np.where(mask, np.clip((array - lo) / (hi - lo), 0.0, 1.0), 0.0)


def psnr_norm(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """MR PSNR on independently [0, 1]-normalised images (range 1, mask voxels)."""
    p, r, m = _prepare(pred, ref, mask)
    return _psnr(normalize_mr(p, m), normalize_mr(r, m), m, 0.0, 1.0)


def ssim_norm(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """MR SSIM on independently [0, 1]-normalised images (range 1; masked mean after 3-voxel crop)."""
    p, r, m = _prepare(pred, ref, mask)
    return _masked_crop_mean(ssim_map(normalize_mr(r, m), normalize_mr(p, m), 1.0), m)


def compute_metrics(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None,
                    modality: str = "CT") -> dict[str, float]:
    """All metrics for one case: CT keys ``CT_KEYS``, MR keys ``MR_KEYS``."""
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise InputError(f"Unknown target modality {modality!r} for evaluation.", "Use CT or MR.")
    p, r, m = _prepare(pred, ref, mask)
    out: dict[str, float] = {"mae": mae(p, r, m), "me": mean_error(p, r, m)}
    if modality == "MR":
        out["psnr_norm"] = psnr_norm(p, r, m)
        out["ssim_norm"] = ssim_norm(p, r, m)
        return out
    out["psnr"] = psnr_2023(p, r, m)
    out["psnr_2025"] = psnr_2025(p, r, m)
    out["ssim"] = ssim_2023(p, r, m)
    out["ms_ssim"] = ms_ssim_2025(p, r, m)
    out.update(tissue_mae(p, r, m))
    out["dice_bone"] = bone_dice(p, r, m)
    return out
