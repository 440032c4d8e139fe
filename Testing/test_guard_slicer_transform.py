"""Guard for the Slicer module: a result of an input under a transform lies under that transform too (in the same
place as the input), on the input's exact voxel grid."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedTranslate"))

from test_slicer_fakeworker import fake_worker_command  # noqa: E402

from MedTranslateModule.logic import TranslationLogic, TranslationRequest  # noqa: E402


def _matrix(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def test_result_of_a_transformed_input_is_under_the_same_transform(scene, input_node) -> None:
    import vtk

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    transform.SetMatrixTransformToParent(matrix)
    input_node.SetAndObserveTransformNodeID(transform.GetID())
    logic = TranslationLogic(scene=scene, worker_command=fake_worker_command())
    status = logic.run(TranslationRequest(input_node, "fake-ok", target_modality="CT", uncertainty=True,
                                          device="cpu"), timeout=60)
    for node in (status.output_node, status.uncertainty_node):
        assert node.GetTransformNodeID() == transform.GetID()
        assert np.array_equal(_matrix(node), _matrix(input_node))


def test_a_transformed_input_is_translated_as_it_lies_in_the_world_hardened_or_not(scene, input_node, tmp_path):
    """A scan reoriented with a transform (the usual fix of a wrong orientation, or a registration with a large
    rotation) must give the same synthetic image whether the transform is hardened or not: the worker slices along
    the axis that is axial as the user sees the volume. It was sent the volume without its transform, and a 2D model
    sliced it along another anatomical axis (the head phantom: mean 28 HU, up to 2849 HU apart)."""
    import slicer
    import vtk

    from test_slicer_fakeworker import make_tiny_package

    package = str(make_tiny_package(tmp_path / "package"))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "reorient")
    matrix = vtk.vtkMatrix4x4()  # 90 degrees about the left-right axis: axial becomes coronal
    matrix.DeepCopy((1, 0, 0, 5.0, 0, 0, -1, -3.0, 0, 1, 0, 2.0, 0, 0, 0, 1))
    transform.SetMatrixTransformToParent(matrix)
    hardened = slicer.util.addVolumeFromArray(slicer.util.arrayFromVolume(input_node).copy(), name="hardened")
    local = vtk.vtkMatrix4x4()
    input_node.GetIJKToRASMatrix(local)
    hardened.SetIJKToRASMatrix(local)
    for node in (input_node, hardened):
        node.SetAndObserveTransformNodeID(transform.GetID())
    hardened.HardenTransform()
    assert hardened.GetTransformNodeID() is None
    logic = TranslationLogic(scene=scene, python_executable=sys.executable)
    results = {}
    for node in (input_node, hardened):
        results[node.GetName()] = logic.run(TranslationRequest(node, package, target_modality="CT", device="cpu"),
                                            timeout=300).output_node
    synthetic = results["MRHead"]
    assert synthetic.GetTransformNodeID() == transform.GetID()  # still under the transform, on the input's grid
    assert np.array_equal(_matrix(synthetic), _matrix(input_node))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(synthetic),
                               slicer.util.arrayFromVolume(results["hardened"]), atol=0.5)
    from conftest import IJK_TO_RAS

    mask = slicer.util.addVolumeFromArray(np.ones((12, 14, 16), np.uint8), ijkToRAS=IJK_TO_RAS, name="body",
                                          nodeClassName="vtkMRMLLabelMapVolumeNode")
    mask.SetAndObserveTransformNodeID(transform.GetID())  # a mask under the same transform goes on the same grid
    logic.run(TranslationRequest(input_node, package, target_modality="CT", device="cpu", mask_node=mask), timeout=300)
    # an affine registration that shears: its hardened grid has non-orthogonal axes, which the backend refuses, so
    # the volume goes on its own grid as before (and is still translated)
    matrix.DeepCopy((1.05, 0.08, 0.02, 5.0, 0.03, 0.97, -0.06, -3.0, -0.01, 0.05, 1.1, 2.0, 0, 0, 0, 1))
    transform.SetMatrixTransformToParent(matrix)
    sheared = logic.run(TranslationRequest(input_node, package, target_modality="CT", device="cpu"), timeout=300)
    assert sheared.output_node.GetTransformNodeID() == transform.GetID()


def test_a_transform_edited_during_the_run_keeps_the_result_under_it(scene, input_node) -> None:
    """The registration is still being adjusted while the volume is translated: the voxels of the result still match
    the input's one to one, so the result is loaded, under the (edited) transform, on the input's grid."""
    import vtk

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    input_node.SetAndObserveTransformNodeID(transform.GetID())
    logic = TranslationLogic(scene=scene, worker_command=fake_worker_command())
    logic.start(TranslationRequest(input_node, "fake-ok", target_modality="CT"))
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy((0, -1, 0, 12.0, 1, 0, 0, -4.0, 0, 0, 1, 3.0, 0, 0, 0, 1))
    transform.SetMatrixTransformToParent(matrix)  # edited before the worker is done
    while logic.is_running:
        logic.poll()
    assert logic.status.state == "done", logic.status.message
    output = logic.status.output_node
    assert output.GetTransformNodeID() == transform.GetID()
    assert np.array_equal(_matrix(output), _matrix(input_node))
    before = scene.GetNumberOfNodes()
    logic.start(TranslationRequest(input_node, "fake-ok", target_modality="CT"))
    input_node.SetOrigin(1.0, 2.0, 3.0)  # the volume itself moved: its voxels no longer match the result's
    while logic.is_running:
        logic.poll()
    assert logic.status.state == "failed" and "geometry differs" in logic.status.message
    assert scene.GetNumberOfNodes() == before
