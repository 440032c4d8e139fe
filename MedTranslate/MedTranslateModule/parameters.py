"""The module's parameter node (``@parameterNodeWrapper``) and the choices shown in the panel.

Inside Slicer the class is a real parameter node wrapper bound to the panel through the
``SlicerParameterName`` properties of the ``.ui``; outside Slicer (tests) it stays a plain annotated
class so the field names can be checked against the ``.ui``. No ``from __future__ import annotations``
here: the wrapper reads the annotations as real types.
"""

from typing import Annotated, Any, Union

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


def request_from_panel(parameters: Any, model: Any) -> Any:
    """The :class:`TranslationRequest` the Translate button makes from the panel's ``parameters`` and the selected
    model's ``ModelInfo`` (None when the list lacks it): steps and samples only for sampled families, no
    uncertainty map for families that give none (the backend would refuse it)."""
    from MedTranslateLib.families import NO_UNCERTAINTY_FAMILIES, SAMPLED_FAMILIES
    from MedTranslateModule.logic import TranslationRequest, output_name_for

    family = model.family if model else ""
    target = model.target_modality if model else ""
    sampled = family in SAMPLED_FAMILIES
    return TranslationRequest(
        input_node=parameters.inputVolume, model_id=parameters.modelId, target_modality=target,
        output_node=parameters.outputVolume,
        output_name=output_name_for(parameters.inputVolume.GetName(), target) if parameters.inputVolume else None,
        device=DEVICE_CHOICES[parameters.device], mask_node=parameters.maskVolume,
        uncertainty=bool(parameters.uncertainty) and family not in NO_UNCERTAINTY_FAMILIES,
        steps=parameters.diffusionSteps if sampled else None,
        samples=parameters.samples if sampled else None)  # the panel's count (1 too; the CLI's default: the card's)
