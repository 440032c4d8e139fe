"""MedTranslateLib.scene with slicer-core: fused + linked display, layout, provenance, .mrb round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")

from conftest import make_image  # noqa: E402

from MedTranslateLib.errors import InputError  # noqa: E402


def _volumes(tmp_path):
    import SimpleITK as sitk

    image = make_image(spacing=(0.8, 1.2, 2.0), origin=(3.0, -4.0, 5.0),
                       direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    paths = {name: tmp_path / f"{name}.nii.gz" for name in ("input", "synthetic", "uncertainty")}
    sitk.WriteImage(image, str(paths["input"]))
    synthetic = sitk.Cast(image * 3.0 - 1000.0, sitk.sitkFloat32)
    sitk.WriteImage(synthetic, str(paths["synthetic"]))
    sitk.WriteImage(sitk.Cast(sitk.Abs(image) * 0.1, sitk.sitkFloat32), str(paths["uncertainty"]))
    return image, paths


def _composites(scene):
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    return {node.GetLayoutName(): node for node in nodes}


def _ras_matrix(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def test_setup_fused_linked_display_side_by_side(tmp_path):
    import slicer

    from MedTranslateLib.scene import load_volume, new_scene, setup_fused_linked_display

    _, paths = _volumes(tmp_path)
    scene, volumes = new_scene(tmp_path)
    source = load_volume(volumes, paths["input"], "input")
    synthetic = load_volume(volumes, paths["synthetic"], "synthetic")
    composites = setup_fused_linked_display(scene, source, synthetic, opacity=0.3)
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    assert set(composites) == {"Red", "Yellow"}
    assert composites["Red"].GetBackgroundVolumeID() == source.GetID()
    assert composites["Red"].GetForegroundVolumeID() == synthetic.GetID()
    assert composites["Yellow"].GetBackgroundVolumeID() == synthetic.GetID()  # the synthetic volume alone
    assert composites["Yellow"].GetForegroundVolumeID() is None
    for view, composite in composites.items():
        assert composite.GetLinkedControl() and composite.GetHotLinkedControl()
        slice_node = scene.GetNodeByID(f"vtkMRMLSliceNode{view}")
        assert slice_node.GetViewGroup() == 0 and slice_node.GetOrientation() == "Axial"
    assert composites["Red"].GetForegroundOpacity() == pytest.approx(0.3)
    # a second call reuses the same views (no duplicate composite nodes)
    setup_fused_linked_display(scene, source, synthetic, opacity=0.7, layout="fused")
    assert scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == len(_composites(scene))
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView
    assert _composites(scene)["Red"].GetForegroundOpacity() == pytest.approx(0.7)
    with pytest.raises(InputError, match="Unknown layout"):
        setup_fused_linked_display(scene, source, synthetic, layout="grid")


def test_export_scene_mrb_round_trip(tmp_path):
    import slicer

    from MedTranslateLib.scene import TRIPLE_LAYOUT_ID, export_scene_mrb, provenance_of, read_scene_mrb

    image, paths = _volumes(tmp_path)
    (tmp_path / "scenes").mkdir()
    out = export_scene_mrb(paths["input"], paths["synthetic"], tmp_path / "scenes" / "result.mrb",
                           uncertainty_path=paths["uncertainty"], opacity=0.4,
                           provenance={"model_id": "m1", "model_version": "1.0.0", "target_modality": "CT"})
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["result.mrb"]  # no leftovers
    scene = read_scene_mrb(out, tmp_path / "cache")
    names = {scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetName(): scene.GetNthNodeByClass(
        i, "vtkMRMLScalarVolumeNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))}
    assert set(names) == {"input", "synthetic", "uncertainty"}
    source, synthetic, uncertainty = names["input"], names["synthetic"], names["uncertainty"]
    for node in names.values():
        assert node.GetImageData().GetDimensions() == image.GetSize()
        np.testing.assert_allclose(_ras_matrix(node), _ras_matrix(source), atol=1e-6)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(synthetic),
                               slicer.util.arrayFromVolume(source) * 3 - 1000, rtol=1e-4, atol=1e-3)
    spacing = np.linalg.norm(_ras_matrix(source)[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, image.GetSpacing(), rtol=1e-6)
    composites = _composites(scene)
    assert composites["Red"].GetBackgroundVolumeID() == source.GetID()
    assert composites["Red"].GetForegroundVolumeID() == synthetic.GetID()
    assert composites["Red"].GetForegroundOpacity() == pytest.approx(0.4)
    assert composites["Green"].GetForegroundVolumeID() == uncertainty.GetID()
    assert all(c.GetLinkedControl() and c.GetHotLinkedControl() for c in composites.values())
    assert scene.GetFirstNodeByClass("vtkMRMLLayoutNode").GetViewArrangement() == TRIPLE_LAYOUT_ID
    assert synthetic.GetAttribute("MedTranslate.synthetic") == "true"
    assert provenance_of(synthetic)["model_id"] == "m1"
    display = synthetic.GetDisplayNode()
    assert display.GetAutoWindowLevel() == 0 and display.GetWindow() == pytest.approx(350.0)
    assert uncertainty.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeFileInferno.txt"
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(source))
    assert study and hierarchy.GetItemLevel(study) == "Study"
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(synthetic)) == study
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(uncertainty)) == study


def test_a_scene_without_a_cache_folder_gets_its_own_empty_one(tmp_path, monkeypatch):
    """Slicer's cache manager walks its whole folder when it is set: with the system temporary folder as the
    cache, every new scene took 20 s on a machine with a busy /tmp. A scene without a cache folder gets an
    empty one of its own, and still reads a .mrb (Slicer unpacks bundles there)."""
    import tempfile

    from MedTranslateLib.scene import export_scene_mrb, new_scene, read_scene_mrb

    busy = tmp_path / "busy-tmp"
    (busy / "someone-else").mkdir(parents=True)
    (busy / "someone-else" / "big.raw").write_bytes(b"x")
    monkeypatch.setattr(tempfile, "tempdir", str(busy))
    scene, _ = new_scene()
    cache = Path(scene.GetCacheManager().GetRemoteCacheDirectory())
    assert cache.parent == busy and [p.name for p in cache.iterdir()] == [".slicer-cache"]
    _, paths = _volumes(tmp_path)
    out = export_scene_mrb(paths["input"], paths["synthetic"], tmp_path / "scene.mrb")
    assert read_scene_mrb(out).GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2
    assert (busy / "someone-else" / "big.raw").exists()


def test_export_scene_mrb_rejects_other_suffix(tmp_path):
    from MedTranslateLib.errors import OutputError
    from MedTranslateLib.scene import export_scene_mrb

    _, paths = _volumes(tmp_path)
    with pytest.raises(OutputError, match=".mrb"):
        export_scene_mrb(paths["input"], paths["synthetic"], tmp_path / "result.mrml")


def test_render_slice_blends_input_and_synthetic(tmp_path):
    from MedTranslateLib.scene import load_volume, new_scene, render_slice, setup_fused_linked_display

    _, paths = _volumes(tmp_path)
    scene, volumes = new_scene(tmp_path)
    source = load_volume(volumes, paths["input"], "input")
    synthetic = load_volume(volumes, paths["synthetic"], "synthetic")
    source.GetDisplayNode().SetAutoWindowLevel(0)
    source.GetDisplayNode().SetWindowLevel(800, 300)  # input: mid grey
    synthetic.GetDisplayNode().SetAutoWindowLevel(0)
    synthetic.GetDisplayNode().SetWindowLevel(10, -2000)  # synthetic: white everywhere (above the window)
    images = {}
    for opacity in (0.0, 0.5, 1.0):
        setup_fused_linked_display(scene, source, synthetic, opacity=opacity, layout="fused")
        images[opacity] = render_slice(scene, "Red", (64, 48)).astype(float)
    assert images[0.0].shape == (48, 64, 4)
    images = {key: value[16:32, 24:40] for key, value in images.items()}  # inside the volume
    assert images[1.0][..., :3].min() == 255  # only the synthetic layer
    assert 0 < images[0.0][..., :3].mean() < 200  # only the input layer
    np.testing.assert_allclose(images[0.5][..., :3], (images[0.0][..., :3] + 255) / 2, atol=1.5)


def test_write_fused_png(tmp_path):
    from matplotlib import image

    from MedTranslateLib.scene import write_fused_png

    _, paths = _volumes(tmp_path)
    out = write_fused_png(paths["input"], paths["synthetic"], tmp_path / "shot.png", size=(64, 48))
    picture = image.imread(out)
    assert picture.shape[:2] == (48, 64 * 2 + 4) and picture.std() > 0.01


@pytest.mark.slow
def test_cli_translate_writes_a_scene(tmp_path):
    """``medtranslate translate --scene OUT.mrb`` (real backend, tiny package) writes a loadable scene."""
    import subprocess
    import sys

    from test_slicer_fakeworker import make_tiny_package

    from MedTranslateLib.scene import read_scene_mrb

    _, paths = _volumes(tmp_path)
    package = make_tiny_package(tmp_path / "package")
    done = subprocess.run([sys.executable, "-m", "MedTranslateLib", "translate", str(paths["input"]), "-m",
                           str(package), "-o", str(tmp_path / "sct.nii.gz"), "--device", "cpu", "--progress", "none",
                           "--scene", str(tmp_path / "result.mrb")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    scene = read_scene_mrb(tmp_path / "result.mrb", tmp_path / "cache")
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2
    red = _composites(scene)["Red"]
    assert red.GetBackgroundVolumeID() != red.GetForegroundVolumeID() and red.GetLinkedControl()


def test_cli_scene_with_dicom_output_and_checks_before_translating(tmp_path, capfd):
    """A DICOM series output goes into the scene too; a bad scene path or an uncertainty map on the output's own
    path is refused before anything is written."""
    from test_slicer_fakeworker import make_tiny_package

    from MedTranslateLib.cli.main import main
    from MedTranslateLib.scene import read_scene_mrb

    _, paths = _volumes(tmp_path)
    package = make_tiny_package(tmp_path / "package")
    base = ["translate", str(paths["input"]), "-m", str(package), "--device", "cpu", "--progress", "none"]
    assert main([*base, "-o", str(tmp_path / "sct_dicom"), "--scene", str(tmp_path / "dicom.mrb")]) == 0
    assert "ERR|" not in capfd.readouterr().err  # no VTK error noise on success
    scene = read_scene_mrb(tmp_path / "dicom.mrb", tmp_path / "cache")
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2
    out = tmp_path / "refused"
    out.mkdir()
    assert main([*base, "-o", str(out / "sct.nii.gz"), "--scene", str(out / "scene.zip")]) == 5
    assert main([*base, "-o", str(out / "sct.nii.gz"), "--scene", str(out / "missing" / "s.mrb")]) == 5
    assert main([*base, "-o", str(out / "sct.nii.gz"), "--uncertainty", str(out / "sct.nii.gz")]) == 5
    assert list(out.iterdir()) == []


def test_scene_without_slicer_core_is_one_message_before_translating(tmp_path, monkeypatch, capsys):
    """'make demo' installs no slicer-core: --scene gave ModuleNotFoundError (exit 1) after writing the volume."""
    import importlib.util

    from test_slicer_fakeworker import make_tiny_package

    from MedTranslateLib.cli.main import main

    _, paths = _volumes(tmp_path)
    package = make_tiny_package(tmp_path / "package")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "slicer" else real(name, *a))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["translate", str(paths["input"]), "-m", str(package), "--device", "cpu", "--progress", "none",
                 "-o", str(out / "sct.nii.gz"), "--scene", str(out / "s.mrb")]) == 6
    assert "--scene needs the slicer-core package" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_moving_the_fused_views_opacity_leaves_the_synthetic_view_unblended(tmp_path):
    """Linked control copies a user's opacity change in one view to every view of the group (Slicer's
    vtkMRMLSliceLinkLogic): Yellow, once input + synthetic at opacity 1, turned into a blend too."""
    import slicer

    from MedTranslateLib.scene import load_volume, new_scene, setup_fused_linked_display

    _, paths = _volumes(tmp_path)
    scene, volumes = new_scene(tmp_path)
    source = load_volume(volumes, paths["input"], "input")
    synthetic = load_volume(volumes, paths["synthetic"], "synthetic")
    composites = setup_fused_linked_display(scene, source, synthetic, opacity=0.5)
    link = slicer.vtkMRMLSliceLinkLogic()
    link.SetMRMLScene(scene)
    red = composites["Red"]
    red.SetInteractionFlagsModifier(0xFFFFFFFF)
    red.InteractingOn()  # the user drags Red's opacity slider
    red.SetInteractionFlags(slicer.vtkMRMLSliceCompositeNode.ForegroundOpacityFlag)
    red.SetForegroundOpacity(0.2)
    red.InteractingOff()
    yellow = composites["Yellow"]
    assert yellow.GetForegroundOpacity() == pytest.approx(0.2)  # linked: the setting is copied...
    assert yellow.GetBackgroundVolumeID() == synthetic.GetID() and yellow.GetForegroundVolumeID() is None  # ...to
    # a view with nothing to blend, so it still shows the synthetic volume alone


def test_scene_volumes_are_named_after_their_whole_file_names(tmp_path):
    """Only the volume suffix is taken off a file name: ``MR.T1.nii.gz`` and ``MR.T1_sCT.nii.gz`` were both cut at
    the first dot, and the scene showed three volumes "MR", "MR_1" and "MR_2" with nothing to tell which is the
    synthetic one."""
    import SimpleITK as sitk

    from MedTranslateLib.scene import export_scene_mrb, read_scene_mrb

    image = make_image()
    paths = [tmp_path / name for name in ("MR.T1.nii.gz", "MR.T1_sCT.nii.gz", "MR.T1_sCT_std.nrrd")]
    for path in paths:
        sitk.WriteImage(image, str(path))
    out = export_scene_mrb(paths[0], paths[1], tmp_path / "scene.mrb", uncertainty_path=paths[2],
                           target_modality="CT")
    scene = read_scene_mrb(out, tmp_path / "cache")
    names = sorted(scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetName()
                   for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")))
    assert names == ["MR.T1", "MR.T1_sCT", "MR.T1_sCT_std"]
