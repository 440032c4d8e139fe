"""Model registry: built-in + user listing, problems, resolve by id / id@version / folder / zip,
import (validation, duplicates, overwrite), remove, and the MEDTRANSLATE_MODELS_DIR override."""

from __future__ import annotations

import json
import os

import pytest

from MedTranslateLib.errors import ModelError
from MedTranslateLib.models.export import export_package
from MedTranslateLib.models.registry import BUILTIN_DIR, ModelRegistry, user_models_dir, version_key
from packages import make_test_card
from test_models_util import make_package, tiny_state


@pytest.fixture
def builtin(tmp_path):
    folder = tmp_path / "builtin"
    make_package(folder / "builtin-ct", id="builtin-ct", version="1.0.0")
    return folder


def test_user_models_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRANSLATE_MODELS_DIR", str(tmp_path / "mine"))
    assert user_models_dir() == tmp_path / "mine"
    assert ModelRegistry().user_dir == tmp_path / "mine"
    monkeypatch.delenv("MEDTRANSLATE_MODELS_DIR")
    assert user_models_dir().name == "models" and "MedTranslate" in str(user_models_dir())


def test_default_builtin_dir_is_inside_the_package():
    assert ModelRegistry().builtin_dir == BUILTIN_DIR
    assert BUILTIN_DIR.parent.name == "models"


def test_shipped_cards_carry_no_local_paths_and_one_clinical_warning():
    """Shipped cards travel: no absolute path of the machine that trained them, one "Not for clinical use"."""
    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    cards = [json.loads(p.read_text()) for p in BUILTIN_DIR.glob("*/model.json")]
    assert cards
    for card in cards:
        assert not [s for s in strings(card["training"]) if s.startswith("/")], card["id"]
        assert card["limitations"].lower().count("not for clinical use") == 1, card["id"]


def test_notice_and_package_licence_cover_every_shipped_weight():
    """The weights' licences (CC-BY-4.0 for those trained on public data) are in NOTICE and the package metadata."""
    from MedTranslateLib.training.config import tomllib

    repo = BUILTIN_DIR.parents[2]
    notice = (repo / "NOTICE").read_text()
    expression = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["license"]
    for path in BUILTIN_DIR.glob("*/model.json"):
        card = json.loads(path.read_text())
        assert f"- {card['id']} {card['version']}: {card['license']}" in notice, card["id"]
        assert card["license"] in expression, card["id"]


def test_list_builtin_and_user_with_problems(tmp_path, builtin, isolated_user_models):
    registry = ModelRegistry(builtin_dir=builtin)
    registry.import_package(make_package(tmp_path / "src", id="user-model", version="0.3.0"))
    broken = isolated_user_models / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{")
    (isolated_user_models / "my-model.work" / "checkpoint").mkdir(parents=True)  # training with --output here
    entries = registry.list_models()
    assert [(e.id, e.source) for e in entries] == [("builtin-ct", "builtin"), ("user-model", "user")]
    assert entries[1].path == isolated_user_models / "user-model@0.3.0"
    assert len(registry.problems) == 1 and "broken" in str(registry.problems[0])


def test_resolve_by_id_version_folder_and_zip(tmp_path, builtin):
    registry = ModelRegistry(builtin_dir=builtin)
    registry.import_package(make_package(tmp_path / "v1", id="mm", version="1.2.0"))
    registry.import_package(make_package(tmp_path / "v2", id="mm", version="1.10.0"))
    assert registry.resolve("mm").card.version == "1.10.0"
    assert registry.resolve("mm@1.2.0").card.version == "1.2.0"
    assert registry.resolve("builtin-ct").card.id == "builtin-ct"
    assert registry.resolve(str(tmp_path / "v1")).card.version == "1.2.0"
    assert registry.resolve(tmp_path / "v1" / "model.json").card.id == "mm"
    zipped = export_package(tiny_state(), make_test_card(id="zipped"), tmp_path / "z", as_zip=True)
    assert registry.resolve(str(zipped)).card.id == "zipped"


def test_resolve_unknown_lists_known_ids_and_how_to_import(builtin, tmp_path):
    registry = ModelRegistry(builtin_dir=builtin)
    with pytest.raises(ModelError) as info:
        registry.resolve("nope")
    assert "builtin-ct@1.0.0" in str(info.value) and "medtranslate models import" in str(info.value)
    with pytest.raises(ModelError, match="Did you mean 'builtin-ct'"):
        registry.resolve("Builtin-CT")
    with pytest.raises(ModelError, match="version 9.9.9"):
        registry.resolve("builtin-ct@9.9.9")
    with pytest.raises(ModelError, match="No model package at"):
        registry.resolve(str(tmp_path / "missing.zip"))


def test_import_refuses_duplicates_unless_overwrite(tmp_path, builtin):
    registry = ModelRegistry(builtin_dir=builtin)
    source = make_package(tmp_path / "src", id="dup", version="1.0.0")
    registry.import_package(source)
    with pytest.raises(ModelError, match="already imported"):
        registry.import_package(source)
    changed = make_package(tmp_path / "src2", id="dup", version="1.0.0", title="Changed title")
    entry = registry.import_package(changed, overwrite=True)
    assert registry.resolve("dup").card.title == "Changed title"
    assert sorted(p.name for p in entry.path.iterdir()) == ["README.md", "model.json", "weights.safetensors"]
    assert [p.name for p in registry.user_dir.iterdir()] == ["dup@1.0.0"], "no temporary folders left"
    if os.name == "posix":  # readable by other users (mkdtemp made it 0700)
        assert entry.path.stat().st_mode & 0o055 == (0o777 & ~_umask()) & 0o055


def test_import_from_zip_verifies_weights(tmp_path, builtin):
    registry = ModelRegistry(builtin_dir=builtin)
    zipped = export_package(tiny_state(), make_test_card(id="from-zip"), tmp_path / "p", as_zip=True)
    entry = registry.import_package(zipped)
    assert entry.source == "user" and registry.resolve("from-zip").load_state_dict()
    folder = make_package(tmp_path / "tampered", id="tampered")
    card = json.loads((folder / "model.json").read_text())
    card["weights"]["sha256"] = "a" * 64
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="SHA256"):
        registry.import_package(folder)
    assert not (registry.user_dir / "tampered-0.1.0").exists()


