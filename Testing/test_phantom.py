"""The procedural head phantom: reproducible, varied, physically plausible."""

import numpy as np
import SimpleITK as sitk

from MedTranslateLib.phantom import TISSUES, make_head_phantom


def arrays(p):
    return {k: sitk.GetArrayFromImage(getattr(p, k)) for k in ("t1", "t2", "ct", "mask", "labels")}


def test_same_seed_same_images_other_seed_other_head():
    small = dict(shape_zyx=(24, 40, 32), spacing_mm=(5.0, 5.0, 7.0))
    a, b, c = (arrays(make_head_phantom(seed=s, **small)) for s in (1, 1, 2))
    for key in a:
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["labels"], c["labels"])


def test_shared_grid_and_tissue_values():
    p = make_head_phantom(seed=5)
    for image in (p.t2, p.ct, p.mask, p.labels):
        assert image.GetSize() == p.t1.GetSize()
        assert image.GetSpacing() == p.t1.GetSpacing() == (2.0, 2.0, 3.0)
        assert image.GetOrigin() == p.t1.GetOrigin()
    a = arrays(p)
    labels, ct = a["labels"], a["ct"]
    assert set(np.unique(labels)) >= {0, 1, 2, 3, 5, 6, 7}
    assert np.median(ct[labels == 0]) < -950          # air
    assert np.median(ct[labels == 3]) > 700           # cortical bone
    assert -150 < np.median(ct[labels == 7]) < 150    # white matter
    # MR: bone and air are both dark (the hard part of MR -> CT), CSF is bright on T2 and dark on T1
    assert np.median(a["t1"][labels == 3]) < 0.5 * np.median(a["t1"][labels == 7])
    assert np.median(a["t2"][labels == 5]) > 1.5 * np.median(a["t2"][labels == 7])
    assert np.median(a["t1"][labels == 5]) < 0.5 * np.median(a["t1"][labels == 7])
    assert a["mask"].dtype == np.uint8 and a["mask"][labels > 0].all()


def test_mr_has_noise_and_bias_ct_is_clipped():
    a = arrays(make_head_phantom(shape_zyx=(28, 48, 40), spacing_mm=(4.0, 4.0, 6.0), seed=7))
    wm = a["t1"][a["labels"] == 7]
    assert wm.std() > 0.01 * wm.mean()                # noise + bias field
    assert a["ct"].min() >= -1024 and a["ct"].max() <= 3071
    assert len(TISSUES) == 10
