"""NIfTI output names that ITK's NIfTI writer would cut short: it stops a name at an inner ``.nii``, ``.img`` or
``.hdr`` (``case.nii.gz.nii.gz`` became ``case.nii.gz``, ``scan.img.nii.gz`` an Analyze pair), so the file asked for
was never written and the run ended in a FileNotFoundError traceback after the whole translation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedTranslateLib.cli.main import main
from MedTranslateLib.io import read_volume, write_volume
from packages import make_untrained_package

NAMES = ["case.nii.gz.nii.gz", "case.nii.nii", "scan.img.nii.gz", "scan.hdr.nii", "T1.nii.NII.GZ"]


@pytest.mark.parametrize("name", NAMES)
def test_a_nifti_name_with_an_inner_suffix_is_written_as_asked(tmp_path, small_image, name):
    target = tmp_path / name
    write_volume(small_image, target, modality="MR")
    assert [p.name for p in tmp_path.iterdir()] == [name]
    image, _ = read_volume(target)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(small_image))


def test_the_command_line_writes_such_a_name(tmp_path, small_image, capsys):
    model = make_untrained_package(tmp_path / "model", "unet", "2d")
    source = tmp_path / "in.nii.gz"
    write_volume(small_image, source, modality="MR")
    output = tmp_path / "in.nii.gz.nii.gz"
    assert main(["translate", str(source), "-m", str(model), "-o", str(output), "--progress", "none"]) == 0
    assert read_volume(output)[0].GetSize() == small_image.GetSize()
