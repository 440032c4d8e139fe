"""``medtranslate translate`` of one input reports a bad input first, even when the model is wrong too, and
downloads no weights for it."""

from __future__ import annotations

import json

import pytest

from MedTranslateLib.cli import translate
from MedTranslateLib.cli.main import main
from MedTranslateLib.errors import InputError
from packages import make_untrained_package


def test_a_bad_input_is_the_error_even_when_the_model_fails_too(tmp_path, capsys):
    bad = tmp_path / "notes.nii.gz"
    bad.write_bytes(b"not an image")
    code = main(["translate", str(bad), "-m", str(tmp_path / "no-such-package"), "-o", str(tmp_path / "o.nii.gz"),
                 "--device", "cpu", "--progress", "none"])
    error = capsys.readouterr().err
    assert code == InputError.exit_code and "Cannot read" in error and "package" not in error, error
    assert not (tmp_path / "o.nii.gz").exists()


def test_a_bad_input_downloads_no_weights(tmp_path, monkeypatch):
    """The weights of a model's first use are downloaded only once the input is known to be readable."""
    package = make_untrained_package(tmp_path / "pkg", "unet", "2d")
    (package / "weights.safetensors").unlink()
    card = json.loads((package / "model.json").read_text())
    card["weights"]["url"] = "http://127.0.0.1:9/weights.safetensors"
    (package / "model.json").write_text(json.dumps(card))
    monkeypatch.setattr(translate, "_download_weights", lambda *a: pytest.fail("downloaded for a bad input"))
    bad = tmp_path / "notes.nii.gz"
    bad.write_bytes(b"not an image")
    assert main(["translate", str(bad), "-m", str(package), "-o", str(tmp_path / "o.nii.gz"), "--device", "cpu",
                 "--progress", "none"]) == InputError.exit_code
