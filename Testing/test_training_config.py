"""TrainConfig: TOML/JSON loading, overrides, unknown keys, default normalisation, CLI arguments."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.training.config import TrainConfig, default_normalization, load_config


def test_toml_sections_overrides_and_flags(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text('family = "pix2pix"\n[data]\ndata = "ds"\nval_fraction = 0.25\n'
                    '[train]\nsteps = 50\nlr = 1e-3\namp = false\narchitecture = {features = [8, 16]}\n')
    config = load_config(path, ["steps=70", "batch_size=2", "patch_size=[16,32,32]", "deterministic=true"],
                         seed=5, model_id=None)
    assert config.family == "pix2pix" and config.steps == 70 and config.batch_size == 2 and config.lr == 1e-3
    assert config.patch_size == [16, 32, 32] and config.deterministic is True and config.amp is False
    assert config.seed == 5 and config.architecture == {"features": [8, 16]}
    assert config.data == str((tmp_path / "ds").resolve())  # relative to the config file
    assert config.val_fraction == 0.25


def test_json_and_errors(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"family": "unet", "data": "/x", "dimensionality": "2.5d"}))
    config = load_config(path)
    assert config.n_context == 2 and config.spatial_dims == 2
    path.write_text(json.dumps({"famly": "unet"}))
    with pytest.raises(ConfigError, match="famly"):
        load_config(path)
    with pytest.raises(ConfigError, match="bogus_key"):
        load_config(None, ["bogus_key=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["steps"])
    with pytest.raises(ConfigError, match="integer"):
        load_config(None, ["steps=1.5"])
    with pytest.raises(ConfigError, match="true or false"):
        load_config(None, ["amp=maybe"])
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    with pytest.raises(ConfigError, match="parse"):
        load_config(bad)
    with pytest.raises(ConfigError, match="dimensionality"):
        TrainConfig(data="/x", dimensionality="4d").validate()
    with pytest.raises(ConfigError, match="No training data"):
        TrainConfig().validate()


def test_default_normalisation():
    assert default_normalization("CT") == {"method": "clip", "range": [-1024.0, 3071.0]}
    assert default_normalization("CBCT", "output")["background"] == -1024.0
    mr_in = default_normalization("MR")
    assert mr_in["method"] == "percentile" and mr_in["percentiles"] == [0.5, 99.5] and mr_in["within_mask"]
    t2_out = default_normalization("T2", "output")
    assert t2_out["output_range"] == [0.0, 1000.0]
    config = TrainConfig(source_modality="T1", target_modality="FLAIR", data="/x")
    assert config.output_normalization()["output_range"] == [0.0, 1000.0]
    assert config.input_normalization()["method"] == "percentile"


def test_cli_arguments(tmp_path):
    from MedTranslateLib.training.cli import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    cfg = tmp_path / "c.toml"
    cfg.write_text('steps = 10\nfamily = "unet"\n')
    args = parser.parse_args(["--config", str(cfg), "--data", "/d", "--steps", "20", "--set", "lr=0.01",
                              "--batch-size", "3", "--resume", "--id", "my-model"])
    config = config_from_args(args)
    assert (config.steps, config.lr, config.batch_size, config.data, config.resume, config.model_id) == \
        (20, 0.01, 3, "/d", True, "my-model")
    assert config_from_args(parser.parse_args(["--data", "/d"])).resume is False


def test_example_config_loads():
    from pathlib import Path

    import MedTranslateLib.training as training

    example = Path(training.__file__).parent / "example_train.toml"
    config = load_config(example, ["data=/d"])
    assert config.family == "unet" and config.slice_size == [128, 128] and config.model_id == "my-mr-sct"
    assert config.validate() is config


def test_card_sample_data_comes_from_the_config():
    """The demo model's Slicer sample volumes are part of its training config, so retraining keeps them."""
    import json

    from MedTranslateLib.models.registry import BUILTIN_DIR
    from MedTranslateLib.training.card_builder import base_card
    from MedTranslateLib.training.config import load_config

    config_dir = Path(__file__).resolve().parents[1] / "MedTranslateLib" / "configs"
    config = load_config(config_dir / "mr2ct-headphantom-unet2d.toml", data="/nonexistent")
    shipped = json.loads((BUILTIN_DIR / "mr2ct-headphantom-unet2d" / "model.json").read_text())
    assert base_card(config)["sample_data"] == shipped["sample_data"] and len(shipped["sample_data"]) == 2
    assert "sample_data" not in base_card(load_config(None, data="/nonexistent"))


@pytest.mark.parametrize("override, message", [
    ("steps=abc", "steps must be a number"), ("lr=abc", "lr must be a number"),
    ("architecture=abc", "architecture must be a table"), ("slice_size=[96]", "slice_size must be 2 whole numbers"),
    ("epochs=-1", "epochs must be at least 1"), ("max_cases=-1", "max_cases must be at least 1"),
    ("body_fraction=5", "body_fraction must be between 0 and 1"), ("context_slices=-1", "context_slices must be 0"),
    ('normalization_input={"method": "clip", "range": [5, 1]}', "normalization_input: Normalisation range"),
    ('normalization_output={"method": "zscore"}', "normalization_output: .* has no output_range"),
    ('body_mask={"dilate": 3}', "Unknown body_mask setting 'dilate'"),
    ('body_mask={"method": "threshold"}', "needs a threshold"),
    ('family_options={"loss": "l2"}', "Unknown unet loss 'l2'"),
    ('architecture={"schedule": "cosine"}', "does not use architecture key 'schedule'"),
])
def test_a_bad_value_is_one_config_error_before_training(override, message):
    """Text for a number, a list of the wrong length, a negative count: exit 6 with the setting's name, never a
    traceback from deep inside training (or a silently untrained model). A card field the export would refuse,
    or an unknown loss, used to fail only after training or at the first step."""
    family = ["family=bridge"] if "schedule" in override else []
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override, "data=somewhere", *family]).validate()


