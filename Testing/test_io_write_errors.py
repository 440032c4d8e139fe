"""An output that cannot be written (a full disk) is one clear line about the path the user gave: pydicom wraps the
OSError of a failed DICOM write in a new one whose text holds a whole traceback, and ITK's message named the hidden
staging file (``.out.mha.x1y2z3.partial/out.mha``) instead of the output."""

from __future__ import annotations

import errno
import os

import pytest

from MedTranslateLib.errors import OutputError
from MedTranslateLib.io import dicom, volumes, write_volume


def _disk_full_in_pydicom(ds, path) -> None:
    """What pydicom's writer raises when the disk fills while it writes the pixel data."""
    from pydicom.tag import Tag, tag_in_exception

    with tag_in_exception(Tag(0x7FE0, 0x0010)):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_dicom_is_one_clear_line(tmp_path, small_image, monkeypatch):
    monkeypatch.setattr(dicom, "_save", _disk_full_in_pydicom)
    with pytest.raises(OutputError) as caught:
        write_volume(small_image, f"{tmp_path / 'series'}/", modality="MR")
    message = caught.value.message
    assert os.strerror(errno.ENOSPC) in message
    assert "Traceback" not in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["out.mha", "out.nrrd", "out.nii.gz"])
def test_an_itk_write_error_names_the_output_not_the_staging_file(tmp_path, small_image, monkeypatch, name):
    def full_disk(image, path, *args):
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: /src/itkMetaImageIO.cxx:1234:\n"
                           f"ITK ERROR: MetaImageIO(0x55d0c0ffee00): File cannot be written: {path}")

    monkeypatch.setattr(volumes.sitk, "WriteImage", full_disk)
    with pytest.raises(OutputError) as caught:
        write_volume(small_image, tmp_path / name, modality="MR")
    message = caught.value.message
    assert f"File cannot be written: {tmp_path / name}" in message and ".partial" not in message
    assert list(tmp_path.iterdir()) == []
