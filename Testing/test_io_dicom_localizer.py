"""A DICOM series whose files share one SeriesInstanceUID but not one slice orientation (a scanner's localizer or
scout images stored in the series): the volume is the slices of its main orientation, with a note saying what was
left out, instead of a refusal that blamed a gantry tilt."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import make_image
from MedTranslateLib.errors import InputError
from MedTranslateLib.io import read_volume, write_volume


def _series(folder, image) -> list:
    write_volume(image, f"{folder}/", modality="MR", description="T1")
    return sorted(folder.glob("*.dcm"))


def _folder_with_localizers(tmp_path, n_axial: int, n_scout: int):
    axial = make_image((n_axial, 24, 28), spacing=(1.0, 1.0, 2.0))
    files = _series(tmp_path / "axial", axial)
    scout_image = make_image((n_scout, 20, 26), seed=3, direction=(0, 0, 1, 1, 0, 0, 0, 1, 0))  # sagittal slices
    scouts = _series(tmp_path / "scout", scout_image)
    main = pydicom.dcmread(files[0])
    for k, path in enumerate(scouts):  # the scanner stored the scouts in the same series
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.StudyInstanceUID = main.SeriesInstanceUID, main.StudyInstanceUID
        ds.FrameOfReferenceUID = main.FrameOfReferenceUID
        ds.save_as(tmp_path / "axial" / f"SCOUT{k:03d}.dcm")
    return tmp_path / "axial", axial


def test_localizer_slices_in_a_series_are_left_out_with_a_note(tmp_path):
    folder, axial = _folder_with_localizers(tmp_path, n_axial=12, n_scout=3)
    image, info = read_volume(folder)
    assert image.GetSize() == axial.GetSize()
    np.testing.assert_allclose(image.GetDirection(), axial.GetDirection(), atol=1e-6)
    assert any("3 slice" in note and "orientation" in note for note in info.notes)
    values = sitk.GetArrayViewFromImage(image)
    assert np.abs(values - sitk.GetArrayViewFromImage(axial)).max() < 0.05


def test_two_orientations_with_as_many_slices_are_refused_as_ambiguous(tmp_path):
    folder, _ = _folder_with_localizers(tmp_path, n_axial=4, n_scout=4)
    with pytest.raises(InputError, match="orientation") as caught:
        read_volume(folder)
    assert "gantry" not in caught.value.message
