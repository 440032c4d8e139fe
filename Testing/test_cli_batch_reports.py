"""What a batch ``medtranslate translate IN1 IN2 ... -o FOLDER`` tells its user: every warning and error names the
input it is about, the worker protocol ends a partly failed batch with one final error event, and a batch that
writes nothing leaves none of the folders it created."""

from __future__ import annotations

import json

import pytest

from MedTranslateLib.cli.main import main
from MedTranslateLib.io import write_volume
from packages import make_untrained_package


@pytest.fixture
def model(tmp_path):
    return make_untrained_package(tmp_path / "model", "unet", "2d")


@pytest.fixture
def inputs(tmp_path, small_image):
    paths = [tmp_path / f"{name}.nii.gz" for name in ("a", "b")]
    for path in paths:
        write_volume(small_image, path, modality="MR")
    return paths


def test_batch_warnings_name_their_input(tmp_path, model, inputs, capsys):
    """Standard output is block-buffered in a log file (``> log 2>&1``): a warning line must say which input it is
    about, like the batch's error lines do, not rely on the 'wrote' line next to it."""
    assert main(["translate", *map(str, inputs), "-m", str(model), "-o", str(tmp_path / "out"), "--steps", "3",
                 "--progress", "none"]) == 0
    err = capsys.readouterr().err
    for path in inputs:
        assert f"warning: {path}: Sampling steps" in err


def test_single_input_warnings_stay_plain(tmp_path, model, inputs, capsys):
    assert main(["translate", str(inputs[0]), "-m", str(model), "-o", str(tmp_path / "o.nii.gz"), "--steps", "3",
                 "--progress", "none"]) == 0
    assert "warning: Sampling steps" in capsys.readouterr().err


def test_a_partly_failed_batch_ends_with_a_final_error_event(tmp_path, model, inputs, capsys):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a volume")
    code = main(["translate", str(inputs[0]), str(bad), str(inputs[1]), "-m", str(model), "-o", str(tmp_path / "out"),
                 "--progress", "jsonl"])
    assert code == 3
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    errors = [e for e in events if e["event"] == "error"]
    assert [e.get("final") for e in errors] == [False, True]
    assert errors[-1]["exit_code"] == 3
    assert "2 of 3 inputs translated" in errors[-1]["message"] and str(bad) in errors[-1]["message"]
    assert errors[-1]["failed"] == [str(bad)]


def test_a_batch_that_writes_nothing_leaves_no_folders_it_created(tmp_path, model, capsys):
    bad = [tmp_path / f"bad{k}.nii.gz" for k in (1, 2)]
    for path in bad:
        path.write_bytes(b"not a volume")
    out = tmp_path / "new" / "deeper" / "out"
    assert main(["translate", *map(str, bad), "-m", str(model), "-o", str(out), "--progress", "none"]) == 3
    assert not (tmp_path / "new").exists()


def test_a_batch_whose_model_fails_to_load_leaves_no_folders_it_created(tmp_path, inputs, capsys):
    out = tmp_path / "new" / "out"
    assert main(["translate", *map(str, inputs), "-m", str(tmp_path / "no-such-model"), "-o", str(out),
                 "--progress", "none"]) == 4
    assert not (tmp_path / "new").exists()


def test_a_batch_keeps_a_folder_that_existed_before(tmp_path, model, capsys):
    bad = [tmp_path / f"bad{k}.nii.gz" for k in (1, 2)]
    for path in bad:
        path.write_bytes(b"not a volume")
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["translate", *map(str, bad), "-m", str(model), "-o", str(existing / "new" / "out"),
                 "--progress", "none"]) == 3
    assert existing.is_dir() and not any(existing.iterdir())


def test_an_input_too_large_for_memory_is_one_error_and_the_batch_goes_on(tmp_path, model, inputs, monkeypatch,
                                                                          capsys):
    """A volume whose working copies do not fit in this computer's memory (MemoryError) fails that input with one
    clear message; the batch translates the others, as for any bad input."""
    from MedTranslateLib import pipeline

    translate = pipeline.Translator.translate

    def out_of_memory_for_a(self, image, *args, **kwargs):
        if image.GetOrigin()[0] == 1.5:
            raise MemoryError()
        return translate(self, image, *args, **kwargs)

    monkeypatch.setattr(pipeline.Translator, "translate", out_of_memory_for_a)
    image = pipeline.read_inputs(inputs[0]).image
    image.SetOrigin((1.5, 0.0, 0.0))
    write_volume(image, inputs[0], modality="MR")
    out = tmp_path / "out"
    assert main(["translate", *map(str, inputs), "-m", str(model), "-o", str(out), "--progress", "none"]) == 3
    err = capsys.readouterr().err
    assert f"error: {inputs[0]}: " in err and "memory" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["b_synthetic.nii.gz"]
    assert not [p for p in tmp_path.rglob("*partial*")]


def test_a_single_input_too_large_to_read_is_one_error(tmp_path, model, inputs, monkeypatch, capsys):
    from MedTranslateLib.io import volumes

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(volumes, "_content_problems", no_memory)
    assert main(["translate", str(inputs[0]), "-m", str(model), "-o", str(tmp_path / "o.nii.gz"),
                 "--progress", "none"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "memory" in err and "Traceback" not in err


def test_the_same_input_given_twice_is_named_as_the_problem(tmp_path, model, inputs, capsys, monkeypatch):
    """A glob and a name that overlap (``*.nii.gz a.nii.gz``) give one input twice: the message says so, instead of
    asking for output names the batch does not let the user choose."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["translate", str(inputs[0]), str(inputs[1]), "./a.nii.gz", "-m", str(model), "-o", str(out),
                 "--progress", "none"]) == 5
    err = capsys.readouterr().err
    assert "given twice" in err and str(inputs[0]) in err and "./a.nii.gz" in err
    assert "Give each input once" in err and "own file name" not in err
    assert not out.exists()
