"""Slicer module logic with slicer-core and a real (fake) worker process: run, progress, cancel, failures."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedTranslate"))

from conftest import IJK_TO_RAS, process_alive  # noqa: E402
from test_slicer_fakeworker import fake_worker_command  # noqa: E402

from MedTranslateModule.logic import (TranslationFailed, TranslationLogic, TranslationRequest,  # noqa: E402
                                      TranslationStatus, output_name_for)
from MedTranslateModule.process import parse_worker_line  # noqa: E402


def _logic(scene):
    return TranslationLogic(scene=scene, worker_command=fake_worker_command())


def _matrix(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def test_parse_worker_line():
    event = parse_worker_line('{"event": "progress", "stage": "predict", "fraction": 1.5, "eta_seconds": 3}')
    assert (event.kind, event.stage, event.fraction, event.eta_seconds) == ("progress", "predict", 1.0, 3.0)
    assert parse_worker_line("plain text").kind == "log"
    assert parse_worker_line("   ") is None
    assert parse_worker_line('{"event": "done", "output": "x"}').payload["output"] == "x"
    # NaN / Infinity are valid to Python's json but no percent or time left: dropped, not shown or crashed on
    odd = parse_worker_line('{"event": "progress", "fraction": NaN, "eta_seconds": Infinity}')
    assert odd.fraction is None and odd.eta_seconds is None
    assert parse_worker_line('{"event": "progress", "eta_seconds": -2}').eta_seconds is None
    from MedTranslateLib.progress import format_duration

    assert format_duration(float("inf")) == ""


def test_run_folders_of_a_killed_slicer_are_removed(tmp_path):
    """A Slicer killed mid-run left its temporary folder, with a copy of the patient volume, for ever."""
    import subprocess

    from MedTranslateModule.process import OWNER_FILE, make_workdir, remove_stale_workdirs

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    import socket

    host = socket.gethostname()
    for name, owner in (("MedTranslate-dead", f"{gone} {host}"), ("MedTranslate-live", f"{os.getppid()} {host}"),
                        ("MedTranslate-elsewhere", f"{gone} another-host"), ("MedTranslate-nomark", None),
                        ("Other-dead", f"{gone} {host}")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "input.nrrd").write_text("patient")
        if owner:
            (tmp_path / name / OWNER_FILE).write_text(owner)
    assert remove_stale_workdirs(str(tmp_path)) == [str(tmp_path / "MedTranslate-dead")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MedTranslate-elsewhere", "MedTranslate-live",
                                                          "MedTranslate-nomark", "Other-dead"]
    mine = make_workdir()
    try:
        assert Path(mine, OWNER_FILE).read_text() == f"{os.getpid()} {host}" and mine not in remove_stale_workdirs()
    finally:
        import shutil

        shutil.rmtree(mine)


def test_run_loads_output_with_exact_geometry_provenance_and_hierarchy(scene, input_node):
    import slicer

    statuses = []
    logic = _logic(scene)
    workdirs = set()

    def record(status):
        statuses.append((status.state, status.stage, status.fraction))
        workdirs.add(logic.workdir)

    logic.on_status = record
    status = logic.run(TranslationRequest(input_node, "fake-ok", target_modality="CT", uncertainty=True,
                                          device="cpu", steps=5, samples=2), timeout=60)
    output = status.output_node
    assert output.GetName() == output_name_for("MRHead", "CT") == "MRHead_synthetic_CT"
    assert output.IsA("vtkMRMLScalarVolumeNode")
    assert np.array_equal(_matrix(output), _matrix(input_node))
    assert output.GetImageData().GetDimensions() == input_node.GetImageData().GetDimensions()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(output),
                               slicer.util.arrayFromVolume(input_node) * 2 - 1000, rtol=1e-5)
    assert output.GetAttribute("MedTranslate.synthetic") == "true"
    assert output.GetAttribute("MedTranslate.model_id") == "fake-ok"
    assert output.GetAttribute("MedTranslate.model_sha256") == "ab" * 32
    assert output.GetAttribute("MedTranslate.steps") == "5"
    assert output.GetDisplayNode().GetAutoWindowLevel() == 0  # CT window, not auto
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(input_node))
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(output)) == study
    uncertainty = status.uncertainty_node
    assert uncertainty is not None and np.array_equal(_matrix(uncertainty), _matrix(input_node))
    assert uncertainty.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeFileInferno.txt"
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(uncertainty)) == study
    assert status.warnings == ["fake warning: input looks unusual"]
    assert output.GetAttribute("MedTranslate.warnings") == "fake warning: input looks unusual"
    assert statuses[0][0] == "running" and statuses[-1] == ("done", "write", 1.0)
    fractions = [fraction for _, _, fraction in statuses]
    assert fractions == sorted(fractions)
    assert logic.workdir is None and not logic.is_running
    assert any(workdirs) and not any(path and os.path.exists(path) for path in workdirs)  # temp files removed


def test_existing_output_node_is_reused(scene, input_node):
    import slicer

    target = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.float32), name="mine")
    count = scene.GetNumberOfNodes()
    status = _logic(scene).run(TranslationRequest(input_node, "fake-ok", output_node=target), timeout=60)
    assert status.output_node is target
    assert target.GetImageData().GetDimensions() == (16, 14, 12)
    assert scene.GetNumberOfNodes() == count


def test_cancel_mid_run_kills_tree_removes_temp_and_keeps_scene(scene, input_node, tmp_path, monkeypatch):
    pid_file = tmp_path / "pids"
    monkeypatch.setenv("FAKE_WORKER_PIDFILE", str(pid_file))
    logic = _logic(scene)
    before = scene.GetNumberOfNodes()
    logic.start(TranslationRequest(input_node, "fake-slow"))
    workdir = logic.workdir
    assert os.path.isdir(workdir)
    deadline = time.monotonic() + 30
    while (logic.poll().stage != "predict" or not pid_file.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logic.status.stage == "predict" and 0 < logic.status.fraction < 1
    assert logic.status.eta_seconds is not None
    with pytest.raises(TranslationFailed, match="already running"):
        logic.start(TranslationRequest(input_node, "fake-ok"))
    worker_pid, child_pid = map(int, pid_file.read_text().split())
    logic.cancel()
    assert logic.status.state == "cancelled" and not logic.is_running
    assert not os.path.exists(workdir)
    assert not process_alive(worker_pid) and not process_alive(child_pid)
    assert scene.GetNumberOfNodes() == before


@pytest.mark.parametrize("model, expected", [
    ("fake-crash", "crashed"),
    ("fake-oom", "out of memory"),
    ("fake-error", "The volume 'MRHead' is constant"),  # the node's name, not the temporary file's
    ("fake-shifted", "geometry differs"),
    ("fake-silent", "without reporting a result"),
])
def test_failures_become_messages_and_leave_scene_unchanged(scene, input_node, model, expected):
    logic = _logic(scene)
    before = scene.GetNumberOfNodes()
    with pytest.raises(TranslationFailed, match=expected):
        logic.run(TranslationRequest(input_node, model), timeout=60)
    assert logic.status.state == "failed"
    assert scene.GetNumberOfNodes() == before
    assert logic.workdir is None


def test_force_cpu_sets_cuda_visible_devices_and_command_line(scene, input_node):
    logic = _logic(scene)
    paths = {"input": "in.nrrd", "output": "out.nrrd", "mask": "m.nrrd", "uncertainty": "u.nrrd"}
    command = logic.build_command(TranslationRequest(input_node, "model-x", device="cpu", steps=10, samples=3),
                                  paths)
    assert command[len(fake_worker_command()):] == [
        "translate", "in.nrrd", "-m", "model-x", "-o", "out.nrrd", "--progress", "jsonl", "--device", "cpu",
        "--uncertainty", "u.nrrd", "--mask", "m.nrrd", "--steps", "10", "--samples", "3"]
    # the panel's "model default" (0 steps) leaves the choice to the model card
    assert "--steps" not in logic.build_command(TranslationRequest(input_node, "model-x", steps=0), paths)
    # the fake worker fails unless CUDA_VISIBLE_DEVICES=-1 reaches it for a CPU run
    status = logic.run(TranslationRequest(input_node, "fake-ok", device="cpu"), timeout=60)
    assert status.output_node.GetAttribute("MedTranslate.device") == "cpu"
    with pytest.raises(TranslationFailed, match="Unknown device"):
        logic.build_command(TranslationRequest(input_node, "m", device="tpu"), paths)


def test_mask_is_written_and_passed(scene, input_node):
    import slicer

    mask = slicer.util.addVolumeFromArray(np.ones((12, 14, 16), np.uint8), ijkToRAS=IJK_TO_RAS, name="mask")
    status = _logic(scene).run(TranslationRequest(input_node, "fake-ok", mask_node=mask), timeout=60)
    assert status.output_node.GetAttribute("MedTranslate.mask") == "True"


def test_invalid_requests_are_refused(scene, input_node):
    logic = _logic(scene)
    with pytest.raises(TranslationFailed, match="model"):
        logic.start(TranslationRequest(input_node, ""))
    with pytest.raises(TranslationFailed, match="input volume"):
        logic.start(TranslationRequest(None, "fake-ok"))
    assert not logic.is_running and logic.workdir is None


def test_evaluate_against_reference(scene, input_node):
    import slicer

    from MedTranslateModule.nodes import evaluate_against_reference

    array = slicer.util.arrayFromVolume(input_node)
    reference = slicer.util.addVolumeFromArray(array + 10.0, ijkToRAS=IJK_TO_RAS, name="reference")
    evaluation = evaluate_against_reference(input_node, reference)
    metrics = evaluation.metrics
    assert evaluation.region.startswith("every voxel") and "body mask" in evaluation.region
    assert evaluation.rows()[0] == ("mae", "10") and evaluation.rows()[-1] == ("compared", evaluation.region)
    assert metrics["mae"] == pytest.approx(10.0, rel=1e-4) and metrics["me"] == pytest.approx(-10.0, rel=1e-4)
    # MR: no unit, so the same image in other units (x 3) is no error, as in medtranslate evaluate
    scaled = slicer.util.addVolumeFromArray(array * 3.0, ijkToRAS=IJK_TO_RAS, name="scaled")
    assert evaluate_against_reference(input_node, scaled, modality="MR").metrics["mae"] == pytest.approx(0.0, abs=1e-2)
    shifted = IJK_TO_RAS.copy()
    shifted[0, 3] += 3.0
    moved = slicer.util.addVolumeFromArray(array, ijkToRAS=shifted, name="moved")
    with pytest.raises(TranslationFailed, match="not on the synthetic volume's grid"):
        evaluate_against_reference(input_node, moved)


def test_mr_evaluation_without_a_mask_compares_where_the_reference_is_non_zero(scene, input_node):
    """As ``medtranslate evaluate`` on BraTS: a skull-stripped reference's zero background is left out (with it,
    a perfect brain scores the background's error); a mask, when chosen, decides instead."""
    import slicer

    from MedTranslateModule.nodes import evaluate_against_reference

    reference = slicer.util.arrayFromVolume(input_node).astype(np.float32) + 100.0
    reference[:, :, : reference.shape[2] // 2] = 0.0
    synthetic = reference.copy()
    synthetic[reference == 0] = 400.0  # wrong only outside the brain
    reference_node = slicer.util.addVolumeFromArray(reference, ijkToRAS=IJK_TO_RAS, name="t2 reference")
    synthetic_node = slicer.util.addVolumeFromArray(synthetic, ijkToRAS=IJK_TO_RAS, name="synthetic t2")
    evaluation = evaluate_against_reference(synthetic_node, reference_node, modality="MR")
    assert evaluation.metrics["mae"] == pytest.approx(0.0, abs=1e-3)
    assert f"{int((reference != 0).sum()):,} of {reference.size:,} voxels" in evaluation.region
    everything = slicer.util.addVolumeFromArray(np.ones(reference.shape, np.uint8), ijkToRAS=IJK_TO_RAS,
                                                name="all", nodeClassName="vtkMRMLLabelMapVolumeNode")
    masked = evaluate_against_reference(synthetic_node, reference_node, everything, modality="MR")
    assert masked.metrics["mae"] > 1.0 and masked.region == f"inside mask all ({reference.size:,} voxels)"
    empty = slicer.util.addVolumeFromArray(np.zeros(reference.shape, np.uint8), ijkToRAS=IJK_TO_RAS,
                                           name="empty mask", nodeClassName="vtkMRMLLabelMapVolumeNode")
    with pytest.raises(TranslationFailed, match="No voxel to evaluate"):
        evaluate_against_reference(synthetic_node, reference_node, empty, modality="MR")


def test_mr_evaluation_uses_the_model_that_made_the_volume(scene, input_node):
    """As ``medtranslate evaluate --model``: the reference goes on the output scale of the model named in the
    synthetic node's provenance, whose normalisation the worker's model list carries."""
    import json
    import subprocess

    import slicer

    from MedTranslateLib.evaluation.evaluate import CaseArrays, metrics_for_arrays
    from MedTranslateModule.models import ModelInfo, model_of_node, parse_model_list
    from MedTranslateModule.nodes import evaluate_against_reference

    listed = subprocess.run([sys.executable, "-m", "MedTranslateLib", "models", "list", "--json"],
                            capture_output=True, text=True, check=True).stdout
    models = parse_model_list(listed)
    t2 = next(m for m in models if m.id == "t1-t2-brats-unet2d")
    assert t2.normalization["output"]["method"] == json.loads(
        (REPO / "MedTranslateLib/models/builtin/t1-t2-brats-unet2d/model.json").read_text())["normalization"][
        "output"]["method"]
    synthetic = slicer.util.addVolumeFromArray(slicer.util.arrayFromVolume(input_node) * 2.0 + 5.0,
                                               ijkToRAS=IJK_TO_RAS, name="synthetic T2")
    synthetic.SetAttribute("MedTranslate.model_id", t2.id)
    synthetic.SetAttribute("MedTranslate.model_version", t2.version)
    assert model_of_node(models, synthetic) is t2 and model_of_node(models, input_node) is None
    modality, card = t2.evaluation_settings()
    assert modality == "MR" and card["normalization"] == t2.normalization
    assert ModelInfo("ct-model", target_modality="CT").evaluation_settings() == ("CT", None)

    array = slicer.util.arrayFromVolume(input_node).astype(np.float32)
    with_card = evaluate_against_reference(synthetic, input_node, modality=modality, card=card).metrics
    expected = metrics_for_arrays(CaseArrays(array * 2.0 + 5.0, array, array != 0,  # the non-zero reference
                                             tuple(synthetic.GetSpacing())), "MR", card)
    assert with_card["mae"] == pytest.approx(expected["mae"], rel=1e-5)
    assert with_card["mae"] != pytest.approx(evaluate_against_reference(synthetic, input_node, modality="MR").metrics["mae"])


def test_real_backend_worker_error_reaches_the_user(scene, input_node):
    """The default worker (``python -m MedTranslateLib``) speaks the same protocol as the fake."""
    from MedTranslateModule.models import list_models

    logic = TranslationLogic(scene=scene, python_executable=sys.executable)
    assert logic.worker_command == [sys.executable, "-m", "MedTranslateLib"]
    assert isinstance(list_models(logic.worker_command), list)
    before = scene.GetNumberOfNodes()
    with pytest.raises(TranslationFailed, match="Unknown model 'no-such-model'"):
        logic.run(TranslationRequest(input_node, "no-such-model", device="cpu"), timeout=120)
    assert scene.GetNumberOfNodes() == before and logic.workdir is None


def test_worker_environment():
    from MedTranslateModule.process import worker_environment

    env = worker_environment("cpu", base={"PYTHONPATH": "/somewhere", "CUDA_VISIBLE_DEVICES": "0"})
    assert env["CUDA_VISIBLE_DEVICES"] == "-1" and env["PYTHONUNBUFFERED"] == "1"
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert (Path(parts[0]) / "MedTranslateLib" / "__init__.py").is_file() and parts[1] == "/somewhere"
    assert worker_environment("auto", base={"CUDA_VISIBLE_DEVICES": "0"})["CUDA_VISIBLE_DEVICES"] == "0"


def test_display_helpers_set_fused_views_and_opacity(scene, input_node):
    import slicer

    from MedTranslateModule.display import set_foreground_opacity, show_result

    synthetic = slicer.util.addVolumeFromArray(slicer.util.arrayFromVolume(input_node) * 2, ijkToRAS=IJK_TO_RAS,
                                               name="synthetic")
    composites = show_result(input_node, synthetic, opacity=0.25)
    assert composites["Red"].GetForegroundOpacity() == pytest.approx(0.25)
    set_foreground_opacity(0.8)
    assert composites["Red"].GetForegroundOpacity() == pytest.approx(0.8)
    assert composites["Yellow"].GetBackgroundVolumeID() == synthetic.GetID()  # the synthetic-only view
    assert composites["Yellow"].GetForegroundVolumeID() is None
    set_foreground_opacity(7.0)
    assert composites["Red"].GetForegroundOpacity() == pytest.approx(1.0)


@pytest.mark.slow
def test_end_to_end_with_the_real_backend_and_a_tiny_package(scene, input_node, tmp_path):
    """Slicer logic -> ``python -m MedTranslateLib translate`` with a real (untrained) U-Net package."""
    import json

    import slicer

    from test_slicer_fakeworker import make_tiny_package

    package = make_tiny_package(tmp_path / "package")
    logic = TranslationLogic(scene=scene, python_executable=sys.executable)
    headers = []
    read_checked = logic._read_checked

    def reading(path, node):  # the result file is deleted with the run's folder: look at it as it is read
        headers.append(Path(path).read_bytes()[:1000].decode("latin-1"))
        return read_checked(path, node)

    logic._read_checked = reading
    before = scene.GetNumberOfNodes()
    status = logic.run(TranslationRequest(input_node, str(package), target_modality="CT", device="cpu"),
                       timeout=300)
    assert len(headers) == 1 and "encoding: raw" in headers[0]  # read back at once: not worth compressing
    output = status.output_node
    assert np.array_equal(_matrix(output), _matrix(input_node))  # left-handed, permuted grid kept exactly
    values = slicer.util.arrayFromVolume(output)
    assert values.shape == (12, 14, 16) and np.isfinite(values).all()
    assert -1024.5 <= values.min() and values.max() <= 3071.5
    sha256 = json.loads((Path(package) / "model.json").read_text())["weights"]["sha256"]
    assert output.GetAttribute("MedTranslate.model_sha256") == sha256
    assert output.GetAttribute("MedTranslate.model_id") == "slicer-e2e"
    assert output.GetAttribute("MedTranslate.device") == "cpu"
    assert scene.GetNumberOfNodes() > before and logic.workdir is None


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not process_alive(pid)


@pytest.mark.slow
def test_a_prestarted_worker_runs_the_next_translation(scene, input_node, tmp_path):
    """``prestart`` starts ``medtranslate standby`` (Python and torch loaded before the click); the next run on
    its device is sent to it and gives the same result as a fresh worker. A standby for another device is let go
    (it ends by itself) and the run starts its own; so is a released one."""
    import slicer

    from test_slicer_fakeworker import make_tiny_package

    package = str(make_tiny_package(tmp_path / "package"))
    logic = TranslationLogic(scene=scene, python_executable=sys.executable)
    fresh = logic.run(TranslationRequest(input_node, package, target_modality="CT", device="cpu"), timeout=300)
    expected = slicer.util.arrayFromVolume(fresh.output_node).copy()
    logic.prestart("cpu")
    standby = logic.standby_pid
    logic.prestart("cpu")  # one is there for this device already: kept
    assert standby is not None and logic.standby_pid == standby and logic.wait_for_standby(120)
    workers = []
    logic.on_status = lambda status: workers.append(logic.worker_pid)
    warm = logic.run(TranslationRequest(input_node, package, target_modality="CT", device="cpu"), timeout=300)
    assert workers[0] == standby and logic.standby_pid is None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(warm.output_node), expected)
    assert warm.output_node.GetAttribute("MedTranslate.device") == "cpu"

    logic.prestart("cpu")
    other_device = logic.standby_pid
    workers.clear()
    logic.run(TranslationRequest(input_node, package, target_modality="CT", device="auto"), timeout=300)
    assert workers[0] != other_device and _gone_within(other_device, 30)
    logic.prestart("auto")
    released = logic.standby_pid
    logic.release_standby()
    assert logic.standby_pid is None and _gone_within(released, 30)


