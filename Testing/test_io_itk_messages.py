"""Errors from ITK reach the user as one clear line: no C++ object addresses or ``itk::ERROR`` prefixes in the
message, no ITK warning printed beside it, and a folder of volume files given as a DICOM folder says what to do."""

from __future__ import annotations

import re

import pytest

from MedTranslateLib.cli.main import main
from MedTranslateLib.errors import InputError
from MedTranslateLib.io import read_volume, write_volume
from MedTranslateLib.io.itk_messages import itk_reason

NRRD_ERROR = ('Exception thrown in SimpleITK ImageFileReader_ReadImageInformation: /tmp/SimpleITK-build/ITK/Modules/'
              'IO/NRRD/src/itkNrrdImageIO.cxx:410:\nitk::ERROR: NrrdImageIO(0x555660018580): ReadImageInformation: '
              'Error reading bad/g.nrrd:\n[nrrd] nrrdLoad: trouble reading "bad/g.nrrd"\n[nrrd] nrrdRead: trouble\n'
              '[nrrd] _nrrdRead: couldn\'t parse "garbage" as magic or beginning of any recognized format\n')
META_ERROR = ('Exception thrown in SimpleITK ImageFileReader_ReadImageInformation: /tmp/SimpleITK-build/ITK/Modules/'
              'IO/Meta/src/itkMetaImageIO.cxx:102:\nITK ERROR: MetaImageIO(0x555660174c80): File cannot be read: '
              'bad/g.mha for reading.\nReason: Success')


def test_the_reason_of_an_nrrd_error_is_teems_own_without_addresses():
    reason = itk_reason(RuntimeError(NRRD_ERROR))
    assert reason == 'couldn\'t parse "garbage" as magic or beginning of any recognized format'


def test_the_reason_of_an_itk_error_drops_the_class_and_its_address():
    assert itk_reason(RuntimeError(META_ERROR)) == "File cannot be read: bad/g.mha for reading."


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_a_garbage_file_is_refused_without_addresses_in_the_message(tmp_path, suffix):
    path = tmp_path / f"g{suffix}"
    path.write_text("garbage\n")
    with pytest.raises(InputError) as caught:
        read_volume(path)
    assert not re.search(r"0x[0-9a-f]{4,}|itk::|ITK ERROR", caught.value.message)


def test_a_folder_of_volume_files_is_refused_quietly_with_what_to_do(tmp_path, small_image, capfd):
    folder = tmp_path / "volumes"
    folder.mkdir()
    for name in ("a", "b"):
        write_volume(small_image, folder / f"{name}.nii.gz", modality="MR")
    capfd.readouterr()
    with pytest.raises(InputError) as caught:
        read_volume(folder)
    assert "a.nii.gz" in caught.value.message and "one input each" in caught.value.message
    assert capfd.readouterr().err == ""  # ITK's "WARNING: ... No Series were found" is not printed


def test_the_command_line_shows_one_error_for_a_folder_without_dicom(tmp_path, small_image, capfd):
    folder = tmp_path / "volumes"
    folder.mkdir()
    write_volume(small_image, folder / "a.nii.gz", modality="MR")
    capfd.readouterr()
    assert main(["translate", str(folder), "-m", "mr2ct-phantom-unet2d", "-o", str(tmp_path / "o.nii.gz"),
                 "--progress", "none"]) == 3
    err = capfd.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "WARNING" not in err
