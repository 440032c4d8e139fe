"""End-to-end training: loss goes down, resume continues exactly, export gives a valid package with held-out
metrics, the split keeps subjects apart, z-slab hold-out and the CLI entry point (multi-process runs:
test_training_distributed.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from MedTranslateLib.errors import ConfigError, OutputError

REPO = Path(__file__).resolve().parents[1]
TINY_UNET = {"features": [4, 8, 16, 16]}


def write_pairs(root: Path, n: int = 3, shape=(10, 32, 32)) -> Path:
    """Paired MR/CT folders: CT is a fixed function of MR inside the body (learnable), air outside."""
    import SimpleITK as sitk

    for i in range(n):
        rng = np.random.default_rng(i)
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
        r = 0.6 + 0.1 * rng.random()
        body = (x**2 + y**2 + 0.3 * z**2) < r
        bone = body & ((x**2 + y**2) > 0.7 * r)
        mr = np.where(body, np.where(bone, 80.0, 400.0 + 100 * x), 2.0) + rng.normal(0, 3, shape)
        ct = np.where(body, np.where(bone, 1200.0, 40.0 + 30 * x), -1000.0)
        folder = root / f"subj{i}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, arr in (("mr", mr), ("ct", ct)):
            image = sitk.GetImageFromArray(arr.astype(np.float32))
            image.SetSpacing((1.0, 1.0, 2.0))
            sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
        mask = sitk.GetImageFromArray(body.astype(np.uint8))
        mask.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(mask, str(folder / "mask.nii.gz"))
    return root


def _unpaired_folders(tmp_path: Path) -> Path:
    """``<tmp>/un/mr/*.nii.gz`` and ``<tmp>/un/ct/*.nii.gz`` from three different subjects."""
    import shutil

    pairs = write_pairs(tmp_path / "pairs", n=3)
    for i, kind in ((0, "mr"), (1, "ct"), (2, "ct")):
        (tmp_path / "un" / kind).mkdir(parents=True, exist_ok=True)
        shutil.copy(pairs / f"subj{i}" / f"{kind}.nii.gz", tmp_path / "un" / kind / f"subj{i}.nii.gz")
    return tmp_path / "un"


def _config(tmp_path: Path, **overrides):
    from MedTranslateLib.training.config import TrainConfig

    values = dict(data=str(write_pairs(tmp_path / "data")), layout="paired_folder", family="unet",
                  architecture=TINY_UNET, steps=30, batch_size=4, lr=3e-3, val_interval=15, log_interval=5,
                  checkpoint_interval=15, val_fraction=0.34, test_fraction=0.34, device="cpu",
                  output=str(tmp_path / "pkg"), model_id="test-mr-ct", title="Test MR to CT")
    values.update(overrides)
    return TrainConfig(**values)


def _schema() -> dict:
    return json.loads((REPO / "MedTranslateLib/models/model.schema.json").read_text())


def test_train_lowers_loss_and_exports_valid_package(tmp_path):
    from safetensors.torch import load_file

    from MedTranslateLib.progress import ProgressTracker
    from MedTranslateLib.training.loop import STAGES, train

    events = []
    config = _config(tmp_path, steps=24, val_interval=12, checkpoint_interval=12)
    result = train(config, ProgressTracker(STAGES, events.append, min_interval=0.0))
    losses = [row for row in result.history if not row.get("validation")]
    first, last = losses[0], losses[-1]
    key = next(k for k in first if k not in ("step", "seconds"))
    assert last[key] < 0.8 * first[key], (first, last)
    # progress: losses in messages, fractions never go down, time left reported
    train_events = [e for e in events if e.stage == "train" and e.message.startswith("step") and ": " not in e.message]
    assert train_events and key in train_events[-1].message
    assert all(b.fraction >= a.fraction for a, b in zip(events, events[1:]))
    assert any(e.eta_seconds is not None for e in train_events)
    validating = [e for e in events if e.stage == "train" and "validation case 1/1" in e.message]
    assert {e.message.split(":")[0] for e in validating} == {"step 12/24", "step 24/24"}
    held_out = [e for e in events if e.stage == "evaluate" and e.message.startswith("held-out case 1/1")]
    assert any(e.message.endswith("slices") for e in held_out) and held_out[-1].stage_fraction == 1.0
    # package: valid card with held-out TEST metrics and the split recorded by subject
    card = json.loads((result.package / "model.json").read_text())
    jsonschema.validate(card, _schema())
    assert result.metrics_on == "test" and "test" in card["metrics"]["data"]
    assert card["metrics"]["values"]["mae"] == pytest.approx(result.best_metrics["mae"])
    split = card["training"]["split"]
    train_s, val_s, test_s = set(split["train"]), set(split["val"]), set(split["test"])
    assert train_s and val_s and test_s and not (train_s & val_s or train_s & test_s or val_s & test_s)
    assert card["clinical_use"] is False and "intensity_reference" in card
    assert card["normalization"]["input"]["method"] == "percentile"
    assert card["normalization"]["output"] == {"method": "clip", "range": [-1024.0, 3071.0], "background": -1024.0}
    weights = load_file(str(result.package / card["weights"]["file"]))
    assert weights and all(np.isfinite(v.float().numpy()).all() for v in weights.values())
    work = config.work_path
    assert (work / "train_log.csv").is_file() and (work / "validation_log.csv").is_file()
    assert result.best_step in (12, 24)


@pytest.mark.parametrize("augment", [False, True])
def test_resume_continues_like_an_uninterrupted_run(tmp_path, augment):
    """Also with augmentation: its randomness comes from the sampler's checkpointed generator."""
    from safetensors.torch import load_file

    from MedTranslateLib.training.loop import train

    straight = train(_config(tmp_path / "a", steps=6, val_fraction=0.0, test_fraction=0.0, checkpoint_interval=3,
                             augment=augment))
    first = train(_config(tmp_path / "b", steps=3, val_fraction=0.0, test_fraction=0.0, checkpoint_interval=3,
                          augment=augment))
    assert first.steps == 3
    state = json.loads((_config(tmp_path / "b").work_path / "checkpoint" / "state.json").read_text())
    assert state["state"]["step"] == 3 and state["optimizers"]
    resumed = train(_config(tmp_path / "b", steps=6, val_fraction=0.0, test_fraction=0.0, checkpoint_interval=3,
                            resume=True, augment=augment))
    assert resumed.steps == 6 and resumed.metrics_on == "none"
    a = load_file(str(straight.package / "weights.safetensors"))
    b = load_file(str(resumed.package / "weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert np.allclose(a[key].numpy(), b[key].numpy(), atol=1e-5), key


def test_zslab_holdout_on_one_volume(tmp_path):
    from MedTranslateLib.training.loop import train

    config = _config(tmp_path, split="zslab", steps=6, val_fraction=0.0, test_fraction=0.3, slab_gap=1,
                     val_interval=100, max_cases=1, augment=True, log="tensorboard")
    result = train(config)
    assert (config.work_path / "tensorboard").is_dir()
    card = json.loads((result.package / "model.json").read_text())
    split = card["training"]["split"]
    assert split["method"] == "z-slab" and split["train"][1] + 1 == split["test"][0]
    assert result.metrics_on == "test" and result.best_metrics["mae"] is not None


def test_zslab_holdout_adds_further_train_subjects_whole(tmp_path):
    from MedTranslateLib.errors import ConfigError
    from MedTranslateLib.training import card_builder
    from MedTranslateLib.training.run_data import load_data
    from MedTranslateLib.progress import ProgressTracker

    config = _config(tmp_path, split="zslab", val_fraction=0.0, test_fraction=0.3, slab_gap=1,
                     train_subjects=["subj1", "subj0"])
    data = load_data(config, card_builder.base_card(config), ProgressTracker())
    assert data.split["subject"] == "subj1" and data.split["extra_train_subjects"] == ["subj0"]
    assert [c.subject_id for c in data.train] == ["subj1", "subj0"] and [c.subject_id for c in data.test] == ["subj1"]
    z0, z1 = data.split["train"]
    assert data.train[0].source.shape[0] == z1 - z0 and data.train[1].source.shape[0] == 10  # subj0 whole
    assert data.test[0].source.shape[0] == data.split["test"][1] - data.split["test"][0]
    with pytest.raises(ConfigError, match="nobody"):
        load_data(_config(tmp_path / "b", split="zslab", train_subjects=["nobody"]), card_builder.base_card(config),
                   ProgressTracker())


@pytest.mark.parametrize("dims", ["2.5d", "3d"])
def test_25d_and_3d_training(tmp_path, dims):
    from MedTranslateLib.training.loop import train

    # 2.5d counts in epochs (1 epoch of 2 steps), 3d in steps
    epochs = {"epochs": 1, "steps_per_epoch": 2} if dims == "2.5d" else {}
    config = _config(tmp_path, dimensionality=dims, steps=2 if not epochs else 99, batch_size=2, val_fraction=0.34,
                     test_fraction=0.0, patch_size=[16, 16, 16], val_interval=2, **epochs)
    result = train(config)
    assert result.steps == 2
    card = json.loads((result.package / "model.json").read_text())
    jsonschema.validate(card, _schema())
    assert card["dimensionality"] == dims and result.metrics_on == "validation"
    assert result.best_metrics["mae"] is not None
    if dims == "2.5d":
        assert card["architecture"]["in_channels"] == 5 and card["input"]["context_slices"] == 2
    else:
        assert card["input"]["patch_size"] == [16, 16, 16]


def test_cancel_keeps_a_resumable_checkpoint(tmp_path):
    from MedTranslateLib.errors import Cancelled
    from MedTranslateLib.progress import CancelToken, ProgressTracker
    from MedTranslateLib.training.loop import STAGES, train

    token = CancelToken()

    def cancel_at_step_2(event):
        if event.message.startswith("step 2/"):
            token.cancel()

    config = _config(tmp_path, steps=50, val_fraction=0.0, test_fraction=0.0, checkpoint_interval=100)
    with pytest.raises(Cancelled):
        train(config, ProgressTracker(STAGES, cancel_at_step_2, token, min_interval=0.0))
    state = json.loads((config.work_path / "checkpoint" / "state.json").read_text())
    assert state["state"]["step"] == 3  # the cancel is seen at the next progress update, after step 3
    assert not (tmp_path / "pkg").exists()


def test_out_of_memory_while_training_is_one_clear_error_with_a_resumable_checkpoint(tmp_path, monkeypatch):
    import torch

    from MedTranslateLib.errors import DeviceError
    from MedTranslateLib.families.unet import UNetFamily
    from MedTranslateLib.training.loop import train

    real_step, calls = UNetFamily.training_step, []

    def step_then_oom(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(UNetFamily, "training_step", step_then_oom)
    config = _config(tmp_path, steps=50, val_fraction=0.0, test_fraction=0.0, checkpoint_interval=100)
    with pytest.raises(DeviceError, match="ran out of memory at training step 3") as caught:
        train(config)
    assert "batch_size" in caught.value.fix and "--resume" in caught.value.fix
    state = json.loads((config.work_path / "checkpoint" / "state.json").read_text())
    assert state["state"]["step"] == 2
    assert not (tmp_path / "pkg").exists()


def test_unpaired_family_trains_on_unpaired_folders(tmp_path):
    from MedTranslateLib.training.loop import train

    _unpaired_folders(tmp_path)
    config = _config(tmp_path, data=str(tmp_path / "un"), layout="auto", family="cyclegan", steps=2,
                     batch_size=2, val_fraction=0.0, test_fraction=0.0)
    result = train(config)
    assert result.steps == 2 and result.metrics_on == "none"
    card = json.loads((result.package / "model.json").read_text())
    assert card["family"] == "cyclegan" and card["metrics"]["values"] == {}
    # the card records the layout "auto" found, so its config reproduces the run
    assert card["training"]["config"]["layout"] == "unpaired" and "(unpaired layout)" in card["training"]["data"]


@pytest.mark.parametrize("family", ["cyclegan", "unet"])
def test_only_paired_families_train_on_pairs_of_paired_data(tmp_path, monkeypatch, family):
    from MedTranslateLib.training import loop

    samplers = []

    class RecordingSampler(loop.Sampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            samplers.append(self)

    monkeypatch.setattr(loop, "Sampler", RecordingSampler)
    loop.train(_config(tmp_path, family=family, steps=2, batch_size=2, val_fraction=0.0, test_fraction=0.0))
    # CycleGAN must not see the pairs a paired dataset happens to contain; a U-Net needs them
    assert [s.paired for s in samplers] == [family == "unet"]


def test_random_forest_is_fitted_not_stepped(tmp_path):
    from MedTranslateLib.progress import ProgressTracker
    from MedTranslateLib.training.loop import STAGES, train

    config = _config(tmp_path, family="random_forest", architecture={}, val_fraction=0.0, test_fraction=0.34,
                     family_options={"n_trees": 3, "max_depth": 6, "n_samples": 3000})
    events = []
    result = train(config, ProgressTracker(STAGES, events.append, min_interval=0.0))
    card = json.loads((result.package / "model.json").read_text())
    jsonschema.validate(card, _schema())
    assert card["architecture"]["n_trees"] == 3 and result.steps == 0
    assert [e.message for e in events if e.stage == "train" and "trees" in e.message] == [
        "1/3 trees", "2/3 trees", "3/3 trees"]
    assert result.metrics_on == "test" and result.best_metrics["mae"] < 100  # HU; the mean as a constant guess gives ~500


def test_random_forest_fit_can_be_cancelled_between_trees(tmp_path):
    from MedTranslateLib.errors import Cancelled
    from MedTranslateLib.progress import CancelToken, ProgressTracker
    from MedTranslateLib.training.loop import STAGES, train

    config = _config(tmp_path, family="random_forest", architecture={}, val_fraction=0.0, test_fraction=0.34,
                     family_options={"n_trees": 20, "max_depth": 6, "n_samples": 3000})
    token, heard = CancelToken(), []

    def cancel_after_two_trees(event):
        heard.append(event.message)
        if event.message == "2/20 trees":
            token.cancel()

    with pytest.raises(Cancelled):
        train(config, ProgressTracker(STAGES, cancel_after_two_trees, token, min_interval=0.0))
    assert heard[-1] == "2/20 trees" and not (tmp_path / "pkg").exists()


def test_cli_entry_point(tmp_path):
    import argparse

    from MedTranslateLib.training.cli import add_train_arguments, run_train

    data = write_pairs(tmp_path / "data", n=2)
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'family = "unet"\ndata = "{data}"\nlayout = "paired_folder"\nval_fraction = 0.5\n'
                   f'architecture = {{features = [4, 8, 16, 16]}}\nbatch_size = 2\nval_interval = 3\n')
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--config", str(cfg), "--steps", "2", "--output", str(tmp_path / "cli_pkg"),
                              "--device", "cpu", "--progress", "none", "--id", "cli-model"])
    assert run_train(args) == 0
    card = json.loads((tmp_path / "cli_pkg" / "model.json").read_text())
    assert card["id"] == "cli-model" and card["training"]["steps"] == 2
    assert card["metrics"]["data"].startswith("Held-out validation")


def test_learning_rate_schedule_warmup_then_cosine():
    from MedTranslateLib.training.config import TrainConfig
    from MedTranslateLib.training.loop import lr_factor

    config = TrainConfig(lr_schedule="cosine", warmup_steps=4, min_lr_fraction=0.1)
    factors = [lr_factor(config, step, 24) for step in range(24)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1)
    assert all(b <= a + 1e-12 for a, b in zip(factors[4:], factors[5:]))  # decays monotonically
    assert lr_factor(TrainConfig(), 100, 200) == 1.0  # constant by default


def test_cosine_schedule_reaches_the_optimizer(tmp_path):
    from MedTranslateLib.training.loop import train

    config = _config(tmp_path, steps=6, val_fraction=0.0, test_fraction=0.0, checkpoint_interval=6,
                     lr_schedule="cosine", min_lr_fraction=0.2)
    train(config)
    state = json.loads((config.work_path / "checkpoint" / "state.json").read_text())
    groups = [g for meta in state["optimizers"].values() for g in meta["param_groups"]]
    assert groups and all(g["lr"] == pytest.approx(0.2 * g["initial_lr"]) for g in groups)
    assert all(g["initial_lr"] == pytest.approx(config.lr) for g in groups)


def test_bad_schedule_is_refused():
    from MedTranslateLib.errors import ConfigError
    from MedTranslateLib.training.config import TrainConfig

    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(data="x", lr_schedule="linear").validate()
    with pytest.raises(ConfigError, match="min_lr_fraction"):
        TrainConfig(data="x", min_lr_fraction=2.0).validate()


def test_a_paired_family_refuses_unpaired_data(tmp_path, monkeypatch):
    """Refused before any volume is prepared (it came after every case had been read and resampled)."""
    from MedTranslateLib.training import run_data
    from MedTranslateLib.training.loop import train

    def no_preparation(*args, **kwargs):
        raise AssertionError("cases were prepared before the refusal")

    monkeypatch.setattr(run_data, "load_cases_prepared", no_preparation)
    _unpaired_folders(tmp_path)
    config = _config(tmp_path, data=str(tmp_path / "un"), layout="unpaired", family="unet", steps=2,
                     val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(ConfigError, match="unet learns from pairs.*cyclegan or contourdiff"):
        train(config)
    assert not (tmp_path / "pkg").exists()


def test_a_diverging_run_stops_and_exports_nothing(tmp_path):
    from MedTranslateLib.training.loop import train

    with pytest.raises(ConfigError, match="diverged at step .* not finite") as caught:
        train(_config(tmp_path, lr=1e30, steps=20, val_fraction=0.0, test_fraction=0.0))
    assert "Lower the learning rate" in caught.value.fix and not (tmp_path / "pkg").exists()


def test_destinations_are_checked_before_training(tmp_path):
    from MedTranslateLib.training.loop import train

    data = write_pairs(tmp_path / "data")
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    with pytest.raises(OutputError, match="not a package zip"):
        train(_config(tmp_path, data=str(data), output=str(taken)))
    with pytest.raises(ConfigError, match="inside the training data folder"):
        train(_config(tmp_path, data=str(data), output=str(data / "my_model")))
    assert taken.read_text() == "mine" and not (tmp_path / "notes.txt.work").exists()
    assert sorted(p.name for p in data.iterdir()) == ["subj0", "subj1", "subj2"]  # nothing written into the data


def test_ctrl_c_keeps_a_checkpoint_to_resume_from(tmp_path, monkeypatch):
    from MedTranslateLib.training import loop

    calls = []
    real = loop._set_learning_rates

    def interrupt_at_step_four(optimizers, factor):
        calls.append(factor)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real(optimizers, factor)

    monkeypatch.setattr(loop, "_set_learning_rates", interrupt_at_step_four)
    config = _config(tmp_path, steps=8, checkpoint_interval=100, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(KeyboardInterrupt):
        loop.train(config)
    state = json.loads((config.work_path / "checkpoint" / "state.json").read_text())
    assert state["state"]["step"] == 3
    monkeypatch.setattr(loop, "_set_learning_rates", real)
    config.resume = True
    assert loop.train(config).steps == 8


def test_a_new_run_starts_new_logs(tmp_path):
    import csv

    from MedTranslateLib.training.loop import train

    config = _config(tmp_path, steps=4, log_interval=1, val_fraction=0.0, test_fraction=0.0)
    train(config)
    train(config)  # again, into the same work folder, without --resume
    with (config.work_path / "train_log.csv").open() as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == [1, 2, 3, 4]
    config = _config(tmp_path, steps=2, log_interval=1, val_fraction=0.0, test_fraction=0.0, log="none",
                     work_dir=str(tmp_path / "quiet"), output=str(tmp_path / "quiet-pkg"))
    train(config)
    assert not list((tmp_path / "quiet").glob("*_log.csv"))  # log = none writes no logs


def test_the_exported_weights_are_the_best_validated_ones(tmp_path):
    """Validation at every step: the package holds the weights of the best validation, not the last step's (on the
    CPU the kept "best" weights were the live parameters, so the last step's were exported)."""
    from safetensors.torch import load_file

    from MedTranslateLib.families.base import pack_state
    from MedTranslateLib.training.loop import train

    net = torch.nn.Linear(2, 2)
    snapshot = pack_state({"n": net})
    with torch.no_grad():
        net.weight.add_(1.0)
    assert not torch.equal(snapshot["n.weight"], net.weight)

    config = _config(tmp_path, steps=4, val_interval=1, test_fraction=0.0, lr=5e-2)
    result = train(config)
    best = load_file(str(config.work_path / "best.safetensors"))
    exported = load_file(str(result.package / "weights.safetensors"))
    assert best.keys() == exported.keys()
    for key in best:  # exported in float16 when export_half; compare at that precision
        assert torch.allclose(best[key].float(), exported[key].float(), atol=1e-3, rtol=1e-3), key


def test_a_resume_without_checkpoint_and_a_zip_output(tmp_path):
    """--resume with nothing to resume fails before loading data and leaves no work folder; an --output ending
    in .zip writes a zipped package (it made a folder named model.zip)."""
    from MedTranslateLib.errors import ConfigError
    from MedTranslateLib.training.loop import train

    config = _config(tmp_path, steps=1, resume=True)
    with pytest.raises(ConfigError, match="No checkpoint to resume from"):
        train(config)
    assert not config.work_path.exists()
    result = train(_config(tmp_path, steps=1, val_fraction=0.0, test_fraction=0.0, output=str(tmp_path / "m.zip")))
    assert result.package.is_file() and result.package.suffix == ".zip"


@pytest.mark.parametrize("family", ["unet", "random_forest"])
def test_the_card_metrics_are_measured_on_the_weights_the_package_ships(tmp_path, monkeypatch, family):
    """With export_half the package holds float16 weights, but the held-out metrics were measured with the float32
    ones (for a random forest, 7 % of the voxels changed, by up to 11 HU)."""
    from safetensors.torch import load_file

    from MedTranslateLib.training import loop

    measured = []
    real_evaluate = loop.evaluate_prepared

    def evaluate_and_record(family_, nets, *args, **kwargs):
        measured.append({f"{name}.{key}": value.clone() for name, net in nets.items()
                         for key, value in net.state_dict().items()})
        return real_evaluate(family_, nets, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_prepared", evaluate_and_record)
    options = {"n_trees": 3, "max_depth": 6, "n_samples": 2000} if family == "random_forest" else {}
    config = _config(tmp_path, family=family, steps=3, val_interval=3, export_half=True, family_options=options,
                     architecture={} if family == "random_forest" else TINY_UNET)
    result = loop.train(config)
    shipped = load_file(str(result.package / "weights.safetensors"))
    held_out = measured[-1]
    assert shipped.keys() <= held_out.keys()
    assert any(v.dtype == torch.float16 for v in shipped.values())
    for key, value in shipped.items():
        assert torch.equal(held_out[key], value.to(held_out[key].dtype)), key
