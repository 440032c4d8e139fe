"""Stop signals at the worst moments: while outputs move into place, in the middle of a training step, a closed
terminal (SIGHUP) and a closed standard output. Whatever stops the run, what is on disk matches the message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_reliability_killsafety import package, source  # noqa: F401 (the same small model and input)

from MedTranslateLib.io.atomic import atomic_output, output_group
from MedTranslateLib.signals import signals_deferred

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("ctrl_c_raises")  # also where the test run was started with SIGINT ignored


def test_a_deferred_signal_arrives_when_the_block_ends():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
            with signals_deferred():  # nested: still held
                reached.append("inner")
            reached.append("outer")
    assert reached == ["inner", "outer"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C does not wait
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            reached.append("after the second")
    assert reached == ["inner", "outer"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_outputs_move_into_place_finishes_the_pair(tmp_path, ctrl_c_after_first_move):
    """A Ctrl-C between the moves left a new series beside the old uncertainty map, and the old series half-deleted
    in a hidden folder, with the message 'nothing half-written'."""
    series, std = tmp_path / "sct", tmp_path / "std.nii.gz"
    series.mkdir()
    (series / "IMG00001.dcm").write_text("old")
    std.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with output_group():
            with atomic_output(series, folder=True) as staging:
                (staging / "IMG00001.dcm").write_text("new")
            with atomic_output(std) as temp:
                temp.write_text("new")
    assert (series / "IMG00001.dcm").read_text() == "new" and std.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sct", "std.nii.gz"]  # no .old, no .partial


def test_sighup_while_writing_leaves_nothing(tmp_path, package, source, monkeypatch, capsys):
    """A closed terminal or ssh session (SIGHUP) killed the run without a word and left a hidden partial series."""
    import pydicom

    from MedTranslateLib.cli.main import main

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_save = pydicom.dataset.Dataset.save_as

    def save_then_hang_up(self, filename, *args, **kwargs):
        real_save(self, filename, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGHUP)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", save_then_hang_up)
    code = main(["translate", str(source), "-m", str(package), "-o", str(out_dir / "series"), "--device", "cpu",
                 "--progress", "jsonl"])
    assert code == 128 + signal.SIGHUP
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [e["exit_code"] for e in events if e["event"] == "error"] == [129]
    assert list(out_dir.iterdir()) == []


def test_an_ignored_hang_up_stays_ignored(tmp_path, package, source, monkeypatch):
    """`nohup medtranslate ... &`: a closed terminal must not stop the run."""
    import pydicom

    from MedTranslateLib.cli.main import main

    real_save = pydicom.dataset.Dataset.save_as

    def save_then_hang_up(self, filename, *args, **kwargs):
        real_save(self, filename, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGHUP)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", save_then_hang_up)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert main(["translate", str(source), "-m", str(package), "-o", str(tmp_path / "series"), "--device", "cpu",
                     "--progress", "none"]) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert len(list((tmp_path / "series").iterdir())) == 24


def test_a_closed_standard_output_is_no_success(tmp_path, package, source):
    """`translate ... --progress jsonl | head -n 1` (or a Slicer that died) exited 0 with nothing written."""
    out = tmp_path / "out" / "sct.nii.gz"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "MedTranslateLib", "translate", str(source), "-m", str(package),
                             "-o", str(out), "--device", "cpu", "--progress", "jsonl"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdout.readline().startswith(b"{")
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err.decode()
    assert b"standard output was closed" in err and list(out.parent.iterdir()) == []


def test_ctrl_c_in_the_middle_of_a_training_step_resumes_exactly(tmp_path, monkeypatch):
    """The checkpoint saved on Ctrl-C held half of the interrupted step (its batch drawn, or its batch norm
    statistics), so a resumed run differed from an uninterrupted one."""
    from safetensors.torch import load_file
    from test_training_loop import _config

    from MedTranslateLib.families.unet import UNetFamily
    from MedTranslateLib.training.loop import train

    # validation due at step 5, the step the Ctrl-C comes in: the resumed run must still validate there
    settings = dict(steps=6, val_fraction=0.34, test_fraction=0.0, checkpoint_interval=3, val_interval=5)
    straight = train(_config(tmp_path / "a", **settings))
    real_step, calls = UNetFamily.training_step, []

    def step_with_ctrl_c(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            signal.raise_signal(signal.SIGINT)  # before the optimiser step: stopped here, this step was half done
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(UNetFamily, "training_step", step_with_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path / "b", **settings))
    monkeypatch.setattr(UNetFamily, "training_step", real_step)
    state = json.loads((_config(tmp_path / "b").work_path / "checkpoint" / "state.json").read_text())
    assert state["state"]["step"] == 5  # the step under way was finished, then the run stopped
    resumed = train(_config(tmp_path / "b", resume=True, **settings))
    a = load_file(str(straight.package / "weights.safetensors"))
    b = load_file(str(resumed.package / "weights.safetensors"))
    for key in a:
        assert np.array_equal(a[key].numpy(), b[key].numpy()), key
    logs = [(_config(tmp_path / run).work_path / "validation_log.csv").read_text() for run in ("a", "b")]
    assert logs[0] == logs[1] and [line.split(",")[0] for line in logs[0].splitlines()[1:]] == ["5", "6"]


def test_two_processes_swapping_one_output_get_an_output_error(tmp_path, monkeypatch):
    """Another process put its series in place between our two moves: an OutputError (was a raw OSError) that
    says where the earlier output is kept."""
    from MedTranslateLib.errors import OutputError
    from MedTranslateLib.io.atomic import swap_into_place

    target, staging = tmp_path / "series", tmp_path / ".series.partial"
    for folder, text in ((target, "old"), (staging, "ours")):
        folder.mkdir()
        (folder / "IMG00001.dcm").write_text(text)
    real_replace = os.replace

    def other_process_first(src, dst):
        if Path(src) == staging:  # the other process's series lands first
            Path(dst).mkdir()
            (Path(dst) / "IMG00001.dcm").write_text("theirs")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", other_process_first)
    with pytest.raises(OutputError, match="earlier output is kept in") as info:
        swap_into_place(staging, target)
    assert info.value.fix and (target / "IMG00001.dcm").read_text() == "theirs"
