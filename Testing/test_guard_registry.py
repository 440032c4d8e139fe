"""Guard for model selection: the user's copy wins over a built-in package of the same id and version."""

from __future__ import annotations

from MedTranslateLib.models.registry import ModelRegistry
from test_models_util import make_package


def test_the_users_copy_wins_a_tie_with_the_built_in(tmp_path) -> None:
    builtin = tmp_path / "builtin"
    make_package(builtin / "same", id="same", version="1.0.0", title="Built-in copy")
    registry = ModelRegistry(builtin_dir=builtin)
    registry.import_package(make_package(tmp_path / "mine", id="same", version="1.0.0", title="My copy"))
    chosen = registry.find("same")
    assert chosen.source == "user" and chosen.title == "My copy"
    assert registry.find("same@1.0.0").source == "user"
    assert registry.resolve("same").card.title == "My copy"
