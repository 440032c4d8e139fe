"""A procedural, seeded, paired head phantom: one tissue label map rendered as T1- and T2-weighted MR
and as CT in Hounsfield units, with partial volume, MR bias field and noise.

It is the built-in sample of MedTranslate: the demo translates it, tests use it, and the bundled demo
model is trained on it. Every seed gives a different head (size, shape, skull thickness, ventricles,
sinuses); the same seed always gives the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

#: label -> (name, CT HU, T1 signal, T2 signal). MR signals are arbitrary units before bias and noise.
TISSUES: dict[int, tuple[str, float, float, float]] = {
    0: ("air", -1000.0, 0.0, 0.0),
    1: ("scalp fat", -90.0, 850.0, 520.0),
    2: ("muscle / skin", 45.0, 420.0, 300.0),
    3: ("cortical bone", 1350.0, 60.0, 40.0),
    4: ("marrow (diploe)", 420.0, 560.0, 380.0),
    5: ("CSF", 8.0, 140.0, 1500.0),
    6: ("grey matter", 40.0, 480.0, 880.0),
    7: ("white matter", 28.0, 690.0, 640.0),
    8: ("sinus air", -950.0, 15.0, 10.0),
    9: ("vitreous (eye)", 10.0, 150.0, 1350.0),
}


@dataclass
class HeadPhantom:
    """The rendered phantom; every image shares one grid (float32, LPS, SimpleITK)."""

    t1: "sitk.Image"
    t2: "sitk.Image"
    ct: "sitk.Image"
    mask: "sitk.Image"
    labels: "sitk.Image"

    def modality(self, name: str) -> "sitk.Image":
        """The image of ``name`` (``T1``, ``T2``, ``MR`` (= T1), ``CT``)."""
        key = {"MR": "t1", "T1": "t1", "T2": "t2", "CT": "ct"}.get(name.upper())
        if key is None:
            raise ValueError(f"the phantom has no modality {name!r}; choose T1, T2, MR or CT")
        return getattr(self, key)


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (Gaussian-filtered white noise, normalised)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (np.abs(field).max() + 1e-6)


def _label_map(shape_zyx: tuple[int, int, int], spacing: float, rng: np.random.Generator) -> np.ndarray:
    """The tissue labels on a (fine) grid, as nested deformed ellipsoids."""
    nz, ny, nx = shape_zyx
    z, y, x = np.meshgrid(
        (np.arange(nz) - (nz - 1) / 2) * spacing,
        (np.arange(ny) - (ny - 1) / 2) * spacing,
        (np.arange(nx) - (nx - 1) / 2) * spacing,
        indexing="ij",
    )
    z, y, x = z.astype(np.float32), y.astype(np.float32), x.astype(np.float32)
    # head semi-axes in mm (x: left-right, y: anterior-posterior, z: superior-inferior), per-subject variation
    ax, ay, az = (np.array([72.0, 90.0, 85.0]) * rng.uniform(0.9, 1.08, 3)).astype(np.float32)
    y_shift = np.float32(rng.uniform(-4, 4))
    deform = 1.0 + 0.04 * _smooth_noise(z.shape, rng, sigma=max(4.0, 10.0 / spacing))
    r = np.sqrt((x / ax) ** 2 + ((y - y_shift) / ay) ** 2 + (z / az) ** 2) * deform  # 1 = skin surface

    skin = rng.uniform(0.035, 0.05)
    fat = skin + rng.uniform(0.03, 0.05)
    bone_out = fat + rng.uniform(0.02, 0.03)
    diploe_out = bone_out + rng.uniform(0.025, 0.04)
    bone_in = diploe_out + rng.uniform(0.015, 0.025)
    csf = bone_in + rng.uniform(0.02, 0.035)
    labels = np.zeros(z.shape, dtype=np.uint8)
    labels[r < 1.0] = 2
    labels[r < 1.0 - skin] = 1
    labels[r < 1.0 - fat] = 3
    labels[r < 1.0 - bone_out] = 4
    labels[r < 1.0 - diploe_out] = 3
    labels[r < 1.0 - bone_in] = 5
    # cortex: grey matter with a folded inner boundary to white matter
    folds = 0.05 * _smooth_noise(z.shape, rng, sigma=max(1.5, 3.0 / spacing))
    labels[r < 1.0 - csf] = 6
    labels[r < 1.0 - csf - 0.09 + folds] = 7
    # lateral ventricles: two ellipsoids of CSF
    vent = rng.uniform(0.8, 1.3)
    for side in (-1.0, 1.0):
        rv = np.sqrt(((x - side * 11.0) / (7.0 * vent)) ** 2 + ((y + 5.0) / (26.0 * vent)) ** 2 + ((z - 8.0) / (12.0 * vent)) ** 2)
        labels[rv < 1.0] = 5
    # eyes (anterior, lower) and sinuses (air pockets between the eyes, inside bone)
    for side in (-1.0, 1.0):
        re = np.sqrt(((x - side * 30.0) / 11.0) ** 2 + ((y - y_shift - ay * 0.8) / 11.0) ** 2 + ((z + 25.0) / 11.0) ** 2)
        labels[re < 1.0] = 9
    sinus_size = rng.uniform(0.7, 1.2)
    rs = np.sqrt((x / (10.0 * sinus_size)) ** 2 + ((y - y_shift - ay * 0.72) / (9.0 * sinus_size)) ** 2 + ((z + 42.0) / (12.0 * sinus_size)) ** 2)
    labels[rs < 1.35] = 3
    labels[rs < 1.0] = 8
    return labels


def make_head_phantom(
    shape_zyx: tuple[int, int, int] = (56, 96, 80),
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 3.0),
    seed: int = 0,
    noise: float = 0.02,
    bias: float = 0.15,
) -> HeadPhantom:
    """Render a paired head phantom.

    ``shape_zyx`` and ``spacing_mm`` (x, y, z) set the grid; the head fills about the same physical
    extent (~160 x 200 x 180 mm) whatever the grid. Partial volume comes from rendering at twice the
    resolution and averaging; MR gets a smooth multiplicative bias field and Rician noise
    (``noise`` relative to white matter); CT gets Gaussian noise of 12 HU.
    """
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    sx, sy, sz = spacing_mm
    fine = (shape_zyx[0] * 2, shape_zyx[1] * 2, shape_zyx[2] * 2)
    # render on an isotropic fine grid per axis by scaling coordinates: use anisotropic spacing by stretching
    labels_fine = _label_map_aniso(fine, (sx / 2, sy / 2, sz / 2), rng)
    props = np.array([[t[1], t[2], t[3]] for _, t in sorted(TISSUES.items())], dtype=np.float32)
    volumes = []
    for channel in range(3):
        fine_map = props[labels_fine, channel]
        coarse = fine_map.reshape(shape_zyx[0], 2, shape_zyx[1], 2, shape_zyx[2], 2).mean(axis=(1, 3, 5))
        volumes.append(coarse.astype(np.float32))
    ct, t1, t2 = volumes
    labels = labels_fine[::2, ::2, ::2]
    body = labels_fine.reshape(shape_zyx[0], 2, shape_zyx[1], 2, shape_zyx[2], 2).max(axis=(1, 3, 5)) > 0
    body = ndimage.binary_fill_holes(body)

    bias_field = np.exp(bias * _smooth_noise(shape_zyx, rng, sigma=max(shape_zyx) / 4)).astype(np.float32)
    sigma_mr = noise * TISSUES[7][2]

    def mr_noise(img: np.ndarray) -> np.ndarray:
        real = img * bias_field + rng.normal(0, sigma_mr, img.shape).astype(np.float32)
        imag = rng.normal(0, sigma_mr, img.shape).astype(np.float32)
        return np.sqrt(real**2 + imag**2).astype(np.float32)

    t1 = mr_noise(t1)
    t2 = mr_noise(t2)  # same bias field, its own noise
    ct = np.clip(ct + rng.normal(0, 12.0, ct.shape).astype(np.float32), -1024, 3071).astype(np.float32)

    def to_image(arr: np.ndarray) -> "sitk.Image":
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((float(sx), float(sy), float(sz)))
        img.SetOrigin(tuple(-(n - 1) / 2 * s for n, s in zip(shape_zyx[::-1], spacing_mm)))
        return img

    return HeadPhantom(
        t1=to_image(t1), t2=to_image(t2), ct=to_image(ct),
        mask=to_image(body.astype(np.uint8)), labels=to_image(labels.astype(np.uint8)),
    )


def _label_map_aniso(shape_zyx: tuple[int, int, int], spacing_xyz: tuple[float, float, float],
                     rng: np.random.Generator) -> np.ndarray:
    """``_label_map`` on a grid with anisotropic spacing (coordinates scaled per axis)."""
    sx, sy, sz = spacing_xyz
    base = min(spacing_xyz)
    # Build on an isotropic grid at the finest spacing covering the same extent, then sample it.
    iso_shape = tuple(int(round(n * s / base)) for n, s in zip(shape_zyx, (sz, sy, sx)))
    iso = _label_map(iso_shape, base, rng)
    idx = [np.clip(np.round((np.arange(n) + 0.5) * s / base - 0.5).astype(int), 0, m - 1)
           for n, s, m in zip(shape_zyx, (sz, sy, sx), iso_shape)]
    return iso[np.ix_(*idx)]


def write_phantom_dataset(root: str, seeds: range, **kwargs: Any) -> list[str]:
    """Write phantoms as a paired folder dataset: ``root/phantom_<seed>/{t1,t2,ct,mask}.nii.gz``; ``kwargs`` go
    to :func:`make_head_phantom`."""
    import os

    import SimpleITK as sitk

    from MedTranslateLib.errors import OutputError
    from MedTranslateLib.io.itk_paths import itk_path

    cases = []
    for seed in seeds:
        phantom = make_head_phantom(seed=seed, **kwargs)
        case = os.path.join(root, f"phantom_{seed:04d}")
        os.makedirs(case, exist_ok=True)
        for name in ("t1", "t2", "ct", "mask"):
            sitk.WriteImage(getattr(phantom, name), itk_path(os.path.join(case, f"{name}.nii.gz"), OutputError))
        cases.append(case)
    return cases


if __name__ == "__main__":  # python -m MedTranslateLib.phantom OUT_DIR FIRST_SEED LAST_SEED
    import sys

    out_dir, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for path in write_phantom_dataset(out_dir, range(first, last + 1)):
        print(path)
