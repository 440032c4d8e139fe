"""A NIfTI file named ``.nii.gz`` whose bytes are not gzip-compressed (a browser that undid the server's gzip
encoding but kept the name, a renamed ``.nii``) is a valid volume: ITK reads it, and so must MedTranslate, with the
same checks (declared size, NaN and Inf) as any NIfTI, instead of calling it truncated."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedTranslateLib.errors import InputError
from MedTranslateLib.io import read_volume
from MedTranslateLib.io.data_size import nifti_bytes_per_voxel


def _plain_named_gz(image: sitk.Image, folder) -> tuple:
    plain = folder / "plain.nii"
    sitk.WriteImage(image, str(plain))
    named = folder / "named.nii.gz"
    named.write_bytes(plain.read_bytes())
    return plain, named


def test_an_uncompressed_nifti_named_nii_gz_is_read(tmp_path, small_image):
    plain, named = _plain_named_gz(sitk.Cast(small_image, sitk.sitkInt16), tmp_path)
    image, _ = read_volume(named)
    expected, _ = read_volume(plain)
    assert image.GetSize() == expected.GetSize()
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(expected))
    assert nifti_bytes_per_voxel(named) == 2


def test_nan_in_an_uncompressed_nifti_named_nii_gz_is_found(tmp_path, small_image):
    values = sitk.GetArrayFromImage(small_image)
    values[3, 4, 5] = np.nan
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(small_image)
    _, named = _plain_named_gz(image, tmp_path)
    with pytest.raises(InputError, match="1 NaN"):
        read_volume(named)


def test_a_truncated_uncompressed_nifti_named_nii_gz_is_refused(tmp_path, small_image):
    _, named = _plain_named_gz(small_image, tmp_path)
    named.write_bytes(named.read_bytes()[:5000])
    with pytest.raises(InputError, match="truncated"):
        read_volume(named)
