"""Guards for atomic output: a header appears only after its data file, a failed move leaves no hidden staging
folder, a file held too long is an error (not a silent no-op), and writing leaves the caller's image its metadata."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedTranslateLib.io import atomic
from MedTranslateLib.io.volumes import write_volume


def _image() -> sitk.Image:
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    image.SetSpacing((0.5, 0.75, 2.0))
    return image


def test_a_header_is_moved_into_place_after_its_data_file(tmp_path, monkeypatch) -> None:
    moved: list[str] = []
    real = os.replace

    def recording(src, dst) -> None:
        real(src, dst)
        if Path(dst).parent == tmp_path:
            moved.append(Path(dst).name)

    monkeypatch.setattr(os, "replace", recording)
    write_volume(_image(), tmp_path / "out.mhd")
    assert len(moved) == 2 and moved[-1] == "out.mhd"  # the data file (out.raw / out.zraw) first


def test_a_failed_move_in_a_group_leaves_no_staging_folder(tmp_path, monkeypatch) -> None:
    real = os.replace

    def full_disk_for_b(src, dst) -> None:
        if Path(dst).name == "b.nii.gz":
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", full_disk_for_b)
    with pytest.raises(OSError):
        with atomic.output_group():
            for name in ("a.nii.gz", "b.nii.gz"):
                with atomic.atomic_output(tmp_path / name) as temp:
                    temp.write_bytes(b"data")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert not (tmp_path / "b.nii.gz").exists()


def test_a_file_held_by_another_program_for_too_long_is_an_error(tmp_path, monkeypatch) -> None:
    calls = []

    def held(src, dst) -> None:
        calls.append(dst)
        raise PermissionError(13, "The process cannot access the file")

    monkeypatch.setattr(atomic, "RETRY_HELD_FILES", True)
    monkeypatch.setattr(os, "replace", held)
    with pytest.raises(PermissionError):
        atomic.replace_file(tmp_path / "a", tmp_path / "b", tries=3, pause=0.0)
    assert len(calls) == 3


def test_writing_leaves_the_callers_header_tags_alone(tmp_path) -> None:
    """sitk.Image(image) shares the metadata and EraseMetaData does not copy on write (SimpleITK 2.5): write_volume
    stripped the caller's tags."""
    image = _image()
    image.SetMetaData("PatientsName", "Doe^Jane")
    write_volume(image, tmp_path / "out.nrrd", description="test")
    assert image.HasMetaDataKey("PatientsName")
    assert image.GetMetaData("PatientsName") == "Doe^Jane"
    written = sitk.ReadImage(str(tmp_path / "out.nrrd"))
    assert not written.HasMetaDataKey("PatientsName") and "test" in written.GetMetaData("ITK_FileNotes")
