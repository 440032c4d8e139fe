"""TrainConfig checks: text keys, sections, aliases, subject lists, precedence of --steps, value ranges, and the
output / work folder paths, all refused with one ConfigError before any data is read."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.training.config import TrainConfig, config_from_dict, load_config


def _args(*argv: str) -> argparse.Namespace:
    from MedTranslateLib.training.cli import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(list(argv))


# ---------------------------------------------------------------- 1, 2: output and work folder
@pytest.mark.parametrize("output, work", [("o/m/", "o/m.work"), ("o/m", "o/m.work"), ("o/m.zip", "o/m.work"),
                                          ("o/m.ZIP", "o/m.work"), ("o/m.Zip/", "o/m.work")])
def test_the_work_folder_lies_beside_the_package(output, work):
    """``--output o/m/`` put the work folder inside the package (o/m/.work), and the export failed after the
    whole training; ``o/m.ZIP`` gave o/m.ZIP.work."""
    assert TrainConfig(output=output).work_path == Path(work)


@pytest.mark.parametrize("work, message", [("o/m", "is the package"), ("o/m/sub", "is inside the package"),
                                           ("o", "contains the package")])
def test_a_work_folder_that_is_inside_or_holds_the_package_is_refused_before_the_data_is_read(tmp_path, work,
                                                                                             message):
    from MedTranslateLib.training.loop import train

    config = TrainConfig(data=str(tmp_path / "no-data-here"), output=str(tmp_path / "o" / "m"),
                         work_dir=str(tmp_path / work), steps=1)
    with pytest.raises(ConfigError, match=message):
        train(config)


def test_a_trailing_slash_output_passes_the_destination_checks(tmp_path):
    from MedTranslateLib.training.workspace import check_destinations

    config = TrainConfig(data=str(tmp_path / "data"), output=str(tmp_path / "o" / "m") + "/")
    check_destinations(config)
    assert config.work_path == tmp_path / "o" / "m.work"


# ---------------------------------------------------------------- 3: splits
@pytest.mark.parametrize("overrides, message", [
    (["split=zslab", "val_subjects=A"], 'zslab" holds out slabs of one volume and does not use val_subjects'),
    (["split=zslab", 'test_subjects=["A"]'], "does not use test_subjects"),
    (["split=zslab", "slab_gap=-1"], "slab_gap must be 0 or more"),
    (["val_fraction=1"], "val_fraction must be at least 0 and below 1"),
    (["test_fraction=-0.1"], "test_fraction must be at least 0 and below 1"),
    (["split=zslab", "val_fraction=0.5", "test_fraction=0.5"], "val_fraction \\+ test_fraction must be below 1"),
    (["val_fraction=0.7", "test_fraction=0.4"], "val_fraction \\+ test_fraction must be below 1"),
])
def test_split_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*overrides, "data=/x"]).validate()
    assert load_config(None, ["split=zslab", "train_subjects=A", "test_fraction=0.3", "data=/x"]).validate()


# ---------------------------------------------------------------- 4: text keys stay text
def test_text_keys_are_kept_as_written():
    """--set version=1.10 became "1.1", model_id=1e3 "1000.0", and --work-dir 2024 a TypeError traceback."""
    config = load_config(None, ["version=1.10", "model_id=1e3", "description=42", "orientation=null",
                                'title="Quoted title"', "source_name=007"])
    assert (config.version, config.model_id, config.description, config.orientation, config.title,
            config.source_name) == ("1.10", "1e3", "42", None, "Quoted title", "007")
    config = load_config(None, **{"work_dir": "2024", "output": "2025", "data": "1.50", "model_id": "1e3",
                                  "title": "123"})
    assert (config.work_dir, config.output, config.data, config.model_id, config.title) == \
        ("2024", "2025", "1.50", "1e3", "123")
    assert config.work_path == Path("2024")


def test_text_flags_are_kept_as_written():
    from MedTranslateLib.training.cli import config_from_args

    config = config_from_args(_args("--data", "2023", "--work-dir", "2024", "--output", "1e3", "--id", "1.10",
                                    "--title", "true"))
    assert (config.data, config.work_dir, config.output, config.model_id, config.title) == \
        ("2023", "2024", "1e3", "1.10", "true")


@pytest.mark.parametrize("values, message", [({"version": 1.1}, "version must be text"),
                                             ({"source_name": 3}, "source_name must be text"),
                                             ({"work_dir": ["a"]}, "work_dir must be text"),
                                             ({"family": None}, "family must be text")])
def test_a_text_key_of_another_type_is_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


# ---------------------------------------------------------------- 5, 6: file shape, sample_data
@pytest.mark.parametrize("text", ["[1, 2]", "null", '"steps"', "3"])
def test_a_json_config_that_is_not_an_object_is_refused(tmp_path, text):
    path = tmp_path / "cfg.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not a table of settings"):
        load_config(path)


@pytest.mark.parametrize("toml", ['sample_data = "x"\n', '[sample_data]\nname = "a"\nsample = "b"\n',
                                  "sample_data = [1, 2]\n"])
def test_sample_data_of_the_wrong_shape_is_refused(tmp_path, toml):
    path = tmp_path / "cfg.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match="sample_data must be a list of tables"):
        load_config(path)
    with pytest.raises(ConfigError, match="sample_data must be a list of tables"):
        load_config(None, ['sample_data="x"'])
    path.write_text('[[sample_data]]\nname = "a"\nsample = "b"\nsha256 = "c"\n')
    assert load_config(path).sample_data == [{"name": "a", "sample": "b", "sha256": "c"}]


# ---------------------------------------------------------------- 7: sections
@pytest.mark.parametrize("toml, message", [
    ('family_option = { loss = "l1" }\n', "'family_option'.*Did you mean family_options"),
    ("[body_masks]\ndilate_mm = 8.0\n", "'body_masks'.*Did you mean body_mask"),
    ("[architecure]\nfeatures = [8, 16]\n", "'architecure'.*Did you mean architecture"),
    ("[trian]\nsteps = 5\n", "'trian'.*Did you mean train"),
])
def test_a_misspelled_table_is_named_with_a_suggestion(tmp_path, toml, message):
    """Every table was flattened as a section: the error named an inner key without a suggestion, and inner keys
    that are settings ([trian] steps = 5) were applied silently."""
    path = tmp_path / "cfg.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_known_sections_are_flattened_and_unknown_keys_point_to_the_guide(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text('[data]\nsplit = "zslab"\n[model]\nslice_size = [64, 64]\n[train]\nsteps = 7\n'
                    '[card]\nmodel_id = "m-1"\n[output]\nexport_half = true\n')
    config = load_config(path)
    assert (config.split, config.slice_size, config.steps, config.model_id, config.export_half) == \
        ("zslab", [64, 64], 7, "m-1", True)
    with pytest.raises(ConfigError, match="See docs/TRAINING.md section 3"):
        load_config(None, ["qqqqqqq=1"])


# ---------------------------------------------------------------- 8: aliases, dotted keys, misplaced keys
def test_aliases_and_dotted_keys():
    config = load_config(None, ["source=CBCT", "target=CT", "id=my-model", "learning_rate=1e-3",
                                "train.batch_size=2", "model.slice_size=[64, 64]", "card.version=1.10"])
    assert (config.source_modality, config.target_modality, config.model_id, config.lr, config.batch_size,
            config.slice_size, config.version) == ("CBCT", "CT", "my-model", 1e-3, 2, [64, 64], "1.10")
    assert config_from_dict({"train": {"learning-rate": 0.5}}).lr == 0.5
    # the keys the out-of-memory message names
    config = load_config(None, ["train.batch_size=1", "model.patch_size=[16, 32, 32]", "train.amp=true"])
    assert (config.batch_size, config.patch_size, config.amp) == (1, [16, 32, 32], True)
    with pytest.raises(ConfigError, match="'nosection.steps'"):
        load_config(None, ["nosection.steps=3"])


@pytest.mark.parametrize("override, message", [
    ("norm=instance", "'norm': it is a key of architecture.*architecture=\\{\"norm\""),
    ("features=[4, 8]", "'features': it is a key of architecture"),
    ("loss=l1", "'loss': it is a key of family_options"),
])
def test_a_family_key_given_at_the_top_level_points_to_its_table(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


# ---------------------------------------------------------------- 9: subject lists
@pytest.mark.parametrize("value, subjects", [("1PA001", ["1PA001"]), ("1PA001,1PA003", ["1PA001", "1PA003"]),
                                             ("1PA001, 1PA003", ["1PA001", "1PA003"]),
                                             ('["1PA001", "1PA003"]', ["1PA001", "1PA003"]), ("null", None)])
def test_a_subject_list_may_be_one_subject_or_comma_separated(value, subjects):
    """--set val_subjects=1PA001 was split into the characters '1', 'P', 'A', ..."""
    assert load_config(None, [f"val_subjects={value}"]).val_subjects == subjects
    assert config_from_dict({"test_subjects": "A,B"}).test_subjects == ["A", "B"]
    with pytest.raises(ConfigError, match="train_subjects must be a list of subject ids as text"):
        load_config(None, ["train_subjects=[1, 2]"])


# ---------------------------------------------------------------- 10: --steps after epochs
def test_steps_given_later_clears_epochs_from_the_file(tmp_path):
    """epochs in the config file silently overrode an explicit --steps."""
    from MedTranslateLib.training.cli import config_from_args

    path = tmp_path / "cfg.toml"
    path.write_text("[train]\nepochs = 5\nsteps = 100\n")
    assert load_config(path).epochs == 5
    config = config_from_args(_args("--config", str(path), "--steps", "3"))
    assert (config.steps, config.epochs) == (3, None)
    config = load_config(path, ["steps=4"])
    assert (config.steps, config.epochs) == (4, None)
    config = config_from_args(_args("--config", str(path), "--steps", "3", "--epochs", "2"))
    assert (config.steps, config.epochs) == (3, 2)  # epochs given in the same layer still wins
    config = load_config(path, ["epochs=2"], steps=None)
    assert config.epochs == 2


# ---------------------------------------------------------------- 11, 12: numbers
@pytest.mark.parametrize("override", ["lr=Infinity", "lr=NaN", "min_lr_fraction=NaN", "body_fraction=NaN",
                                      "overlap=Infinity", "val_fraction=NaN", "spacing=[1, 1, NaN]"])
def test_a_number_that_is_not_finite_is_refused(override):
    """lr = Infinity trained a NaN network and exported it with exit code 0."""
    with pytest.raises(ConfigError, match="finite|must be|spacing"):
        load_config(None, [override, "data=/x"]).validate()


@pytest.mark.parametrize("override, message", [("steps=true", "steps must be a number"),
                                               ("batch_size=false", "batch_size must be a number"),
                                               ("epochs=true", "epochs must be a whole number"),
                                               ("lr=true", "lr must be a number"),
                                               ("seed=NaN", "seed must be an integer")])
def test_a_boolean_is_no_number(override, message):
    """steps = true trained one step."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("settings, message", [
    (dict(dimensionality="2d", context_slices=3), "context_slices is for 2.5d"),
    (dict(dimensionality="3d", context_slices=1), "context_slices is for 2.5d"),
    (dict(dimensionality="3d", slice_size=[64, 64]), "slice_size is the 2d/2.5d training crop"),
])
def test_settings_the_dimensionality_would_ignore_are_refused(settings, message):
    """They were silently ignored: a 2d card has no context_slices, a 3d run no slice_size."""
    with pytest.raises(ConfigError, match=message):
        TrainConfig(data="x", **settings).validate()
    TrainConfig(data="x", dimensionality="2.5d", context_slices=3, slice_size=[64, 64]).validate()


