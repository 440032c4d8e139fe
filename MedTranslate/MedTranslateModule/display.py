"""Display in the Slicer application: fused + linked views through the layout manager, opacity, fit."""

from __future__ import annotations

from typing import Any

#: Views that blend input and synthetic at the user's opacity (Yellow shows the synthetic volume alone).
FUSED_VIEWS = ("Red", "Green")


def show_result(input_node: Any, synthetic_node: Any, opacity: float = 0.5, layout: str = "side_by_side",
                uncertainty_node: Any = None) -> dict[str, Any]:
    """Set up the fused, linked views (see ``MedTranslateLib.scene``) and let the app create the widgets."""
    import slicer

    from MedTranslateLib.scene import setup_fused_linked_display

    composites = setup_fused_linked_display(slicer.mrmlScene, input_node, synthetic_node, opacity,
                                            uncertainty_node, layout)
    layout_manager = slicer.app.layoutManager() if hasattr(slicer, "app") else None
    if layout_manager is not None:
        layout_manager.setLayout(slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode").GetViewArrangement())
        for view in composites:
            widget = layout_manager.sliceWidget(view)
            if widget is not None:
                widget.sliceLogic().FitSliceToAll()
    return composites


def set_foreground_opacity(opacity: float) -> None:
    """Foreground opacity of every slice view (fused display), like the slice-view opacity slider."""
    import slicer

    scene = slicer.mrmlScene
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if composite.GetForegroundVolumeID() and composite.GetLayoutName() in FUSED_VIEWS:
            composite.SetForegroundOpacity(min(max(float(opacity), 0.0), 1.0))
