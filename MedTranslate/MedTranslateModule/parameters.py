"""The module's parameter node (``@parameterNodeWrapper``) and the choices shown in the panel.

Inside Slicer the class is a real parameter node wrapper bound to the panel through the
``SlicerParameterName`` properties of the ``.ui``; outside Slicer (tests) it stays a plain annotated
class so the field names can be checked against the ``.ui``. No ``from __future__ import annotations``
here: the wrapper reads the annotations as real types.
"""

from typing import Annotated, Union

try:  # Slicer application
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
except ImportError:  # slicer-core or no Slicer: keep the annotations, no wrapping
    def parameterNodeWrapper(cls):  # type: ignore[no-redef]
        return cls

    class Choice:  # type: ignore[no-redef]
        def __init__(self, choices) -> None:
            self.choices = list(choices)

    class WithinRange:  # type: ignore[no-redef]
        def __init__(self, minimum, maximum) -> None:
            self.minimum, self.maximum = minimum, maximum

try:
    from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode
except ImportError:  # pragma: no cover - no Slicer at all
    vtkMRMLScalarVolumeNode = vtkMRMLLabelMapVolumeNode = object  # type: ignore[assignment,misc]

#: A mask may be a scalar volume or a label map. The wrapper's GUI connector sets a node selector's ``nodeTypes``
#: from the field's type (replacing the .ui's list), so the field must name both.
MaskVolume = Union[vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode]

#: Panel device choice -> worker ``--device`` value.
DEVICE_CHOICES = {"Auto": "auto", "GPU": "cuda", "CPU": "cpu"}
#: Panel layout choice -> :mod:`MedTranslateLib.scene` layout name.
LAYOUT_CHOICES = {"Side by side": "side_by_side", "Fused": "fused", "With uncertainty": "triple"}


@parameterNodeWrapper
class MedTranslateParameterNode:
    """Everything the panel edits; saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    maskVolume: MaskVolume
    modelId: str = ""
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "Auto"
    uncertainty: bool = False
    diffusionSteps: Annotated[int, WithinRange(0, 1000)] = 0  # 0: the model card's default
    samples: Annotated[int, WithinRange(1, 64)] = 1
    foregroundOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    layout: Annotated[str, Choice(list(LAYOUT_CHOICES))] = "Side by side"
    referenceVolume: vtkMRMLScalarVolumeNode
    referenceMask: MaskVolume


def parameter_names() -> list[str]:
    """Names of the parameter node fields (what ``SlicerParameterName`` in the ``.ui`` may use)."""
    names = []
    for klass in reversed(MedTranslateParameterNode.__mro__):
        names += [name for name in getattr(klass, "__annotations__", {}) if name not in names]
    return names