def test_a_standby_worker_loads_the_chosen_model_s_needs_and_follows_the_choice(scene, input_node, tmp_path):
    """``prestart(device, model)`` starts ``standby --model MODEL``; the same choice keeps that worker, another
    model replaces it (the old one ends by itself), and the run sent to it names what it runs."""
    from test_slicer_fakeworker import make_tiny_package

    package = str(make_tiny_package(tmp_path / "package"))
    logic = TranslationLogic(scene=scene, python_executable=sys.executable)
    logic.prestart("cpu", package)
    first = logic.standby_pid
    logic.prestart("cpu", package)
    assert first is not None and logic.standby_pid == first
    assert logic._standby.command[-3:] == ["standby", "--model", package]
    logic.prestart("cpu", "another-model")
    assert logic.standby_pid not in (None, first) and _gone_within(first, 30)
    logic.prestart("cpu", package)
    assert logic.wait_for_standby(120)
    standby = logic._standby
    status = logic.run(TranslationRequest(input_node, package, target_modality="CT", device="cpu"), timeout=300)
    assert status.state == "done" and standby.command[3] == "translate" and "standby" not in standby.command


def test_a_standby_worker_that_ended_is_replaced_by_a_fresh_one(scene, input_node):
    """A standby that died before the click (here the fake worker, which knows no ``standby`` command) cannot take
    the run: a worker is started for it as without a standby, and the run succeeds."""
    logic = _logic(scene)
    logic.prestart("auto")
    dead = logic.standby_pid
    assert dead is not None and _gone_within(dead, 30) and not logic.wait_for_standby(1)
    workers = []
    logic.on_status = lambda status: workers.append(logic.worker_pid)
    status = logic.run(TranslationRequest(input_node, "fake-ok"), timeout=60)
    assert status.state == "done" and workers[0] not in (None, dead) and logic.standby_pid is None


