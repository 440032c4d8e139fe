"""--resume refuses changed settings or another split (an older checkpoint is resumed with a warning); the work
folder is checked before the data is loaded (it can be made and written, it holds no files of the user's); a run that
fails before its first checkpoint removes the work folder it made."""

from __future__ import annotations

import json
import os
import time

import pytest
from test_training_loop import _config, write_pairs

from MedTranslateLib.errors import ConfigError, OutputError
from MedTranslateLib.training import loop
from MedTranslateLib.training.workspace import Logger

QUICK = dict(steps=2, checkpoint_interval=2, val_fraction=0.0, test_fraction=0.0)


def _state(config) -> dict:
    return json.loads((config.work_path / "checkpoint" / "state.json").read_text())["state"]


def _no_data_loading(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the data was loaded before the work folder was checked")

    monkeypatch.setattr(loop, "load_data", refuse)


# ------------------------------------------------------------------ 1. --resume checks settings and split
def test_resume_refuses_another_seed(tmp_path, monkeypatch):
    """A new seed re-split the subjects: the first part's validation subject trained in the second part."""
    first = _config(tmp_path, steps=2, checkpoint_interval=2, val_interval=2)  # 1 train, 1 val, 1 test subject
    loop.train(first)
    assert _state(first)["config"]["seed"] == 0 and _state(first)["split"]["val"]
    _no_data_loading(monkeypatch)  # refused before the data is read
    with pytest.raises(ConfigError) as caught:
        loop.train(_config(tmp_path, steps=4, checkpoint_interval=2, val_interval=2, seed=1, resume=True))
    assert caught.value.problem.endswith("was trained with other settings: seed 0 -> 1.")
    assert "steps" in caught.value.fix and "--resume" in caught.value.fix
    assert _state(first)["step"] == 2  # nothing trained


def test_resume_names_every_changed_setting_with_old_and_new_values(tmp_path):
    loop.train(_config(tmp_path, **QUICK))
    other_data = write_pairs(tmp_path / "other")
    changed = _config(tmp_path, **{**QUICK, "steps": 4}, resume=True, data=str(other_data), lr=1e-3, augment=True,
                      slice_size=[16, 16], normalization_output={"method": "clip", "range": [-1000.0, 2000.0]})
    with pytest.raises(ConfigError) as caught:
        loop.train(changed)
    problem = caught.value.problem
    for text in (f'data "{(tmp_path / "data").resolve()}" -> "{other_data.resolve()}"', "lr 0.003 -> 0.001",
                 "augment false -> true",
                 "slice_size null -> [16, 16]", 'normalization_output null -> {"method": "clip"'):
        assert text in problem, problem
    assert "seed" not in problem and "steps" not in problem


def test_resume_accepts_changes_that_only_steer_the_run(tmp_path, monkeypatch):
    """Length, intervals, logs, output (the work folder given), card texts; the data as an equivalent relative path."""
    first = _config(tmp_path, **QUICK)
    loop.train(first)
    monkeypatch.chdir(tmp_path)
    resumed = _config(tmp_path, steps=4, checkpoint_interval=1, val_interval=1, log_interval=1, log="none",
                      val_fraction=0.0, test_fraction=0.0, resume=True, output=str(tmp_path / "other-pkg"),
                      work_dir=str(first.work_path), export_half=True, title="Another title", data="data")
    result = loop.train(resumed)
    assert result.steps == 4 and (tmp_path / "other-pkg" / "model.json").is_file()
    assert _state(first)["step"] == 4 and _state(first)["config"]["title"] == "Another title"


def test_a_resume_with_no_steps_left_says_so(tmp_path):
    """`--steps 1 --resume` after a run that reached step 2 exported the step-2 weights without a word."""
    first = _config(tmp_path, **QUICK)
    loop.train(first)
    heard = []
    result = loop.train(_config(tmp_path, **{**QUICK, "steps": 1}, resume=True), on_warning=heard.append)
    assert result.steps == 2 and any("nothing is left to train" in message for message in heard)


def test_resume_refuses_another_split_of_the_same_settings(tmp_path):
    """A subject added to the data folder changes the split although no setting changed."""
    settings = dict(steps=2, checkpoint_interval=2, val_interval=100)
    loop.train(_config(tmp_path, **settings))
    write_pairs(tmp_path / "data", n=4)  # subj3 joins
    with pytest.raises(ConfigError, match="was split differently: .*subj3") as caught:
        loop.train(_config(tmp_path, **{**settings, "steps": 4}, resume=True))
    assert "same cases" in caught.value.fix


def test_a_checkpoint_of_an_older_version_is_resumed_with_a_warning(tmp_path):
    first = _config(tmp_path, **QUICK)
    loop.train(first)
    path = first.work_path / "checkpoint" / "state.json"
    payload = json.loads(path.read_text())
    del payload["state"]["config"], payload["state"]["split"]
    path.write_text(json.dumps(payload))
    heard = []
    assert loop.train(_config(tmp_path, **{**QUICK, "steps": 3}, resume=True, seed=5), on_warning=heard.append).steps == 3
    assert len(heard) == 1 and "older" in heard[0] and "did not record its settings" in heard[0]
    assert _state(first)["config"]["seed"] == 5  # the checkpoint now records its settings


# ------------------------------------------------------------------ 2. the work folder
@pytest.mark.parametrize("where", ["a file", "a file at <output>.work", "under a file"])
def test_a_work_folder_that_cannot_be_made_is_refused_before_the_data_is_loaded(tmp_path, monkeypatch, where):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    work_dir = {"a file": str(notes), "a file at <output>.work": None, "under a file": str(notes / "work")}[where]
    if work_dir is None:
        notes = tmp_path / "pkg.work"
        notes.write_text("mine")
    config = _config(tmp_path, **QUICK, work_dir=work_dir)
    _no_data_loading(monkeypatch)
    with pytest.raises(OutputError, match=r"Cannot create the work folder .*: .* is not a folder\."):
        loop.train(config)
    assert notes.read_text() == "mine" and not (tmp_path / "pkg").exists()


@pytest.mark.parametrize("existing", [False, True])
def test_a_read_only_work_folder_is_refused_before_the_data_is_loaded(tmp_path, monkeypatch, existing):
    """The folder (or the one it is to be made in) is read-only: simulated, as root and Windows ignore the bits."""
    locked = tmp_path / "locked"
    locked.mkdir()
    config = _config(tmp_path, **QUICK, work_dir=str(locked if existing else locked / "work"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: os.fspath(p) != str(locked) and real_access(p, mode))
    _no_data_loading(monkeypatch)
    with pytest.raises(OutputError, match="the work folder .* is not writable"):
        loop.train(config)
    assert list(locked.iterdir()) == []


def test_the_logger_deletes_only_its_own_logs(tmp_path):
    for name in ("experiment_log.csv", "train_log.csv", "validation_log.csv"):
        (tmp_path / name).write_text("step\n1\n")
    Logger(tmp_path, "csv", enabled=True).close()
    assert [p.name for p in tmp_path.iterdir()] == ["experiment_log.csv"]


def test_a_folder_of_the_users_files_is_no_work_folder_unless_resumed(tmp_path, monkeypatch):
    """An earlier run's folder (even with a checkpoint being written) starts afresh, and its resume does not take
    the earlier run's best.safetensors (here not even weights) for its own; a folder with other files is refused
    before the data is loaded, and resumed only with --resume (its files kept)."""
    project = tmp_path / "myproj"
    for folder in ("checkpoint", "tensorboard", ".checkpoint.x1y2"):
        (project / folder).mkdir(parents=True)
    for name in ("best.safetensors", "train_log.csv", "validation_log.csv"):
        (project / name).write_text("")
    config = _config(tmp_path, **QUICK, work_dir=str(project))
    loop.train(config)
    (project / "experiment_log.csv").write_text("mine")
    with monkeypatch.context() as patch:
        _no_data_loading(patch)
        with pytest.raises(OutputError, match="myproj is not empty and not a training's work folder: it holds "
                                              r"experiment_log\.csv\.") as caught:
            loop.train(config)
    assert "--work-dir" in caught.value.fix
    config.resume, config.steps = True, 3
    assert loop.train(config).steps == 3
    assert (project / "experiment_log.csv").read_text() == "mine" and _state(config)["step"] == 3


# ------------------------------------------------------------------ 3. a failed run leaves no work folder it made
def test_a_diverged_run_removes_the_work_folder_it_made(tmp_path, monkeypatch):
    """... but not one that was there before, nor one holding a checkpoint to resume from."""
    from MedTranslateLib.families.unet import UNetFamily

    config = _config(tmp_path, lr=1e12, steps=20, checkpoint_interval=100, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(ConfigError, match="diverged"):
        loop.train(config)
    assert not config.work_path.exists() and not (tmp_path / "pkg").exists()
    config.work_path.mkdir()
    with pytest.raises(ConfigError, match="diverged"):
        loop.train(config)
    assert config.work_path.is_dir()

    real_step, calls = UNetFamily.training_step, []

    def nan_at_step_two(self, *args, **kwargs):
        calls.append(1)
        losses = real_step(self, *args, **kwargs)
        return {key: float("nan") for key in losses} if len(calls) == 2 else losses

    monkeypatch.setattr(UNetFamily, "training_step", nan_at_step_two)
    config = _config(tmp_path, steps=5, checkpoint_interval=1, val_fraction=0.0, test_fraction=0.0,
                     output=str(tmp_path / "second"))
    with pytest.raises(ConfigError, match="diverged at step 2"):
        loop.train(config)
    assert _state(config)["step"] == 1
    # no checkpoint yet, but logged losses: they show why it diverged, so the folder stays
    calls.clear()
    config = _config(tmp_path, steps=5, checkpoint_interval=100, log_interval=1, val_fraction=0.0, test_fraction=0.0,
                     output=str(tmp_path / "third"))
    with pytest.raises(ConfigError, match="diverged at step 2"):
        loop.train(config)
    assert (config.work_path / "train_log.csv").is_file()


def test_a_resumed_run_logs_the_same_loss_rows_as_an_uninterrupted_one(tmp_path):
    """Interrupted between two log rows, the resumed run's next row averaged only the steps after the resume (the
    losses of the steps before the interruption were not in the checkpoint)."""
    import csv

    from MedTranslateLib.progress import ProgressTracker

    def losses(config) -> dict[int, float]:
        with (config.work_path / "train_log.csv").open() as handle:
            return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}

    def ctrl_c_after_step_six(event) -> None:  # as a real Ctrl-C lands: between two whole steps
        if event.message.startswith("step 6/"):
            raise KeyboardInterrupt

    settings = dict(steps=8, log_interval=4, checkpoint_interval=100, val_fraction=0.0, test_fraction=0.0)
    whole = _config(tmp_path, **settings, output=str(tmp_path / "whole"))
    loop.train(whole)
    parts = _config(tmp_path, **settings, output=str(tmp_path / "parts"))
    with pytest.raises(KeyboardInterrupt):
        loop.train(parts, ProgressTracker(loop.STAGES, ctrl_c_after_step_six, min_interval=0.0))
    assert _state(parts)["step"] == 6
    parts.resume = True
    loop.train(parts)
    assert list(losses(parts)) == [4, 8]
    assert losses(parts) == pytest.approx(losses(whole), rel=1e-5)


def test_the_cards_training_time_leaves_out_the_held_out_evaluation(tmp_path, monkeypatch):
    """The card's training seconds counted the held-out test evaluation after training (for a diffusion model most
    of the run): a card of 10 training steps said 80 s of training, 68 s of which sampled the test volume."""
    real = loop.evaluate_prepared

    def slow_held_out_evaluation(*args, **kwargs):
        time.sleep(2.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_prepared", slow_held_out_evaluation)
    result = loop.train(_config(tmp_path, steps=2, checkpoint_interval=2, val_fraction=0.0, test_fraction=0.34))
    card = json.loads((result.package / "model.json").read_text())
    assert result.metrics_on == "test" and result.seconds >= 2.0
    assert card["training"]["seconds"] <= result.seconds - 1.9
    assert card["performance"]["training_seconds"] == card["training"]["seconds"]


@pytest.mark.parametrize("mistake", ["missing data folder", "modality not in the data"])
def test_a_run_refused_before_training_leaves_no_new_output_folders(tmp_path, mistake):
    """``--output runs/t2-flair/model`` with a mistyped data folder (or a modality the data lacks) was refused, but
    left the empty folders ``runs/t2-flair`` that the output check had made."""
    data = str(tmp_path / "no-such-data") if mistake == "missing data folder" else str(write_pairs(tmp_path / "d"))
    config = _config(tmp_path, **QUICK, data=data, target_modality="PD" if "modality" in mistake else "CT",
                     output=str(tmp_path / "runs" / "t2-flair" / "model"))
    with pytest.raises(ConfigError):
        loop.train(config)
    assert not (tmp_path / "runs").exists()