def test_import_skips_symlinked_and_foreign_files(tmp_path, builtin):
    folder = make_package(tmp_path / "src", id="links")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (folder / "NOTES.txt").symlink_to(secret)
    (folder / "script.py").write_text("print('hi')")
    entry = ModelRegistry(builtin_dir=builtin).import_package(folder)
    assert sorted(p.name for p in entry.path.iterdir()) == ["README.md", "model.json", "weights.safetensors"]


def test_remove(tmp_path, builtin):
    registry = ModelRegistry(builtin_dir=builtin)
    registry.import_package(make_package(tmp_path / "a", id="gone", version="1.0.0"))
    registry.import_package(make_package(tmp_path / "b", id="gone", version="2.0.0"))
    registry.remove("gone@1.0.0")
    assert [e.version for e in registry.list_models() if e.id == "gone"] == ["2.0.0"]
    registry.remove("gone")
    assert not any(e.id == "gone" for e in registry.list_models())
    with pytest.raises(ModelError, match="built-in"):
        registry.remove("builtin-ct")
    with pytest.raises(ModelError, match="No imported model"):
        registry.remove("gone")


def _break(folder, **changes):
    """Edit a package's model.json by hand (a key the schema does not know, a newer card format, ...)."""
    card = json.loads((folder / "model.json").read_text())
    card.update(changes)
    (folder / "model.json").write_text(json.dumps(card))
    return folder


def test_a_package_that_cannot_be_read_is_reported_by_its_name_not_unknown(tmp_path, builtin, isolated_user_models):
    """v2 of an id stopped passing: '-m id' still runs v1 but warns, 'id@v2' gives the card's error (not "Unknown
    version"), as does an id only an unreadable package has: by its card's id, or its folder's <id>@<version>."""
    registry = ModelRegistry(builtin_dir=builtin)
    registry.import_package(make_package(tmp_path / "v1", id="mm", version="0.1.0"))
    _break(make_package(isolated_user_models / "mm@0.2.0", id="mm", version="0.2.0"), oops=1)
    assert registry.resolve("mm").card.version == "0.1.0"
    assert len(registry.warnings) == 1 and "'mm' uses mm@0.1.0 (user), not mm@0.2.0" in registry.warnings[0]
    assert "'oops' was unexpected" in registry.warnings[0] and "models remove mm@0.2.0" in registry.warnings[0]
    assert registry.resolve("mm@0.1.0") and len(registry.warnings) == 1  # a version asked for: nothing passed over
    with pytest.raises(ModelError, match=r"mm@0\.2\.0\) cannot be read: .*'oops' was unexpected") as info:
        registry.resolve("mm@0.2.0")
    assert info.value.exit_code == 4 and "Unknown" not in str(info.value)
    _break(make_package(isolated_user_models / "my copy", id="solo", version="1.0.0"), schema_version=2)
    (isolated_user_models / "gone@3.0.0").mkdir()
    (isolated_user_models / "gone@3.0.0" / "model.json").write_text("{")
    for name, reason in (("solo", "newer MedTranslate"), ("solo@1.0.0", "newer MedTranslate"),
                         ("gone", "not valid JSON"), ("gone@3.0.0", "not valid JSON")):
        with pytest.raises(ModelError, match=reason) as info:
            registry.resolve(name)
        assert "models remove" in info.value.fix, name
    with pytest.raises(ModelError, match="Unknown model 'my copy'"):  # a folder name without '@' claims nothing
        registry.resolve("my copy")