def test_nvidia_driver_detection_follows_path(tmp_path, monkeypatch):
    from MedTranslateModule.process import nvidia_driver_present

    monkeypatch.setenv("PATH", str(tmp_path))
    assert not nvidia_driver_present()
    tool = tmp_path / "nvidia-smi"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert nvidia_driver_present()


def test_status_line_shows_the_time_left_in_words_while_running():
    running = TranslationStatus(state="running", stage="inference", eta_seconds=4186.0, message="12/155 slices")
    assert running.text() == "inference, about 1 h 10 min left: 12/155 slices"
    running.eta_seconds = None
    assert running.text() == "inference: 12/155 slices"
    assert TranslationStatus(state="done", eta_seconds=3.0, message="finished").text() == "finished"


@pytest.mark.slow
def test_click_to_result_benchmark_times_every_panel_stage(capsys):
    """``Testing/bench_slicer.py`` on a tiny volume: one row per size with a time per status the panel shows and
    both processes' peaks; a stage the worker never reported would fail the table."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_slicer", Path(__file__).with_name("bench_slicer.py"))
    bench_slicer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_slicer)
    assert bench_slicer.main(["--sizes", "48x40x24", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for label in ("| 48 x 40 x 24 (1 runs)", "| 48 x 40 x 24, prestarted worker (1 runs)"):  # both worker starts
        cells = [cell.strip() for cell in next(line for line in lines if line.startswith(label)).strip("|").split("|")]
        assert len(cells) == 9 and all(cell.endswith(" s") for cell in cells[1:7])
        assert float(cells[1].removesuffix(" s")) >= sum(float(c.removesuffix(" s")) for c in cells[2:7]) - 0.2
        assert all(cell.endswith(" MiB") and float(cell.removesuffix(" MiB")) > 50 for cell in cells[7:])