def test_paths_in_a_config_file_start_from_the_home_folder_with_a_tilde(tmp_path, monkeypatch):
    """`data = "~/x"` was looked for as a folder named ~ beside the config file."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config_file = tmp_path / "cfg" / "train.toml"
    config_file.parent.mkdir()
    config_file.write_text('data = "~/data"\noutput = "~/models/m"\n[train]\nwork_dir = "~/work"\n', encoding="utf-8")
    config = load_config(config_file)
    assert (config.data, config.output, config.work_dir) == tuple(
        str(tmp_path / "home" / name) for name in ("data", "models/m", "work"))
    assert load_config(config_file, ["data=rel"]).data == "rel"  # --set text is relative to the working folder


def test_a_config_folder_is_not_called_missing(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(tmp_path)


def test_max_cases_that_cuts_off_a_listed_subject_says_so(tmp_path):
    """It said the subject was unknown, though it was only beyond max_cases."""
    from MedTranslateLib.progress import ProgressTracker
    from MedTranslateLib.training.run_data import load_data
    from test_training_loop import write_pairs

    data = write_pairs(tmp_path / "data", n=3)
    config = TrainConfig(data=str(data), layout="paired_folder", source_name="mr", target_name="ct", max_cases=1,
                         val_subjects=["subj2"])
    with pytest.raises(ConfigError, match=r"max_cases = 1 keeps the first 1 case\(s\).*\['subj2'\]"):
        load_data(config, {}, ProgressTracker())
