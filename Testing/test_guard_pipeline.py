"""Guards for writing results: int16 output never wraps around, and two outputs sharing a data file are refused."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedTranslateLib.errors import OutputError
from MedTranslateLib.pipeline import as_output_type, check_outputs


def _ct(top: float) -> sitk.Image:
    values = np.full((2, 2, 2), -1024.0, dtype=np.float32)
    values[0, 0, 0] = top
    return sitk.GetImageFromArray(values)


def test_int16_limit_is_exact() -> None:
    assert as_output_type(_ct(32767.2), "int16", "CT").GetPixelID() == sitk.sitkInt16
    assert sitk.GetArrayViewFromImage(as_output_type(_ct(32767.2), "int16", "CT")).max() == 32767
    # 32767.6 rounds to 32768, which int16 would wrap to -32768
    assert as_output_type(_ct(32767.6), "auto", "CT").GetPixelID() == sitk.sitkFloat32
    with pytest.raises(OutputError):
        as_output_type(_ct(32767.6), "int16", "CT")


def test_outputs_sharing_a_data_file_are_refused(tmp_path) -> None:
    # sct.mhd and sct.nhdr both keep their voxels in sct.raw
    source = tmp_path / "in.nii.gz"
    source.write_bytes(b"")
    with pytest.raises(OutputError, match="same file"):
        check_outputs([source], [tmp_path / "sct.mhd", tmp_path / "sct.nhdr"])
