"""The panel's model management (MedTranslateModule.models): cards, search, import, remove, model folder.

The import / remove / folder tests drive the real backend worker (``python -m MedTranslateLib``) in a subprocess,
as the panel does, against the isolated user model folder every test gets (conftest)."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from packages import make_untrained_package

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedTranslate"))

from MedTranslateModule.models import (ModelInfo, PackageProblem, filter_models, import_model,  # noqa: E402
                                       list_models, list_models_and_problems, parse_listing, parse_model_list,
                                       problems_text, remove_model, show_problems, user_models_folder)

WORKER = [sys.executable, "-m", "MedTranslateLib"]


def test_model_list_parsing_and_card_text():
    text = json.dumps([{"id": "mr2ct-x", "version": "1.2.0", "title": "MR to CT", "source_modality": "MR",
                        "target_modality": "CT", "anatomy": "head", "field_of_view": "whole brain",
                        "license": "CC-BY-4.0", "source": "user", "family": "pix2pix",
                        "performance": {"cuda_seconds_per_volume": 2.0, "cpu_seconds_per_volume": 95.0,
                                        "training_seconds": 999.0},
                        "metrics": {"values": {"mae": 61.04, "ssim": 0.8712, "mae_bone": 250.4}},
                        "limitations": "Adults only; artefacts outside <the> brain."},
                       {"title": "no id"}])
    models = parse_model_list(text)
    assert [m.id for m in models] == ["mr2ct-x"]
    card = models[0].card_text()
    for piece in ("MR to CT", "MR &rarr; CT", "head, whole brain", "CC-BY-4.0", "GPU about 2 s", "CPU about 95 s",
                  "Held-out: MAE 61.0 HU, SSIM 0.871, bone MAE 250 HU", "version 1.2.0, your model folder",
                  "Limits: Adults only; artefacts outside &lt;the&gt; brain."):
        assert piece in card, piece
    assert "999" not in card and "uncertainty map (four flipped passes) about 2.5-4x as long" in card
    sampled = ModelInfo(id="d", family="diffusion", performance={"cpu_seconds": 30.0}).card_text()
    assert "CPU about 30 s; an uncertainty map needs several samples" in sampled
    for family in ("random_forest", ""):  # no map, or a family this version does not know
        assert "uncertainty" not in ModelInfo(id="f", family=family, performance={"cpu_seconds": 3}).card_text()
    assert parse_model_list(json.dumps({"models": [{"id": "a"}]}))[0].id == "a"


def test_card_of_an_mr_target_has_no_hounsfield_units_and_no_empty_lines():
    model = ModelInfo(id="t1-t2", target_modality="T2", metrics={"values": {"mae": 65.1}}, source="builtin")
    card = model.card_text()
    assert "Held-out: MAE 65.1<" in card and "HU" not in card and "built-in" in card
    assert "Held-out" not in ModelInfo(id="x", metrics={"data": "none"}).card_text()


def test_search_needs_every_word_and_shows_one_entry_per_id():
    models = [ModelInfo("mr2ct-brain", "1.0.0", "Brain sCT", "MR", "CT", "head", family="unet", source="builtin"),
              ModelInfo("mr2ct-brain", "1.1.0", "Brain sCT", "MR", "CT", "head", family="unet", source="user"),
              ModelInfo("cbct2ct-pelvis", "1.0.0", "Pelvis CBCT", "CBCT", "CT", "pelvis", family="pix2pix"),
              ModelInfo("t1-t2", "2.0.0", "T1 to T2", "T1", "T2", "brain", family="diffusion")]
    assert [(m.id, m.version) for m in filter_models(models)] == [("mr2ct-brain", "1.1.0"), ("cbct2ct-pelvis", "1.0.0"),
                                                                  ("t1-t2", "2.0.0")]
    assert [m.id for m in filter_models(models, "ct")] == ["mr2ct-brain", "cbct2ct-pelvis"]
    assert [m.id for m in filter_models(models, "  PELVIS  gan")] == []
    assert [m.id for m in filter_models(models, "pelvis pix2pix")] == ["cbct2ct-pelvis"]
    assert [m.id for m in filter_models(models, "brain Diffusion")] == ["t1-t2"]
    assert filter_models(models, "lung") == []
    # words match from their start: "t2" finds the T1 -> T2 model, not an id containing "unet2d"
    unet2d = ModelInfo("mr2ct-head-unet2d", "1.0.0", "Head sCT", "MR", "CT", "head", family="unet")
    assert [m.id for m in filter_models([*models, unet2d], "T2")] == ["t1-t2"]
    assert [m.id for m in filter_models([*models, unet2d], "t1-t2 bra")] == ["t1-t2"]


def test_listing_with_problems_and_the_line_under_the_model_list():
    """``models list --json`` gives the packages it could not read too; the panel says so under the list."""
    text = json.dumps({"models": [{"id": "a"}], "problems": [
        {"path": "/models/mine@0.2.0", "problem": "The model card is invalid: <oops> " + "x" * 300, "fix": "Fix it.",
         "source": "user", "claims": ["mine@0.2.0"]}, {"problem": "no path"}]})
    models, problems = parse_listing(text)
    assert [m.id for m in models] == ["a"] and [p.folder for p in problems] == ["mine@0.2.0"]
    assert parse_listing(json.dumps([{"id": "old"}])) == (parse_model_list(json.dumps([{"id": "old"}])), [])
    line, tooltip = problems_text(problems)
    assert line.startswith("1 model package could not be read: mine@0.2.0: The model card is invalid: <oops> x")
    assert len(line) < 230 and line.endswith("\u2026")
    assert "/models/mine@0.2.0" in tooltip and "&lt;oops&gt;" in tooltip and "x" * 300 in tooltip
    assert "Fix it." in tooltip
    two = [*problems, PackageProblem("/models/other", "no model.json, not a model package")]
    assert problems_text(two)[0].startswith("2 model packages could not be read: mine@0.2.0:")
    assert problems_text(two)[0].endswith("(and 1 more)") and "/models/other" in problems_text(two)[1]
    label = SimpleNamespace(text="old", toolTip="old", visible=True)
    show_problems(label, two)
    assert label.visible and label.text == problems_text(two)[0] and label.toolTip == problems_text(two)[1]
    show_problems(label, [])
    assert (label.text, label.toolTip, label.visible) == ("", "", False)


def test_a_package_that_stopped_passing_is_listed_as_a_problem_by_the_worker(tmp_path, isolated_user_models):
    """Before, ``models list --json`` dropped it without a word and the model vanished from the panel."""
    package = make_untrained_package(isolated_user_models / "panel-broken@1.0.0", id="panel-broken", version="1.0.0")
    card = json.loads((package / "model.json").read_text())
    (package / "model.json").write_text(json.dumps({**card, "schema_version": 2}))
    models, problems = list_models_and_problems(WORKER)
    assert "panel-broken" not in {m.id for m in models} and models
    assert [(p.folder, p.path) for p in problems] == [("panel-broken@1.0.0", str(package))]
    assert "newer MedTranslate" in problems[0].problem and "Update MedTranslate" in problems[0].fix
    assert problems_text(problems)[0].startswith("1 model package could not be read: panel-broken@1.0.0: ")


def test_backend_that_cannot_start_or_hangs_gives_a_runtime_error(tmp_path):
    from MedTranslateModule.models import run_models_command

    with pytest.raises(RuntimeError, match="Could not start the MedTranslate backend"):
        run_models_command([str(tmp_path / "no-such-python")], ["list"])
    with pytest.raises(RuntimeError, match="did not answer within 1 s"):
        run_models_command([sys.executable, "-c", "import time; time.sleep(30)"], ["list"], timeout=1)


def test_model_list_from_a_worker_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import json, sys\nassert sys.argv[1:] == ['models', 'list', '--json']\n"
                      "print(json.dumps([{'id': 'm1', 'target_modality': 'CT'}]))\n")
    assert list_models([sys.executable, str(script)])[0].target_modality == "CT"
    script.write_text("import sys\nprint('Traceback ...', file=sys.stderr)\nprint('error: registry broken', "
                      "file=sys.stderr)\nsys.exit(4)\n")
    with pytest.raises(RuntimeError, match="^registry broken$"):
        list_models([sys.executable, str(script)])


@pytest.mark.parametrize("form", ["zip", "folder", "model.json"])
def test_import_then_remove_through_the_backend_worker(tmp_path, isolated_user_models, form):
    package = make_untrained_package(tmp_path / "pkg", id="panel-import-test", version="1.3.0",
                                     limitations="Made for this test.")
    path = {"folder": package, "model.json": package / "model.json"}.get(form)
    if form == "zip":
        path = tmp_path / "panel-import-test.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for member in package.iterdir():
                archive.write(member, member.name)
    before = {m.id for m in list_models(WORKER)}
    assert "panel-import-test" not in before

    assert "imported panel-import-test 1.3.0" in import_model(WORKER, path)
    models = {m.id: m for m in list_models(WORKER)}
    imported = models["panel-import-test"]
    assert imported.removable and imported.source == "user" and "Made for this test." in imported.card_text()
    assert any(child.name.startswith("panel-import-test") for child in isolated_user_models.iterdir())
    with pytest.raises(RuntimeError, match="already imported"):
        import_model(WORKER, path)
    assert "imported" in import_model(WORKER, path, overwrite=True)

    assert "removed panel-import-test@1.3.0" in remove_model(WORKER, imported)
    assert {m.id for m in list_models(WORKER)} == before
    assert list(isolated_user_models.iterdir()) == []


def test_built_in_models_cannot_be_removed_and_bad_imports_say_why(tmp_path):
    builtin = next(m for m in list_models(WORKER) if m.source == "builtin")
    assert not builtin.removable
    with pytest.raises(RuntimeError, match="built-in model"):
        remove_model(WORKER, builtin)
    with pytest.raises(RuntimeError, match="built-in model and cannot be removed"):  # the worker refuses it too
        remove_model(WORKER, ModelInfo(builtin.id, builtin.version, source="user"))
    with pytest.raises(RuntimeError, match="No model package at"):
        import_model(WORKER, tmp_path / "missing.zip")
    assert builtin.id in {m.id for m in list_models(WORKER)}


def test_model_folder_comes_from_the_backend_and_is_created(tmp_path, monkeypatch):
    folder = tmp_path / "not" / "yet" / "there"
    monkeypatch.setenv("MEDTRANSLATE_MODELS_DIR", str(folder))
    assert user_models_folder(WORKER) == folder and folder.is_dir()
