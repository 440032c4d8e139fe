"""A run that fails while its result is being loaded leaves the scene exactly as it was: a reused output node (and
the uncertainty map it links to) keeps its voxels, geometry, attributes, name, display and place in the subject
hierarchy, and no new node remains."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedTranslate"))

from test_slicer_logic import _logic, _matrix  # noqa: E402

from MedTranslateModule.logic import TranslationFailed, TranslationRequest  # noqa: E402


def _state(scene, node):
    """Everything a run may change on ``node``, as plain Python values."""
    import slicer

    if node is None:
        return None
    image = node.GetImageData()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(node)
    displays = []
    for index in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(index)
        displays.append((display.GetID(), display.GetAutoWindowLevel(), display.GetWindow(), display.GetLevel(),
                         display.GetColorNodeID()))
    return {
        "name": node.GetName(),
        "voxels": slicer.util.arrayFromVolume(node).copy() if image is not None else None,
        "dims": image.GetDimensions() if image is not None else None,
        "scalar type": image.GetScalarType() if image is not None else None,
        "matrix": _matrix(node).tolist(),
        "transform": node.GetTransformNodeID(),
        "attributes": {name: node.GetAttribute(name) for name in node.GetAttributeNames() or ()},
        "displays": displays,
        "uncertainty reference": node.GetNodeReferenceID("MedTranslateUncertainty"),
        "hierarchy parent": hierarchy.GetItemParent(item) if item else None,
    }


def _assert_same(before, after):
    assert before.keys() == after.keys()
    for key in before:
        if key == "voxels":
            assert (before[key] is None) == (after[key] is None), key
            if before[key] is not None:
                assert before[key].dtype == after[key].dtype and np.array_equal(before[key], after[key]), key
        else:
            assert before[key] == after[key], key


def _node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def _break(monkeypatch, name):
    from MedTranslateLib import scene as scene_tools

    def broken(*args, **kwargs):
        raise RuntimeError(f"{name} broke")

    monkeypatch.setattr(scene_tools, name, broken)


@pytest.mark.parametrize("step", ["place_beside", "apply_ct_display", "apply_uncertainty_display"])
def test_a_failed_load_into_an_earlier_result_restores_it(scene, input_node, monkeypatch, step):
    """The user re-runs into an earlier result (with its uncertainty map) after editing the input; a later step of
    placing the new result fails after its voxels went into the node: the node and its map are as before."""
    import slicer

    logic = _logic(scene)
    earlier = logic.run(TranslationRequest(input_node, "fake-ok", target_modality="CT", uncertainty=True),
                        timeout=60)
    output, old_map = earlier.output_node, earlier.uncertainty_node
    output.SetAttribute("user note", "keep me")
    slicer.util.updateVolumeFromArray(input_node, slicer.util.arrayFromVolume(input_node) + 50.0)  # an edit
    before = (_state(scene, output), _state(scene, old_map), _node_ids(scene))

    _break(monkeypatch, step)
    with pytest.raises(TranslationFailed, match=f"Could not load the result: {step} broke"):
        logic.run(TranslationRequest(input_node, "fake-ok", target_modality="CT", output_node=output,
                                     uncertainty=True), timeout=60)
    _assert_same(before[0], _state(scene, output))
    _assert_same(before[1], _state(scene, old_map))
    assert _node_ids(scene) == before[2] and logic.workdir is None
    assert output.GetNodeReference("MedTranslateUncertainty") is old_map

    monkeypatch.undo()  # the same run without the failure now goes through, into the same nodes
    again = logic.run(TranslationRequest(input_node, "fake-ok", target_modality="CT", output_node=output,
                                         uncertainty=True), timeout=60)
    assert again.output_node is output and again.uncertainty_node is old_map
    np.testing.assert_allclose(slicer.util.arrayFromVolume(output),
                               slicer.util.arrayFromVolume(input_node) * 2 - 1000, rtol=1e-5)


@pytest.mark.parametrize("step", ["place_beside", "apply_ct_display", "apply_uncertainty_display"])
def test_a_failed_load_into_a_volume_the_user_chose_restores_it(scene, input_node, monkeypatch, step):
    """A volume of another size, type, grid, transform and name, without a display node or uncertainty map: all of
    it comes back, and the display node and the new uncertainty map the run made for it are gone."""
    import slicer
    import vtk

    chosen = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "planning CT")
    chosen.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([2.0, 2.0, 3.0, 1.0])))
    slicer.util.updateVolumeFromArray(chosen, np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "elsewhere")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(1, 3, -7.0)
    transform.SetMatrixTransformToParent(matrix)
    chosen.SetAndObserveTransformNodeID(transform.GetID())
    before = (_state(scene, chosen), _node_ids(scene))
    assert chosen.GetNumberOfDisplayNodes() == 0

    _break(monkeypatch, step)
    with pytest.raises(TranslationFailed, match=f"Could not load the result: {step} broke"):
        _logic(scene).run(TranslationRequest(input_node, "fake-ok", target_modality="CT", output_node=chosen,
                                             uncertainty=True), timeout=60)
    _assert_same(before[0], _state(scene, chosen))
    assert _node_ids(scene) == before[1]
