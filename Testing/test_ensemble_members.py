"""Which models may form an ensemble: the same translation and the same output scale, however the card spells it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from MedTranslateLib.errors import ModelError
from packages import make_untrained_package


def _edit_output(folder: Path, **changes: object) -> Path:
    """Change (or, with None, drop) keys of the card's normalization.output."""
    card = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    output = card["normalization"]["output"]
    for key, value in changes.items():
        if value is None:
            output.pop(key, None)
        else:
            output[key] = value
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


def test_an_unstated_background_is_the_scales_own_low_end(tmp_path) -> None:
    """A card without ``background`` writes its output_range's low end outside the body (0 for [0, 1000]), as one
    that says ``"background": 0.0``: the two were refused as 'different intensity scales' (background None)."""
    from MedTranslateLib.ensemble import EnsembleTranslator

    a = make_untrained_package(tmp_path / "a", "unet", "2d", target="T2", id="t2-a")
    b = _edit_output(make_untrained_package(tmp_path / "b", "unet", "2d", target="T2", seed=1, id="t2-b"),
                     background=None, output_range=[0, 1000])
    ensemble = EnsembleTranslator([str(a), str(b)], device="cpu")
    assert [m.card.id for m in ensemble.members] == ["t2-a", "t2-b"]


def test_a_different_background_is_still_refused(tmp_path) -> None:
    from MedTranslateLib.ensemble import EnsembleTranslator

    a = make_untrained_package(tmp_path / "a", "unet", "2d", target="T2", id="t2-a")
    b = _edit_output(make_untrained_package(tmp_path / "b", "unet", "2d", target="T2", seed=1, id="t2-b"),
                     background=None, output_range=[-100.0, 1000.0])
    with pytest.raises(ModelError, match="different intensity scales: t2-a writes \\[0.0, 1000.0\\] \\(background "
                                         "0.0\\), t2-b writes \\[-100.0, 1000.0\\] \\(background -100.0\\)"):
        EnsembleTranslator([str(a), str(b)], device="cpu")


def test_the_same_model_twice_is_refused(tmp_path) -> None:
    """'-m A --ensemble A B' counted A twice in the mean, and '-m A --ensemble A' wrote an all-zero spread (a
    CNN agrees with itself) as if the translation were certain, without a word."""
    from MedTranslateLib.ensemble import EnsembleTranslator

    a = make_untrained_package(tmp_path / "a", "unet", "2d", id="ct-a")
    b = make_untrained_package(tmp_path / "b", "unet", "2d", seed=1, id="ct-b")
    copy = make_untrained_package(tmp_path / "copy", "unet", "2d", id="ct-a")  # the same package, elsewhere
    with pytest.raises(ModelError, match="ct-a@0.1.0 is given twice") as caught:
        EnsembleTranslator([str(a), str(b), str(copy)], device="cpu")
    assert "--samples" in caught.value.fix
    assert len(EnsembleTranslator([str(a), str(b)], device="cpu").members) == 2


def test_members_are_checked_before_any_network_loads(tmp_path, monkeypatch) -> None:
    """A mismatched ensemble was refused only after every member's networks had been built (seconds per diffusion
    model); the cards say enough."""
    import MedTranslateLib.ensemble as ensemble

    built: list[object] = []
    real = ensemble.Translator
    monkeypatch.setattr(ensemble, "Translator", lambda *args, **kwargs: built.append(args) or real(*args, **kwargs))
    a = make_untrained_package(tmp_path / "a", "unet", "2d", id="ct-a")
    t2 = make_untrained_package(tmp_path / "t2", "unet", "2d", target="T2", id="t2")
    with pytest.raises(ModelError, match="different modalities"):
        ensemble.EnsembleTranslator([str(a), str(t2)], device="cpu")
    assert built == []


def test_the_command_line_checks_members_before_downloading_weights(tmp_path, monkeypatch) -> None:
    """`translate --ensemble` downloaded every member's missing weights (hundreds of MB) before refusing members
    that cannot form an ensemble."""
    import argparse

    import MedTranslateLib.cli.translate as translate

    downloads: list[object] = []
    monkeypatch.setattr(translate, "_download_weights", lambda package, mode: downloads.append(package))
    a = make_untrained_package(tmp_path / "a", "unet", "2d", id="ct-a")
    t2 = make_untrained_package(tmp_path / "t2", "unet", "2d", target="T2", id="t2")
    args = argparse.Namespace(model=str(a), ensemble=[str(t2)], progress="none", device="cpu")
    with pytest.raises(ModelError, match="different modalities"):
        translate._load_translator(args, [], jsonl=False)
    assert downloads == []
