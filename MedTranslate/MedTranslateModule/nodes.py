"""Checks on the scene's volume nodes before and after a run, and evaluation against a reference node.

Every check raises :class:`TranslationFailed` with one message that says what is wrong and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GEOMETRY_TOLERANCE_MM = 1e-3
SOURCE_NODE_ATTRIBUTE = "MedTranslate.source_node_id"
#: The name MedTranslate gave a result node: while the node still has it, a new result into it is renamed.
GIVEN_NAME_ATTRIBUTE = "MedTranslateGivenName"  # outside the provenance prefix, which each run replaces
#: Attributes MedTranslate sets on the volumes it makes (results and uncertainty maps).
RESULT_ATTRIBUTES = ("MedTranslate.synthetic", SOURCE_NODE_ATTRIBUTE, GIVEN_NAME_ATTRIBUTE)


class TranslationFailed(RuntimeError):
    """A run that did not produce a result; ``str()`` is the message for the user."""


def is_label_map(node: Any) -> bool:
    return bool(node.IsA("vtkMRMLLabelMapVolumeNode"))


def check_image_node(node: Any, role: str) -> None:
    """``node`` holds a 3D single-component image that is not a label map."""
    image = node.GetImageData() if node is not None else None
    if image is None or image.GetPointData().GetScalars() is None or 0 in image.GetDimensions():
        raise TranslationFailed(f"Select {role} that has image data.")
    if is_label_map(node):
        raise TranslationFailed(f"{node.GetName()} is a label map (a segmentation), not an image: select the "
                                f"image volume as {role}.")
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise TranslationFailed(f"{node.GetName()} has {node.GetImageData().GetNumberOfScalarComponents()} "
                                "components per voxel (a colour or vector volume): select a single-component "
                                "(scalar) volume, or convert it with the 'Vector to Scalar Volume' module.")


def is_medtranslate_result(node: Any) -> bool:
    """True for a volume MedTranslate made (a synthetic volume or its uncertainty map)."""
    return any(node.GetAttribute(name) for name in RESULT_ATTRIBUTES)


def default_input_volume(scene: Any) -> Any:
    """The volume the panel selects as input when none is: the first plain scalar volume (the input selector's
    class, not a label map, vector, tensor or hidden volume) with a single-component image that MedTranslate did
    not make; None when there is no such volume (rather than a colour volume or an earlier result)."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.GetClassName() != "vtkMRMLScalarVolumeNode" or node.GetHideFromEditors() \
                or is_medtranslate_result(node):
            continue
        try:
            check_image_node(node, "an input volume")
        except TranslationFailed:  # no voxels, or a colour image stored in a scalar volume node
            continue
        return node
    return None


def check_output_node(output_node: Any, input_node: Any, mask_node: Any = None) -> None:
    """An explicitly chosen output node can take the result: a plain scalar volume other than the input and
    the mask."""
    if output_node is None:
        return
    for node, role in ((input_node, "input"), (mask_node, "mask")):
        if node is not None and (output_node is node or output_node.GetID() == node.GetID()):
            raise TranslationFailed(f"The output volume is the {role} volume: the {role} is never overwritten. "
                                    "Choose 'Create new volume' or another output volume.")
    if output_node.GetClassName() != "vtkMRMLScalarVolumeNode":
        raise TranslationFailed(f"The output volume {output_node.GetName()} is a {output_node.GetClassName()}, "
                                "not a plain scalar volume: choose 'Create new volume' or a scalar volume.")


def overwrite_question(output_node: Any) -> str | None:
    """The question to ask before the result replaces the voxels of ``output_node``: None for a new or empty
    volume and for one that holds an earlier MedTranslate result; else (a loaded scan, a reference) the question."""
    if output_node is None or output_node.GetImageData() is None or output_node.GetAttribute(SOURCE_NODE_ATTRIBUTE):
        return None
    return (f"The output volume {output_node.GetName()} holds an image MedTranslate did not make. Replace its voxels "
            "with the synthetic image? (Cancel, then choose 'Create new volume', to keep it.)")


def same_world_frame(node: Any, other: Any) -> bool:
    """True when both nodes sit in the same world frame: the same parent transform, or transforms that differ
    by the identity."""
    import numpy as np
    import slicer
    import vtk

    first, second = node.GetParentTransformNode(), other.GetParentTransformNode()
    if first is second or (first is not None and second is not None and first.GetID() == second.GetID()):
        return True
    matrix = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(first, second, matrix):
        return False  # a non-linear transform between them
    values = np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])
    return bool(np.allclose(values, np.eye(4), atol=GEOMETRY_TOLERANCE_MM))


def world_ijk_to_ras(node: Any, frame: Any = None) -> Any:
    """The node's IJK-to-RAS ``vtkMatrix4x4`` in world coordinates: its parent transforms (those of ``frame``, a
    node in the same world frame, when given) applied when they are linear and keep the axes orthogonal (the grid a
    hardened copy would have, the orientation the user sees); else (a non-linear or shearing transform, whose
    hardened grid the backend could not take) its own matrix."""
    import numpy as np
    import vtk

    local, to_world, world = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(local)
    parent = (frame if frame is not None else node).GetParentTransformNode()
    if parent is None or not parent.IsTransformToWorldLinear() or not parent.GetMatrixTransformToWorld(to_world):
        return local
    vtk.vtkMatrix4x4.Multiply4x4(to_world, local, world)
    axes = np.array([[world.GetElement(i, j) for j in range(3)] for i in range(3)])
    axes = axes / np.linalg.norm(axes, axis=0)
    return world if np.max(np.abs(axes.T @ axes - np.eye(3))) < 1e-4 else local


