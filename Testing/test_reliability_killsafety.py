"""Never half-written: no output and no temporary files after success, failure, cancel or SIGKILL.

- ``translate_file``: success leaves only the output; a failure while writing and a cancel set from the
  progress callback mid-inference (``Cancelled``) leave nothing at all.
- ``medtranslate translate`` killed with SIGKILL mid-inference leaves no output and no temp folder.
- Slicer logic: a worker killed with SIGKILL mid-run (fake worker and the real backend) ends the run as a
  clear failure, adds no node, removes the temporary folder and leaves no process behind; a second
  translation started while one runs is refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image
from packages import make_untrained_package

from MedTranslateLib.errors import Cancelled, OutputError
from MedTranslateLib.pipeline import translate_file
from MedTranslateLib.progress import CancelToken

REPO = Path(__file__).resolve().parents[1]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return make_untrained_package(tmp_path_factory.mktemp("ks_pkg") / "pkg", "unet", "3d")


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "inputs" / "mr.nrrd"
    path.parent.mkdir()
    sitk.WriteImage(make_image((24, 40, 40), spacing=(2.0, 1.0, 1.0), seed=5), str(path))
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".mhd", "/"])
def test_success_leaves_only_the_output(tmp_path, package, source, suffix):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / ("sct" + suffix)
    translate_file(source, package, target, device="cpu")
    expected = {".nii.gz": ["sct.nii.gz"], ".mhd": ["sct.mhd", "sct.raw"], "/": ["sct"]}[suffix]
    assert _names(out_dir) == expected
    assert _names(source.parent) == ["mr.nrrd"]


def test_cancel_from_progress_callback_mid_inference_writes_nothing(tmp_path, package, source):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    token = CancelToken()
    stages: list[tuple[str, float]] = []

    def callback(event) -> None:
        stages.append((event.stage, event.stage_fraction))
        if event.stage == "inference" and event.stage_fraction > 0:
            token.cancel()

    with pytest.raises(Cancelled) as caught:
        translate_file(source, package, out_dir / "sct.nii.gz", device="cpu", progress=callback, cancel=token)
    assert caught.value.exit_code == 130 and caught.value.message
    assert token.cancelled and any(stage == "inference" and f > 0 for stage, f in stages)
    assert "write" not in [stage for stage, _ in stages]
    assert _names(out_dir) == []


@pytest.mark.parametrize("suffix", ["sct.nii.gz", "sct.mhd", "dicom/"])
def test_failure_while_writing_leaves_no_file(tmp_path, package, source, monkeypatch, suffix):
    """A writer that dies half-way (after writing some bytes) leaves neither output nor temp files."""
    import pydicom.dataset

    from MedTranslateLib.io import volumes

    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def half_write(image, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")  # something is on disk when the failure comes
        raise RuntimeError("disk full")

    def half_dicom(dataset, filename, *args, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(volumes.sitk, "WriteImage", half_write)
    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", half_dicom)
    with pytest.raises(OutputError) as caught:
        translate_file(source, package, out_dir / suffix, device="cpu")
    assert caught.value.message and caught.value.exit_code == 5
    assert _names(out_dir) == []


def test_replacing_an_existing_output_keeps_it_on_cancel(tmp_path, package, source):
    """An existing output is only replaced by a complete new one: a cancelled run keeps the old bytes."""
    target = tmp_path / "sct.nii.gz"
    target.write_bytes(b"old result")
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        translate_file(source, package, target, device="cpu", cancel=token)
    assert target.read_bytes() == b"old result" and _names(tmp_path) == ["inputs", "sct.nii.gz"]


def _wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_cli_killed_mid_inference_leaves_nothing(tmp_path, source):
    """SIGKILL of ``medtranslate translate`` during inference: no output, no partial folder."""
    import json

    package = make_untrained_package(tmp_path / "slow", "diffusion", "2d")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}
    proc = subprocess.Popen([sys.executable, "-m", "MedTranslateLib", "translate", str(source), "-m", str(package),
                             "-o", str(out_dir / "sct.nii.gz"), "--device", "cpu", "--progress", "jsonl",
                             "--steps", "400"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, cwd=REPO)
    try:
        for line in proc.stdout:  # wait until the sampler is really running
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("stage") == "inference":
                break
        time.sleep(1.5)  # inside the 400-step sampler now (it runs for minutes)
        assert proc.poll() is None, "the translation ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _names(out_dir) == []


def test_sigterm_while_writing_a_dicom_series_leaves_nothing(tmp_path, package, source, monkeypatch, capsys):
    """SIGTERM (a scheduler, ``timeout``, Slicer's Cancel) in the middle of writing: exit 143, one error event,
    and no hidden partial folder with half a series of patient data."""
    import json

    import pydicom

    from MedTranslateLib.cli.main import main

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_save = pydicom.dataset.Dataset.save_as
    written = []

    def save_then_terminate(self, filename, *args, **kwargs):
        real_save(self, filename, *args, **kwargs)
        written.append(filename)
        if len(written) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", save_then_terminate)
    code = main(["translate", str(source), "-m", str(package), "-o", str(out_dir / "series"), "--device", "cpu",
                 "--progress", "jsonl"])
    assert code == 128 + signal.SIGTERM and len(written) == 3
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [e["exit_code"] for e in events if e["event"] == "error"] == [143]
    assert _names(out_dir) == []
    assert signal.getsignal(signal.SIGTERM) is not _terminate_handler()  # the handler is put back


def _terminate_handler():
    from MedTranslateLib.cli.main import _terminate

    return _terminate


def test_an_unexpected_error_still_ends_the_worker_protocol_with_an_error_event(tmp_path, package, source,
                                                                                 monkeypatch, capsys):
    import json

    from MedTranslateLib import pipeline
    from MedTranslateLib.cli.main import main

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline, "write_outputs", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["translate", str(source), "-m", str(package), "-o", str(tmp_path / "o.nii.gz"), "--device", "cpu",
              "--progress", "jsonl"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 1 and "a bug" in events[-1]["message"]


# ---- Slicer logic ------------------------------------------------------------------------------------

def _slicer_logic():
    pytest.importorskip("slicer")
    sys.path.insert(0, str(REPO / "MedTranslate"))
    from MedTranslateModule.logic import (
        TranslationFailed,
        TranslationLogic,
        TranslationRequest,
    )

    return TranslationFailed, TranslationLogic, TranslationRequest


@pytest.fixture
def scene_and_input():
    slicer = pytest.importorskip("slicer")
    from MedTranslateLib.scene import new_scene

    scene, _ = new_scene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    z, y, x = np.mgrid[0:12, 0:14, 0:16]
    array = (300.0 + 100.0 * np.sin(x / 3.0) + 10.0 * y + z).astype(np.float32)
    array[:, :3] = 0.0
    node = slicer.util.addVolumeFromArray(array, ijkToRAS=np.diag([1.1, 0.9, 2.0, 1.0]), name="MR")
    yield scene, node
    slicer.mrmlScene = previous


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _kill_mid_run(logic, request, TranslationFailed, ready, settle: float = 0.0) -> tuple[str, int]:
    """Start, wait until ``ready(status)``, check a second start is refused, SIGKILL the worker, wait for the end."""
    logic.start(request)
    workdir = logic.workdir
    assert workdir and os.path.isdir(workdir)
    assert _wait_for(lambda: ready(logic.poll()), 120), f"worker never got going: {logic.status}"
    with pytest.raises(TranslationFailed, match="already running"):
        logic.start(request)
    time.sleep(settle)
    assert logic.poll().state == "running"
    pid = logic.worker_pid
    os.kill(pid, signal.SIGKILL)
    finished = _wait_for(lambda: logic.poll().state != "running" and not logic.is_running, 20)
    if not finished:  # never leave a run behind, even when the assertion below fails
        logic.cancel()
    assert finished, "the logic did not notice that its worker was killed"
    return workdir, pid


def test_slicer_fake_worker_sigkilled_mid_run(scene_and_input, tmp_path, monkeypatch):
    TranslationFailed, TranslationLogic, TranslationRequest = _slicer_logic()
    from test_slicer_fakeworker import fake_worker_command

    scene, node = scene_and_input
    pid_file = tmp_path / "pids"
    monkeypatch.setenv("FAKE_WORKER_PIDFILE", str(pid_file))
    logic = TranslationLogic(scene=scene, worker_command=fake_worker_command())
    before = scene.GetNumberOfNodes()
    workdir, pid = _kill_mid_run(logic, TranslationRequest(node, "fake-slow"), TranslationFailed,
                                 lambda s: s.stage == "predict" and pid_file.exists())
    child = int(pid_file.read_text().split()[1])
    assert logic.status.state == "failed" and "crashed (signal 9)" in logic.status.message
    assert "out of memory" in logic.status.message  # SIGKILL: most often the kernel's out-of-memory killer
    assert scene.GetNumberOfNodes() == before and logic.workdir is None
    assert not os.path.exists(workdir)
    assert not _alive(pid)
    assert _wait_for(lambda: not _alive(child), 10), "the killed worker's child process was left running"


@pytest.mark.slow
def test_slicer_real_backend_sigkilled_mid_inference(scene_and_input, tmp_path):
    TranslationFailed, TranslationLogic, TranslationRequest = _slicer_logic()
    scene, node = scene_and_input
    package = make_untrained_package(tmp_path / "diff", "diffusion", "2d")
    logic = TranslationLogic(scene=scene, python_executable=sys.executable)
    before = scene.GetNumberOfNodes()
    request = TranslationRequest(node, str(package), target_modality="CT", device="cpu", steps=400)
    workdir, pid = _kill_mid_run(logic, request, TranslationFailed,
                                 lambda s: s.stage == "inference", settle=1.5)
    assert logic.status.state == "failed" and "signal 9" in logic.status.message
    assert scene.GetNumberOfNodes() == before and logic.workdir is None
    assert not os.path.exists(workdir) and not _alive(pid)


def test_diffusion_cancel_is_checked_between_denoising_steps(tmp_path):
    """Cancel reaches a diffusion sampler between denoising steps, not only between slice batches."""
    import numpy as np

    from MedTranslateLib.errors import Cancelled
    from MedTranslateLib.families import get_family
    from MedTranslateLib.families.base import InferenceOptions
    from MedTranslateLib.inference.engine import predict_volume
    from MedTranslateLib.models.package import open_package
    from MedTranslateLib.progress import ProgressTracker
    from packages import make_untrained_package

    class CancelOnFifthCheck(ProgressTracker):
        checks = 0

        def check(self) -> None:
            self.checks += 1
            if self.checks >= 5:
                self.cancel_token.cancel()
            super().check()

    card = open_package(make_untrained_package(tmp_path / "d", "diffusion", "2d")).card.to_dict()
    family = get_family("diffusion")
    options = InferenceOptions(steps=400)
    predictor = family.make_predictor(family.build(card["architecture"], 2), card, options)
    tracker = CancelOnFifthCheck()
    with pytest.raises(Cancelled):
        predict_volume(np.zeros((2, 16, 16), np.float32), None, card, predictor, options, "cpu", tracker)
    assert tracker.checks < 20, "the sampler ran on for many steps after the cancel"