@pytest.mark.parametrize("override, message", [("model_id=My Model", "card this run would write is invalid: id"),
                                               ("overlap=0.99", "input.overlap")])
def test_a_card_the_export_would_refuse_is_refused_before_training(override, message):
    """An invalid model id used to fail at the export, after the whole training."""
    from MedTranslateLib.training.card_builder import check_card

    with pytest.raises(ConfigError, match=message):
        check_card(load_config(None, [override, "data=somewhere"]).validate())


def test_tensorboard_logs_need_tensorboard(monkeypatch):
    """Without the package, log = tensorboard quietly wrote only the CSV logs."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        load_config(None, ["log=tensorboard", "data=somewhere"]).validate()


@pytest.mark.parametrize("overrides, message", [
    (['architecture={"feature": [8, 16]}'], "unet family does not use architecture key 'feature'. Did you mean "
                                            "'features'"),
    (['family_options={"los": "l1+ssim"}'], "does not use family_options key 'los'. Did you mean 'loss'"),
    (["family=pix2pix", 'family_options={"l1_wieght": 10}'], "Did you mean 'l1_weight'"),
    (["family=diffusion", 'architecture={"chanels": [8, 16]}'], "Did you mean 'channels'"),
    (["family=random_forest", 'family_options={"n_tree": 3}'], "Did you mean 'n_trees'"),
    (["family=bridge", 'family_options={"loss": "l1"}'], "bridge family does not use family_options key 'loss'"),
    (["family=unett"], "Unknown family 'unett'. Did you mean 'unet'"),
])
def test_a_mistyped_family_key_is_refused(overrides, message):
    """A typo inside architecture or family_options used to be ignored: the run trained the default network."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*overrides, "data=somewhere"]).validate()


def test_every_shipped_config_uses_only_keys_its_family_reads():
    config_dir = Path(__file__).resolve().parents[1] / "MedTranslateLib" / "configs"
    configs = sorted(config_dir.glob("*.toml"))
    assert len(configs) >= 10
    for path in configs:
        assert load_config(path, data="/nonexistent").validate()
    # every family accepts the keys its own networks read (and the bridge the diffusion ones)
    assert load_config(None, ["family=bridge", 'architecture={"channels": [32, 64], "attention_levels": [false, false], '
                              '"bridge_variance": 0.5}',
                              'family_options={"masked_loss": true}', "data=d"]).validate()


def test_the_training_guide_describes_every_setting_and_family_key():
    """docs/TRAINING.md lists every TrainConfig field and every family's architecture and family_options keys."""
    from dataclasses import fields

    from MedTranslateLib.families import FAMILY_NAMES, get_family

    guide = (Path(__file__).resolve().parents[1] / "docs" / "TRAINING.md").read_text()
    missing = [f.name for f in fields(TrainConfig) if f"`{f.name}`" not in guide]
    for name in FAMILY_NAMES:
        family = get_family(name)
        missing += [f"{name}: {key}" for key in sorted(family.architecture_keys | family.option_keys)
                    if f"`{key}`" not in guide]
    assert not missing, missing


def test_bundled_configs_load_by_name(tmp_path, monkeypatch):
    """A wheel install has the configs inside site-packages: --config takes their names from any folder."""
    monkeypatch.chdir(tmp_path)
    assert load_config("mr2ct-phantom-unet2d").family == "unet"
    assert load_config("example_train.toml").family == load_config("example_train").family
    (tmp_path / "example_train").write_text('{"family": "pix2pix"}')  # a file of that name wins
    assert load_config("example_train").family == "pix2pix"
    with pytest.raises(ConfigError, match="mr2ct-phantom-unet2d"):  # the fix lists the bundled names
        load_config("no-such-config")
    with pytest.raises(ConfigError):
        load_config("sub/mr2ct-phantom-unet2d")  # a path is a path


def test_configs_are_utf8_wherever_they_are_read(tmp_path):
    """TOML and JSON are UTF-8 (Windows would read them as cp1252): a path with accents survives, a byte-order
    mark is dropped, and a file in another encoding is one clear error."""
    path = tmp_path / "cfg.toml"
    path.write_bytes('\ufeffdata = "/data/José/Łódź"\n'.encode("utf-8"))
    assert load_config(path).data == "/data/José/Łódź"
    path.write_bytes('data = "/data/José"\n'.encode("cp1252"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_an_architecture_value_of_the_wrong_type_is_refused_before_training():
    with pytest.raises(ConfigError, match=r"architecture.residual must be true or false \(without quotes\)"):
        load_config(None, ['architecture={"residual": "false"}', "data=/x"]).validate()
