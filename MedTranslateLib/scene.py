"""Slicer scene helpers: fused + linked display, provenance, subject hierarchy, ``.mrb`` export.

The only backend module that imports ``slicer``. It works both inside the Slicer application and with
the ``slicer-core`` package (MRML and module logics without the desktop application), so the Slicer
module and ``medtranslate translate --scene OUT.mrb`` share one implementation.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from MedTranslateLib.errors import ConfigError, InputError, OutputError
from MedTranslateLib.io.atomic import atomic_output

SIDE_BY_SIDE = "side_by_side"
FUSED_SINGLE = "fused"
TRIPLE = "triple"
LAYOUT_CHOICES = (SIDE_BY_SIDE, FUSED_SINGLE, TRIPLE)
#: Custom layout id (> 100 as Slicer asks) for input | synthetic | uncertainty, all axial.
TRIPLE_LAYOUT_ID = 1701
TRIPLE_LAYOUT_XML = """<layout type="horizontal">
 <item><view class="vtkMRMLSliceNode" singletontag="Red"><property name="orientation" action="default">Axial</property>
 <property name="viewlabel" action="default">R</property><property name="viewcolor" action="default">#F34A33</property></view></item>
 <item><view class="vtkMRMLSliceNode" singletontag="Yellow"><property name="orientation" action="default">Axial</property>
 <property name="viewlabel" action="default">Y</property><property name="viewcolor" action="default">#EDD54C</property></view></item>
 <item><view class="vtkMRMLSliceNode" singletontag="Green"><property name="orientation" action="default">Axial</property>
 <property name="viewlabel" action="default">G</property><property name="viewcolor" action="default">#6EB04B</property></view></item>
</layout>"""
VIEW_GROUP = 0
ATTRIBUTE_PREFIX = "MedTranslate."
#: Window/level (window, level) for synthetic CT, like Slicer's CT presets.
CT_WINDOW_LEVEL = {"CT_BRAIN": (100.0, 50.0), "CT_ABDOMEN": (350.0, 40.0), "CT_BONE": (1000.0, 400.0)}
UNCERTAINTY_COLOR_FILE = "Inferno.txt"


def _slicer():
    import slicer

    return slicer


def new_scene(cache_dir: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """A fresh ``vtkMRMLScene`` with application, colour and volumes logics (no desktop app needed).

    Returns ``(scene, volumes_logic)``; the scene can read ``.mrb`` files (cache manager set). Without a
    ``cache_dir`` the scene gets an empty temporary one, removed with the scene object: Slicer's cache manager
    walks its whole folder when it is set (the system temporary folder took 20 s on a busy machine).
    """
    slicer = _slicer()
    scene = slicer.vtkMRMLScene()
    own_cache = None if cache_dir else tempfile.TemporaryDirectory(prefix="medtranslate-scene-cache-")
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(str(cache_dir or own_cache.name))
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache)
    scene.SetDataIOManager(io_manager)
    scene.SetCacheManager(cache)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app_logic)
    import vtk

    shown = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.SetGlobalWarningDisplay(0)  # without the application there are no colour files to find
    try:
        colors.SetMRMLScene(scene)
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(shown)
    app_logic.SetModuleLogic("Colors", colors)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLApplicationLogic(app_logic)
    volumes.SetMRMLScene(scene)
    # keep the logics alive as long as the scene object
    scene._medtranslate_logics = (app_logic, colors, volumes, own_cache)  # type: ignore[attr-defined]
    return scene, volumes


def load_volume(volumes_logic: Any, path: str | os.PathLike, name: str) -> Any:
    """Load a volume file into the logic's scene as a ``vtkMRMLScalarVolumeNode``."""
    node = volumes_logic.AddArchetypeVolume(str(path), name, 0, None)
    if node is None:
        raise InputError(f"Slicer could not read the volume {path}.", "Check that the file is a readable 3D volume.")
    return node


def _layout_node(scene: Any) -> Any:
    slicer = _slicer()
    node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if node is None:  # no application: the layout logic creates the node with Slicer's standard layouts
        layout_logic = slicer.vtkMRMLLayoutLogic()
        layout_logic.SetMRMLScene(scene)
        node = layout_logic.GetLayoutNode()
    return node