def test_an_unreadable_built_in_is_reported_and_never_removed(builtin):
    _break(make_package(builtin / "damaged", id="damaged", version="1.0.0"), oops=1)
    registry = ModelRegistry(builtin_dir=builtin)
    with pytest.raises(ModelError, match=r"damaged@1\.0\.0\) cannot be read") as info:
        registry.resolve("damaged")
    assert "Reinstall MedTranslate" in info.value.fix
    with pytest.raises(ModelError, match="built-in"):
        registry.remove("damaged")
    assert (builtin / "damaged" / "model.json").is_file()


def test_remove_deletes_unreadable_user_packages_of_that_name(tmp_path, builtin, isolated_user_models):
    registry = ModelRegistry(builtin_dir=builtin)
    registry.import_package(make_package(tmp_path / "v1", id="mm", version="0.1.0"))
    broken = _break(make_package(isolated_user_models / "mm@0.2.0", id="mm", version="0.2.0"), oops=1)
    renamed = _break(make_package(isolated_user_models / "elsewhere", id="mm", version="0.3.0"), schema_version=2)
    assert registry.remove("mm@0.2.0") == [broken] and not broken.exists()
    assert sorted(p.name for p in registry.remove("mm")) == ["elsewhere", "mm@0.1.0"] and not renamed.exists()
    assert list(isolated_user_models.iterdir()) == []


def test_import_overwrite_replaces_an_unreadable_package(tmp_path, builtin, isolated_user_models):
    registry = ModelRegistry(builtin_dir=builtin)
    _break(make_package(isolated_user_models / "dup@1.0.0", id="dup", version="1.0.0"), oops=1)
    _break(make_package(isolated_user_models / "old copy", id="dup", version="1.0.0"), schema_version=2)
    fixed = make_package(tmp_path / "fixed", id="dup", version="1.0.0", title="Fixed")
    with pytest.raises(ModelError, match="cannot be read: .*--overwrite to replace it"):
        registry.import_package(fixed)
    entry = registry.import_package(fixed, overwrite=True)
    assert entry.path == isolated_user_models / "dup@1.0.0" and registry.resolve("dup").card.title == "Fixed"
    assert [p.name for p in isolated_user_models.iterdir()] == ["dup@1.0.0"] and registry.problems == []


def test_models_cli_on_an_unreadable_package(tmp_path, builtin, capsys, monkeypatch, isolated_user_models):
    """'models show' warns about the newer package it passed over; 'list --json' (the Slicer panel's) carries the
    problems; 'remove' deletes the unreadable package."""
    from MedTranslateLib.cli.main import main

    monkeypatch.setattr("MedTranslateLib.models.registry.BUILTIN_DIR", builtin)
    ModelRegistry(builtin_dir=builtin).import_package(make_package(tmp_path / "v1", id="mm", version="0.1.0"))
    broken = _break(make_package(isolated_user_models / "mm@0.2.0", id="mm", version="0.2.0"), oops=1)
    assert main(["models", "show", "mm"]) == 0
    assert "warning: 'mm' uses mm@0.1.0 (user), not mm@0.2.0" in capsys.readouterr().err
    assert main(["models", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in listing["models"]] == ["builtin-ct", "mm"]
    assert [(p["path"], p["source"], p["claims"]) for p in listing["problems"]] == [(str(broken), "user", ["mm@0.2.0"])]
    assert "'oops' was unexpected" in listing["problems"][0]["problem"]
    assert main(["models", "show", "mm@0.2.0"]) == 4
    assert "cannot be read" in capsys.readouterr().err
    assert main(["models", "remove", "mm@0.2.0"]) == 0
    assert "removed mm@0.2.0" in capsys.readouterr().out and not broken.exists()


def test_version_key_orders_numerically():
    versions = ["1.10.0", "1.2.0", "1.2.0-rc1", "0.9.9"]
    assert sorted(versions, key=version_key) == ["0.9.9", "1.2.0-rc1", "1.2.0", "1.10.0"]
    versions = ["3.0.0.1", "3.0.0", "3.0.0-rc.10", "3.0.0-rc.9", "3.0.0-rc.9.beta", "2.99.99"]
    assert sorted(versions, key=version_key) == ["2.99.99", "3.0.0-rc.9", "3.0.0-rc.9.beta", "3.0.0-rc.10",
                                                 "3.0.0", "3.0.0.1"]
    assert version_key("03.0.0") != version_key("3.0.0")  # equal numbers, still one fixed order


def test_ids_and_versions_with_dashes_never_share_a_folder(tmp_path, builtin):
    """``foo-1.0.0`` 2.0.0 and ``foo`` 1.0.0-2.0.0 are two models: importing one never replaces the other."""
    registry = ModelRegistry(builtin_dir=builtin)
    registry.import_package(make_package(tmp_path / "a", id="foo-1.0.0", version="2.0.0"))
    registry.import_package(make_package(tmp_path / "b", id="foo", version="1.0.0-2.0.0"), overwrite=True)
    assert sorted(e.name for e in registry.list_models() if e.source == "user") == ["foo-1.0.0@2.0.0",
                                                                                    "foo@1.0.0-2.0.0"]


def test_import_refuses_pickle_weights_without_running_code(tmp_path, builtin):
    import hashlib
    import pickle

    from test_models_package import _Exploit

    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _Exploit(marker)})
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(payload)
    card = make_test_card(id="evil")
    card["weights"]["sha256"] = hashlib.sha256(payload).hexdigest()
    (folder / "model.json").write_text(json.dumps(card))
    registry = ModelRegistry(builtin_dir=builtin)
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        registry.import_package(folder)
    assert not marker.exists() and not (registry.user_dir / "evil-0.1.0").exists()