def check_same_frame(node: Any, other: Any, role: str) -> None:
    if not same_world_frame(node, other):
        raise TranslationFailed(f"{role} {other.GetName()} is under a different transform than {node.GetName()}: "
                                "put both under the same transform, or harden the transforms (Data module, "
                                "right-click > Harden transform) first.")


def output_for_input(output_node: Any, input_node: Any) -> Any:
    """``output_node`` unless it is the synthetic volume of another input (None then, so that a new volume is
    made): re-running on a new input must not overwrite the previous patient's result."""
    if output_node is None or input_node is None:
        return output_node
    source = output_node.GetAttribute(SOURCE_NODE_ATTRIBUTE)
    return None if source and source != input_node.GetID() else output_node


def node_grid(node: Any) -> tuple[tuple[int, ...], Any]:
    """The voxel dimensions and the 3 x 4 IJK-to-RAS matrix of a volume node."""
    import numpy as np
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return node.GetImageData().GetDimensions(), np.array([[matrix.GetElement(i, j) for j in range(4)]
                                                          for i in range(3)])


@dataclass(frozen=True)
class ReferenceEvaluation:
    """Metrics against a reference, and the voxels they were taken over, in words for the panel."""

    metrics: dict[str, float]
    region: str

    def rows(self) -> list[tuple[str, str]]:
        """The panel's table: each metric to four significant digits, then the voxels compared."""
        return [*((name, f"{value:.4g}") for name, value in self.metrics.items()), ("compared", self.region)]


def evaluate_against_reference(synthetic_node: Any, reference_node: Any, mask_node: Any = None,
                               modality: str = "CT", card: dict[str, Any] | None = None) -> ReferenceEvaluation:
    """The metrics of ``medtranslate evaluate`` for a synthetic volume against a reference on the same grid
    (optional mask): SynthRAD's for CT; for MR the reference on the model's output scale with the model's
    ``card`` (as ``--model``), else both images on their own 0-1000 scale (MR has no unit to compare).

    Without a mask, MR is compared where the reference is non-zero (the brain of a skull-stripped scan, as
    ``medtranslate evaluate`` does for BraTS: its zero background would otherwise dominate), CT over every voxel.
    """
    import numpy as np
    import slicer

    from MedTranslateLib.evaluation.evaluate import CaseArrays, metrics_for_arrays

    if synthetic_node is None or reference_node is None:
        raise TranslationFailed("Select the synthetic volume and a reference volume to evaluate.")
    check_image_node(synthetic_node, "a synthetic volume")
    check_image_node(reference_node, "a reference volume")
    if mask_node is not None and mask_node.GetImageData() is None:
        raise TranslationFailed(f"The mask {mask_node.GetName()} has no image data: select another mask or none.")
    size, matrix = node_grid(synthetic_node)
    for node in [reference_node] + ([mask_node] if mask_node is not None else []):
        other_size, other_matrix = node_grid(node)
        if other_size != size or not np.allclose(other_matrix, matrix, atol=GEOMETRY_TOLERANCE_MM):
            raise TranslationFailed(
                f"{node.GetName()} is not on the synthetic volume's grid. Resample it first (module "
                "'Resample Image (BRAINS)' with the synthetic volume as reference).")
        check_same_frame(synthetic_node, node, "The reference" if node is reference_node else "The mask")
    synthetic = slicer.util.arrayFromVolume(synthetic_node).astype(np.float32)
    reference = slicer.util.arrayFromVolume(reference_node).astype(np.float32)
    mask, region = _evaluation_region(reference, mask_node, modality)
    if not mask.any():
        raise TranslationFailed(f"No voxel to evaluate: {region} is empty. Select a mask that covers the anatomy.")
    arrays = CaseArrays(synthetic, reference, mask, tuple(synthetic_node.GetSpacing()))
    return ReferenceEvaluation(metrics_for_arrays(arrays, modality, card), region)


def _evaluation_region(reference: Any, mask_node: Any, modality: str) -> tuple[Any, str]:
    """The voxels to compare (z, y, x booleans) and their description."""
    import slicer

    from MedTranslateLib.evaluation.evaluate import unmasked_region

    if mask_node is not None:
        mask = slicer.util.arrayFromVolume(mask_node) > 0
        return mask, f"inside mask {mask_node.GetName()} ({int(mask.sum()):,} voxels)"
    mask = unmasked_region(reference, modality)
    if not mask.all():
        return mask, (f"where the reference is non-zero ({int(mask.sum()):,} of {mask.size:,} voxels; "
                      "select a mask to choose the region)")
    if modality.upper() == "MR":
        return mask, f"every voxel ({mask.size:,}; select a mask to leave out the background)"
    return mask, (f"every voxel ({mask.size:,}), background air included: select the body mask to compare with "
                  "SynthRAD's figures")