def _composite_node(scene: Any, view: str) -> Any:
    """The slice composite node of a view; created (with its slice node) when there is no application."""
    slicer = _slicer()
    slice_node = scene.GetNodeByID(f"vtkMRMLSliceNode{view}")
    if slice_node is None or _find_composite(scene, view) is None:
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        if slice_node is None:
            slice_node = logic.AddSliceNode(view)
        else:
            logic.SetSliceNode(slice_node)
    slice_node.SetOrientation("Axial")
    return _find_composite(scene, view)


def _find_composite(scene: Any, view: str) -> Any:
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if node.GetLayoutName() == view:
            return node
    return None


def setup_fused_linked_display(scene: Any, input_node: Any, synthetic_node: Any, opacity: float = 0.5,
                               uncertainty_node: Any = None, layout: str = SIDE_BY_SIDE) -> dict[str, Any]:
    """Show input and synthetic volumes fused (input behind, synthetic in front) in linked views.

    ``side_by_side``: Red fuses input + synthetic at ``opacity``, Yellow shows the synthetic volume alone (as its
    background, so a fused view's opacity or foreground change, which linked control copies to every view of the
    group, never blends it); ``fused``: one Red view; ``triple`` adds a Green view with the uncertainty map. All
    views share one view group with linked and hot-linked control. Returns ``{view name: composite node}``.
    """
    if layout not in LAYOUT_CHOICES:
        raise InputError(f"Unknown layout {layout!r}.", f"Use one of {', '.join(LAYOUT_CHOICES)}.")
    slicer = _slicer()
    opacity = min(max(float(opacity), 0.0), 1.0)
    layout_node = _layout_node(scene)
    if layout == TRIPLE or (uncertainty_node is not None and layout == SIDE_BY_SIDE):
        layout = TRIPLE
        if not layout_node.IsLayoutDescription(TRIPLE_LAYOUT_ID):
            layout_node.AddLayoutDescription(TRIPLE_LAYOUT_ID, TRIPLE_LAYOUT_XML)
        arrangement = TRIPLE_LAYOUT_ID
    elif layout == SIDE_BY_SIDE:
        arrangement = slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    else:
        arrangement = slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView
    layout_node.SetViewArrangement(arrangement)

    views = {"Red": (input_node, synthetic_node, opacity)}
    if layout in (SIDE_BY_SIDE, TRIPLE):
        views["Yellow"] = (synthetic_node, None, 1.0)
    if layout == TRIPLE:
        views["Green"] = (input_node, uncertainty_node or synthetic_node, opacity if uncertainty_node else 1.0)
    composites = {}
    for view, (background, foreground, view_opacity) in views.items():
        composite = _composite_node(scene, view)
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(view_opacity)
        composite.SetLinkedControl(True)
        composite.SetHotLinkedControl(True)
        slice_node = scene.GetNodeByID(f"vtkMRMLSliceNode{view}")
        slice_node.SetViewGroup(VIEW_GROUP)
        composites[view] = composite
    return composites


def set_provenance(node: Any, provenance: dict[str, Any]) -> None:
    """Store provenance (model id, version, SHA256, date, ``synthetic``) as node attributes, replacing any
    earlier run's."""
    for name in node.GetAttributeNames() or ():
        if name.startswith(ATTRIBUTE_PREFIX):
            node.RemoveAttribute(name)
    for key, value in provenance.items():
        node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))
    node.SetAttribute(ATTRIBUTE_PREFIX + "synthetic", "true")
    node.SetAttribute(ATTRIBUTE_PREFIX + "provenance", json.dumps(provenance, sort_keys=True, default=str))


def provenance_of(node: Any) -> dict[str, Any]:
    """The provenance stored by :func:`set_provenance` (empty when none)."""
    text = node.GetAttribute(ATTRIBUTE_PREFIX + "provenance")
    return json.loads(text) if text else {}