def test_models_show_neutralises_terminal_escapes_of_a_foreign_card(tmp_path, builtin, capsys, monkeypatch):
    from MedTranslateLib.cli.main import main

    monkeypatch.setenv("MEDTRANSLATE_MODELS_DIR", str(tmp_path / "user"))
    source = make_package(tmp_path / "src", id="sneaky", version="1.0.0", title="Fine \x1b[2J\x1b[31mred \u202eevil")
    ModelRegistry(builtin_dir=builtin, user_dir=tmp_path / "user").import_package(source)
    assert main(["models", "show", "sneaky"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "Fine \ufffd[2J\ufffd[31mred \ufffdevil" in out


def test_import_refuses_weights_that_do_not_fit_the_cards_network(tmp_path, builtin, capsys, monkeypatch):
    """A valid SHA256 is not enough: weights made for another architecture are refused before installing."""
    import json

    from packages import make_untrained_package

    from MedTranslateLib.cli.main import main

    monkeypatch.setenv("MEDTRANSLATE_MODELS_DIR", str(tmp_path / "user"))
    source = make_untrained_package(tmp_path / "src", "unet", "2d", id="misfit")
    assert main(["models", "import", str(source)]) == 0  # as exported: it fits, and is imported
    card = json.loads((source / "model.json").read_text())
    first = card["version"]
    card["version"] = "9.9.9"
    card["architecture"]["features"] = [f * 2 for f in card["architecture"]["features"]]
    (source / "model.json").write_text(json.dumps(card))
    assert main(["models", "import", str(source)]) == 4
    assert "do not fit the architecture" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "user").iterdir()] == [f"misfit@{first}"]  # only the one that fits


def test_import_says_which_package_an_id_selects(tmp_path, builtin, capsys, monkeypatch):
    """An import older than the built-in of the same id was silently never used by '-m id'; one that is newer hides
    the built-in. The import says either."""
    from packages import make_untrained_package

    from MedTranslateLib.cli.main import main

    monkeypatch.setenv("MEDTRANSLATE_MODELS_DIR", str(tmp_path / "user"))
    monkeypatch.setattr("MedTranslateLib.models.registry.BUILTIN_DIR", builtin)
    older = make_untrained_package(tmp_path / "old", id="builtin-ct", version="0.9.0")
    assert main(["models", "import", str(older)]) == 0
    out = capsys.readouterr().out
    assert "'-m builtin-ct' still uses builtin-ct@1.0.0 (builtin), which is newer" in out
    assert "'-m builtin-ct@0.9.0'" in out
    newer = make_untrained_package(tmp_path / "new", id="builtin-ct", version="1.1.0")
    assert main(["models", "import", str(newer)]) == 0
    out = capsys.readouterr().out
    assert "now uses this import instead of the built-in builtin-ct@1.0.0" in out
    assert main(["models", "import", str(make_untrained_package(tmp_path / "own", id="own-model"))]) == 0
    assert "note:" not in capsys.readouterr().out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
