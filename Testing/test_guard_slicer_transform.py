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