def apply_ct_display(node: Any, preset: str = "CT_ABDOMEN") -> None:
    """CT window/level on a volume's display node (Slicer's preset when the app is there)."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    slicer = _slicer()
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "volumes"):
        if modules.volumes.logic().ApplyVolumeDisplayPreset(display, preset):
            return
    window, level = CT_WINDOW_LEVEL[preset]
    display.SetAutoWindowLevel(0)
    display.SetWindowLevel(window, level)


def apply_uncertainty_display(node: Any) -> None:
    """A perceptual colour map (Inferno) with automatic window for an uncertainty volume."""
    slicer = _slicer()
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetAndObserveColorNodeID(slicer.vtkMRMLColorLogic.GetFileColorNodeID(UNCERTAINTY_COLOR_FILE))
    node.GetDisplayNode().SetAutoWindowLevel(1)


def place_beside(scene: Any, reference_node: Any, node: Any) -> int:
    """Put ``node`` in the subject hierarchy under the reference's parent (its study). Returns the item id."""
    slicer = _slicer()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    if not reference_item:
        reference_item = hierarchy.CreateItem(hierarchy.GetSceneItemID(), reference_node)
    parent = hierarchy.GetItemParent(reference_item)
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        item = hierarchy.CreateItem(parent, node)
    return item


def _has_mrml() -> bool:
    """True when ``import slicer`` gives slicer-core's MRML (another PyPI package, a dependency of shap, is also
    called ``slicer``)."""
    import importlib.util

    if importlib.util.find_spec("slicer") is None:
        return False
    try:
        return hasattr(_slicer(), "vtkMRMLScene")
    except ImportError:
        return False


def check_scene_path(out_mrb: str | os.PathLike, *protected: str | os.PathLike) -> None:
    """Raise :class:`OutputError` unless a scene bundle can be written to ``out_mrb`` (checked before any
    translation, so a bad scene path never leaves a translated volume without its scene)."""
    from MedTranslateLib.io.atomic import check_folder_writable

    if not _has_mrml():
        raise ConfigError("--scene needs the slicer-core package (Slicer's MRML scene library), which is not "
                          "installed.", "Install it with: pip install 'slicer-core>=5.10' (or the [slicer] extra of "
                          "MedTranslate), or leave out --scene.")
    out_mrb = Path(out_mrb)
    if out_mrb.suffix.lower() != ".mrb":
        raise OutputError(f"The scene file {out_mrb} must end in .mrb.", "Use a name like result.mrb.")
    check_folder_writable(out_mrb.parent, f"the scene {out_mrb}")
    for path in protected:
        if out_mrb.resolve() == Path(path).resolve():
            raise OutputError(f"The scene file {out_mrb} is also the input or output path.",
                              "Give the scene its own file name.")


def volume_name(path: str | os.PathLike) -> str:
    """A volume's node name: its file name without the volume suffix (``MR.T1.nii.gz`` -> ``MR.T1``), a folder's
    (a DICOM series) name as it is."""
    from MedTranslateLib.io.atomic import volume_stem

    path = Path(path) if Path(path).name else Path(path).resolve()  # "." names the folder it is
    stem = volume_stem(path)
    return stem if stem != path.name or path.is_dir() else path.stem


def _slicer_readable(path: str | os.PathLike, work: str, series_uid: str | None = None) -> Path:
    """``path`` itself, or for a DICOM series folder the series as an NRRD file in ``work``."""
    path = Path(path)
    if not path.is_dir():
        return path
    import SimpleITK as sitk

    from MedTranslateLib.io import read_volume
    from MedTranslateLib.io.itk_paths import itk_path

    image, _ = read_volume(path, series_uid=series_uid)
    converted = Path(tempfile.mkdtemp(prefix="dicom-", dir=work)) / f"{path.name or 'series'}.nrrd"
    sitk.WriteImage(image, itk_path(converted, OutputError))
    return converted


