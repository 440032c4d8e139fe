"""The Slicer logic protects the scene: wrong nodes are refused before a run, a re-run on another input never
overwrites the previous result, a scene changed during a run gets nothing, and names and provenance stay right."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedTranslate"))

from conftest import IJK_TO_RAS  # noqa: E402
from test_slicer_logic import _logic  # noqa: E402

from MedTranslateModule.logic import TranslationFailed, TranslationRequest  # noqa: E402
from MedTranslateModule.nodes import evaluate_against_reference, output_for_input  # noqa: E402


def _add(name: str, array=None, matrix=IJK_TO_RAS, node_class: str | None = None):
    import slicer

    values = np.ones((12, 14, 16), np.float32) if array is None else array
    if node_class is None:
        return slicer.util.addVolumeFromArray(values, ijkToRAS=matrix, name=name)
    return slicer.util.addVolumeFromArray(values, ijkToRAS=matrix, name=name, nodeClassName=node_class)


def _translate_under(scene, node):
    """Put ``node`` under a linear transform shifted 25 mm in x; returns the transform node."""
    import vtk

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def test_wrong_nodes_are_refused_before_the_run(scene, input_node):
    import slicer

    logic = _logic(scene)
    labels = _add("segmentation", node_class="vtkMRMLLabelMapVolumeNode")
    colour = slicer.util.addVolumeFromArray(np.ones((12, 14, 16, 3), np.uint8), ijkToRAS=IJK_TO_RAS,
                                            name="photo", nodeClassName="vtkMRMLVectorVolumeNode")
    mask_volume = _add("body mask")  # a scalar volume (not a label map) used as the mask
    before = scene.GetNumberOfNodes()
    input_values = slicer.util.arrayFromVolume(input_node).copy()
    cases = [(TranslationRequest(labels, "fake-ok"), "segmentation is a label map"),
             (TranslationRequest(colour, "fake-ok"), "photo has 3 components"),
             (TranslationRequest(input_node, "fake-ok", output_node=input_node), "output volume is the input"),
             (TranslationRequest(input_node, "fake-ok", output_node=mask_volume, mask_node=mask_volume),
              "output volume is the mask volume: the mask is never overwritten"),
             (TranslationRequest(input_node, "fake-ok", output_node=labels), "not a plain scalar volume")]
    for request, message in cases:
        with pytest.raises(TranslationFailed, match=message):
            logic.start(request)
        assert not logic.is_running and logic.workdir is None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(input_node), input_values)
    assert input_node.GetAttribute("MedTranslate.synthetic") is None
    assert scene.GetNumberOfNodes() == before


def test_mask_and_reference_under_another_transform_are_refused(scene, input_node):
    mask = _add("mask")
    reference = _add("reference", np.full((12, 14, 16), 5.0, np.float32))
    _translate_under(scene, mask)
    with pytest.raises(TranslationFailed, match="mask is under a different transform"):
        _logic(scene).start(TranslationRequest(input_node, "fake-ok", mask_node=mask))
    assert evaluate_against_reference(input_node, reference).metrics["mae"] > 0  # same grid, same frame: fine
    transform = _translate_under(scene, reference)
    with pytest.raises(TranslationFailed, match="reference .* is under a different transform"):
        evaluate_against_reference(input_node, reference)
    input_node.SetAndObserveTransformNodeID(transform.GetID())  # both under the same transform: fine again
    assert evaluate_against_reference(input_node, reference).metrics["mae"] > 0


def test_evaluation_refuses_empty_and_colour_references(scene, input_node):
    import slicer

    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(TranslationFailed, match="reference volume that has image data"):
        evaluate_against_reference(input_node, empty)
    colour = slicer.util.addVolumeFromArray(np.ones((12, 14, 16, 3), np.uint8), ijkToRAS=IJK_TO_RAS,
                                            name="photo", nodeClassName="vtkMRMLVectorVolumeNode")
    with pytest.raises(TranslationFailed, match="photo has 3 components"):
        evaluate_against_reference(input_node, colour)


def test_rerun_keeps_results_apart_and_replaces_provenance(scene, input_node):
    import slicer

    logic = _logic(scene)
    first = logic.run(TranslationRequest(input_node, "fake-ok", target_modality="CT", uncertainty=True),
                      timeout=60)
    second = logic.run(TranslationRequest(input_node, "fake-ok", target_modality="CT"), timeout=60)
    assert (first.output_node.GetName(), second.output_node.GetName()) == ("MRHead_synthetic_CT",
                                                                           "MRHead_synthetic_CT_1")
    assert first.uncertainty_node.GetName() == "MRHead_synthetic_CT_uncertainty"
    assert first.output_node.GetAttribute("MedTranslate.source_node_id") == input_node.GetID()
    assert first.output_node.GetAttribute("MedTranslate.source_volume") == "MRHead"

    # the same output again, now with steps and without uncertainty: old attributes and the old map's link go
    output = first.output_node
    output.SetAttribute("MedTranslate.warnings", "a warning of the first run")
    logic.run(TranslationRequest(input_node, "fake-ok", output_node=output, samples=3), timeout=60)
    assert output.GetAttribute("MedTranslate.samples") == "3"
    assert output.GetAttribute("MedTranslate.warnings") == "fake warning: input looks unusual"
    assert output.GetNodeReference("MedTranslateUncertainty") is None
    # with uncertainty: one map per output node, updated in place rather than piling up
    again = logic.run(TranslationRequest(input_node, "fake-ok", output_node=output, uncertainty=True), timeout=60)
    count = scene.GetNumberOfNodes()
    repeat = logic.run(TranslationRequest(input_node, "fake-ok", output_node=output, uncertainty=True), timeout=60)
    assert repeat.uncertainty_node is again.uncertainty_node and scene.GetNumberOfNodes() == count
    assert output.GetNodeReference("MedTranslateUncertainty") is again.uncertainty_node
    names = [node.GetName() for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")]
    assert len(names) == len(set(names))


def test_another_model_into_the_same_output_renames_it_and_drops_the_stale_map(scene, input_node):
    """A result node MedTranslate named takes the new target's name and display; the uncertainty map of the
    result it replaced goes (it would describe another image); a name the user gave is kept."""
    import slicer

    logic = _logic(scene)
    first = logic.run(TranslationRequest(input_node, "fake-ok", target_modality="CT", uncertainty=True), timeout=60)
    output, old_map = first.output_node, first.uncertainty_node
    assert not output.GetDisplayNode().GetAutoWindowLevel()  # the CT window
    second = logic.run(TranslationRequest(input_node, "fake-ok", target_modality="T2", output_node=output),
                       timeout=60)
    assert second.output_node is output and output.GetName() == "MRHead_synthetic_T2"
    assert output.GetDisplayNode().GetAutoWindowLevel()
    assert second.uncertainty_node is None and not scene.IsNodePresent(old_map)
    third = logic.run(TranslationRequest(input_node, "fake-ok", target_modality="CT", output_node=output,
                                         uncertainty=True), timeout=60)
    assert (output.GetName(), third.uncertainty_node.GetName()) == ("MRHead_synthetic_CT",
                                                                    "MRHead_synthetic_CT_uncertainty")
    assert sorted(n.GetName() for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")) == [
        "MRHead", "MRHead_synthetic_CT", "MRHead_synthetic_CT_uncertainty"]
    output.SetName("sCT for planning")
    logic.run(TranslationRequest(input_node, "fake-ok", target_modality="T2", output_node=output), timeout=60)
    assert output.GetName() == "sCT for planning"


def test_previous_patients_result_is_not_the_next_output(scene, input_node):
    logic = _logic(scene)
    result = logic.run(TranslationRequest(input_node, "fake-ok", target_modality="CT"), timeout=60).output_node
    other_patient = _add("PatientB", np.full((12, 14, 16), 7.0, np.float32))
    assert output_for_input(result, input_node) is result
    assert output_for_input(result, other_patient) is None
    assert output_for_input(_add("chosen by the user"), other_patient) is not None
    assert output_for_input(None, other_patient) is None


@pytest.mark.parametrize("change", ["remove input", "close scene", "remove output"])
def test_scene_changed_during_the_run_gets_nothing(scene, input_node, change):
    logic = _logic(scene)
    output = _add("chosen output")
    logic.start(TranslationRequest(input_node, "fake-ok", output_node=output))
    if change == "remove input":
        scene.RemoveNode(input_node)
    elif change == "remove output":
        scene.RemoveNode(output)
    else:
        scene.Clear(0)
    before = scene.GetNumberOfNodes()
    while logic.is_running:
        logic.poll()
    assert logic.status.state == "failed" and "removed from the scene" in logic.status.message
    assert scene.GetNumberOfNodes() == before and logic.workdir is None


def test_a_failure_while_loading_removes_the_new_nodes(scene, input_node, monkeypatch):
    from MedTranslateLib import scene as scene_tools

    def broken_display(node):
        raise RuntimeError("display preset missing")

    monkeypatch.setattr(scene_tools, "apply_uncertainty_display", broken_display)
    logic = _logic(scene)
    before = scene.GetNumberOfNodes()
    with pytest.raises(TranslationFailed, match="Could not load the result: display preset missing"):
        logic.run(TranslationRequest(input_node, "fake-ok", target_modality="CT", uncertainty=True), timeout=60)
    assert scene.GetNumberOfNodes() == before and logic.workdir is None


def test_the_panel_asks_before_a_result_replaces_a_volume_it_did_not_make(scene, input_node):
    """A loaded scan or reference chosen as the output gets a question first; a new, empty or earlier-result
    volume does not."""
    from MedTranslateModule.nodes import overwrite_question

    reference = _add("CT reference")
    question = overwrite_question(reference)
    assert question and "CT reference holds an image MedTranslate did not make" in question
    assert "Create new volume" in question
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty output")
    result = _logic(scene).run(TranslationRequest(input_node, "fake-ok", target_modality="CT"), timeout=60)
    assert [overwrite_question(node) for node in (None, empty, result.output_node)] == [None, None, None]


def test_the_translate_button_request_follows_the_panel_and_the_models_family(scene, input_node):
    """Steps and samples only for sampled families, no uncertainty map asked of a family without one, the output
    named after the input and the target, the panel's device choice as the worker's."""
    from types import SimpleNamespace

    from MedTranslateModule.models import ModelInfo
    from MedTranslateModule.parameters import request_from_panel

    mask = _add("mask")
    panel = SimpleNamespace(inputVolume=input_node, modelId="m", outputVolume=None, maskVolume=mask, device="CPU",
                            uncertainty=True, diffusionSteps=20, samples=3)
    diffusion = request_from_panel(panel, ModelInfo("m", target_modality="CT", family="diffusion"))
    assert (diffusion.steps, diffusion.samples, diffusion.uncertainty) == (20, 3, True)
    assert (diffusion.output_name, diffusion.device, diffusion.mask_node) == ("MRHead_synthetic_CT", "cpu", mask)
    unet = request_from_panel(panel, ModelInfo("m", target_modality="T2", family="unet"))
    assert (unet.steps, unet.samples, unet.uncertainty, unet.output_name) == (None, None, True, "MRHead_synthetic_T2")
    forest = request_from_panel(panel, ModelInfo("m", target_modality="CT", family="random_forest"))
    assert forest.uncertainty is False and forest.target_modality == "CT"
    unlisted = request_from_panel(panel, None)
    assert (unlisted.model_id, unlisted.target_modality, unlisted.steps) == ("m", "", None)


def test_a_worker_that_cannot_start_is_one_clear_failure(scene, input_node, tmp_path):
    """A missing or broken worker interpreter (a damaged install) ended ``run`` with a bare FileNotFoundError
    ("[Errno 2] No such file or directory: ...") instead of the TranslationFailed every other failure gives."""
    from MedTranslateModule.logic import TranslationLogic

    logic = TranslationLogic(scene=scene, worker_command=[str(tmp_path / "PythonSlicer"), "-m", "MedTranslateLib"])
    before = scene.GetNumberOfNodes()
    with pytest.raises(TranslationFailed, match="Could not start the MedTranslate worker .*PythonSlicer.*Reinstall"):
        logic.run(TranslationRequest(input_node, "fake-ok"), timeout=60)
    assert not logic.is_running and logic.workdir is None and scene.GetNumberOfNodes() == before


def test_a_volume_with_empty_image_data_is_refused_as_having_none(scene):
    """A volume node whose image holds no voxels (a failed load, a node made empty by another module) was only
    refused when writing its temporary copy, with a message that pointed at the disk ("Could not write ...")."""
    import vtk

    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    empty.SetAndObserveImageData(vtk.vtkImageData())
    logic = _logic(scene)
    with pytest.raises(TranslationFailed, match="Select an input volume that has image data"):
        logic.start(TranslationRequest(empty, "fake-ok"))
    assert not logic.is_running and logic.workdir is None
