"""File names near and beyond the file system's limit (255 bytes a name): a legal name is written, a name that is
too long is one clear error before the model loads, never a traceback (``OSError: File name too long``)."""

from __future__ import annotations

import os

import pytest

from MedTranslateLib.cli.main import main
from MedTranslateLib.errors import OutputError
from MedTranslateLib.io import check_writable, read_volume, write_volume
from MedTranslateLib.io.atomic import atomic_output, swap_into_place
from packages import make_untrained_package

NAME_MAX = 255


@pytest.fixture
def model(tmp_path):
    return make_untrained_package(tmp_path / "model", "unet", "2d")


def test_an_output_name_just_below_the_limit_is_written(tmp_path, small_image):
    """The hidden staging folder's name is longer than the target's: it must not push a legal name over."""
    target = tmp_path / ("c" * (NAME_MAX - len(".nii")) + ".nii")
    assert len(target.name) == NAME_MAX
    write_volume(small_image, target, modality="MR")
    assert read_volume(target)[0].GetSize() == small_image.GetSize()
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_dicom_folder_name_just_below_the_limit_is_written_and_replaced(tmp_path, small_image):
    folder = tmp_path / ("d" * NAME_MAX)
    write_volume(small_image, f"{folder}/", modality="MR")
    write_volume(small_image, f"{folder}/", modality="MR")  # the earlier series is swapped out, then deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]
    assert len(list(folder.iterdir())) == small_image.GetSize()[2]


def test_staging_and_backup_names_stay_within_the_limit(tmp_path):
    target = tmp_path / ("e" * NAME_MAX)
    target.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    swap_into_place(staging, target)
    with atomic_output(tmp_path / ("f" * (NAME_MAX - 4) + ".mha")) as temp:
        assert len(temp.parent.name) <= NAME_MAX
        temp.write_bytes(b"x")


def test_a_too_long_output_name_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="too long") as caught:
        check_writable(tmp_path / ("a" * 300 + ".nii.gz"))
    assert "shorter" in caught.value.fix


def test_a_too_long_output_name_is_refused_before_the_model_loads(tmp_path, small_image, model, capsys):
    source = tmp_path / "in.nii.gz"
    write_volume(small_image, source, modality="MR")
    for output in (tmp_path / ("a" * 300 + ".nii.gz"), f"{tmp_path / ('b' * 300)}/"):
        assert main(["translate", str(source), "-m", str(model), "-o", str(output), "--progress", "none"]) == 5
        err = capsys.readouterr().err
        assert "too long" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "model"]


def test_a_too_long_input_name_is_an_input_error(tmp_path, model, capsys):
    source = tmp_path / ("i" * 300 + ".nii.gz")
    assert main(["translate", str(source), "-m", str(model), "-o", str(tmp_path / "out.nii.gz"),
                 "--progress", "none"]) == 3
    err = capsys.readouterr().err
    assert "too long" in err and "Traceback" not in err


def test_a_batch_whose_output_name_would_be_too_long_is_refused_up_front(tmp_path, small_image, model, capsys):
    """``<input name>_synthetic.nii.gz`` of a legal 247-character input name is 257 characters."""
    long_input = tmp_path / ("b" * 240 + ".nii.gz")
    short_input = tmp_path / "short.nii.gz"
    for path in (long_input, short_input):
        write_volume(small_image, path, modality="MR")
    out = tmp_path / "out"
    assert main(["translate", str(long_input), str(short_input), "-m", str(model), "-o", str(out),
                 "--progress", "none"]) == 5
    err = capsys.readouterr().err
    assert "too long" in err and "Traceback" not in err
    assert not out.exists()


def test_a_batch_output_folder_name_that_is_too_long_is_one_clear_error(tmp_path, small_image, model, capsys):
    inputs = [tmp_path / f"{name}.nii.gz" for name in ("a", "b")]
    for path in inputs:
        write_volume(small_image, path, modality="MR")
    out = tmp_path / ("o" * 300)
    assert main(["translate", *map(str, inputs), "-m", str(model), "-o", str(out), "--progress", "none"]) == 5
    err = capsys.readouterr().err
    assert "too long" in err and "Traceback" not in err
    assert os.listdir(tmp_path) and not any(len(name) > NAME_MAX for name in os.listdir(tmp_path))