def export_scene_mrb(input_image_path: str | os.PathLike, synthetic_path: str | os.PathLike,
                     out_mrb: str | os.PathLike, uncertainty_path: str | os.PathLike | None = None,
                     opacity: float = 0.5, layout: str = SIDE_BY_SIDE,
                     provenance: dict[str, Any] | None = None, target_modality: str | None = None,
                     series_uid: str | None = None) -> Path:
    """Write a Slicer scene bundle (``.mrb``): input + synthetic (+ uncertainty), fused and linked.

    Volumes may be files or DICOM series folders (``series_uid`` picks the input's series).
    The volumes are put in one patient/study of the subject hierarchy; provenance becomes attributes of
    the synthetic node. The file is written atomically (temporary file, then rename).
    """
    check_scene_path(out_mrb)
    slicer = _slicer()
    out_mrb = Path(out_mrb)
    with tempfile.TemporaryDirectory(prefix="medtranslate-scene-") as work:
        scene, volumes = new_scene(work)
        stem = volume_name(input_image_path)
        input_node = load_volume(volumes, _slicer_readable(input_image_path, work, series_uid), stem)
        synthetic_node = load_volume(volumes, _slicer_readable(synthetic_path, work), volume_name(synthetic_path))
        uncertainty_node = None
        if uncertainty_path:
            uncertainty_node = load_volume(volumes, _slicer_readable(uncertainty_path, work),
                                           volume_name(uncertainty_path))
            apply_uncertainty_display(uncertainty_node)
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), stem)
        study = hierarchy.CreateStudyItem(patient, "MedTranslate")
        hierarchy.CreateItem(study, input_node)
        for node in (synthetic_node, uncertainty_node):
            if node is not None:
                place_beside(scene, input_node, node)
        set_provenance(synthetic_node, dict(provenance or {}))
        target = (target_modality or (provenance or {}).get("target_modality") or "").upper()
        if target == "CT":
            apply_ct_display(synthetic_node)
        setup_fused_linked_display(scene, input_node, synthetic_node, opacity, uncertainty_node, layout)
        try:
            with atomic_output(out_mrb, folder=False) as partial:  # same folder as the target: atomic rename
                if not scene.WriteToMRB(str(partial)):
                    raise OutputError(f"Slicer could not write the scene {out_mrb}.", "Check the folder is writable.")
        finally:
            scene.Clear(1)
    return out_mrb


def read_scene_mrb(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Any:
    """Read a ``.mrb`` into a fresh scene (for checks and tests)."""
    scene, _ = new_scene(cache_dir)
    if not scene.ReadFromMRB(str(path)):
        raise InputError(f"Slicer could not read the scene {path}.", "Check that it is a Slicer .mrb file.")
    return scene


def render_slice(scene: Any, view: str = "Red", size: tuple[int, int] = (256, 256)) -> Any:
    """The view's fused slice image (RGBA ``uint8``, rows top-down) from Slicer's reslice-and-blend pipeline.

    No OpenGL is needed: this is the image Slicer draws in the slice view, fitted to the volumes.
    """
    import numpy as np
    from vtk.util.numpy_support import vtk_to_numpy

    slicer = _slicer()
    slice_node = scene.GetNodeByID(f"vtkMRMLSliceNode{view}")
    if slice_node is None:
        raise InputError(f"The scene has no {view} slice view.", "Call setup_fused_linked_display first.")
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLScene(scene)
    logic.SetSliceNode(slice_node)
    slice_node.SetDimensions(size[0], size[1], 1)
    logic.FitSliceToAll()
    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return np.ascontiguousarray(pixels[::-1])


def write_fused_png(input_image_path: str | os.PathLike, synthetic_path: str | os.PathLike,
                    out_png: str | os.PathLike, opacity: float = 0.5, size: tuple[int, int] = (384, 384),
                    target_modality: str | None = "CT") -> Path:
    """Save the side-by-side views (fused input + synthetic | synthetic) as a PNG (e.g. a screenshot)."""
    import numpy as np
    from matplotlib import image as mpimg

    with tempfile.TemporaryDirectory(prefix="medtranslate-png-") as work:
        scene, volumes = new_scene(work)
        input_node = load_volume(volumes, input_image_path, "input")
        synthetic_node = load_volume(volumes, synthetic_path, "synthetic")
        if (target_modality or "").upper() == "CT":
            apply_ct_display(synthetic_node, "CT_BRAIN")
        setup_fused_linked_display(scene, input_node, synthetic_node, opacity)
        panels = [render_slice(scene, view, size)[..., :3] for view in ("Red", "Yellow")]
        gap = np.zeros((size[1], 4, 3), np.uint8)
        picture = np.concatenate([panels[0], gap, panels[1]], axis=1)
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        mpimg.imsave(out_png, picture)
        scene.Clear(1)
    return out_png
