"""Slicer extension files: CMake lists, .ui (loaded with PySide6 QUiLoader), parameter names, icon, sample data."""

from __future__ import annotations

import ast
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MedTranslate"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedTranslate.ui"
sys.path.insert(0, str(MODULE_DIR))


def test_every_module_python_file_is_listed_in_cmake():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"^\s+(\S+\.py)\s*$", cmake, re.MULTILINE)) | {"MedTranslate.py"}
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")}
    assert on_disk and on_disk <= listed, f"not in MedTranslate/CMakeLists.txt: {sorted(on_disk - listed)}"
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui"):
        assert resource in cmake
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "MedTranslate")).is_file()
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake


def test_top_level_and_backend_cmake():
    top = (REPO / "CMakeLists.txt").read_text()
    for needed in ('EXTENSION_CATEGORY "Image Synthesis"', 'EXTENSION_DEPENDS "PyTorch"', "EXTENSION_HOMEPAGE",
                   "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DESCRIPTION",
                   "EXTENSION_CONTRIBUTORS", "add_subdirectory(MedTranslateLib)", "add_subdirectory(MedTranslate)",
                   "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK"):
        assert needed in top
    for url in re.findall(r"raw\.githubusercontent\.com/[^/]+/[^/]+/main/(\S+?)\"", top):
        assert (REPO / url).is_file(), url
    backend = (REPO / "MedTranslateLib" / "CMakeLists.txt").read_text()
    assert "ctkMacroCompilePythonScript" in backend and "GLOB_RECURSE" in backend
    for pattern in ("*.py", "*.json", "*.safetensors", "*.toml"):
        assert f"${{CMAKE_CURRENT_SOURCE_DIR}}/{pattern}" in backend
    # the extension's own build tree, as slicerMacroBuildScriptedModule uses; Slicer_BINARY_DIR is Slicer's build
    assert "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/" in backend
    assert "Slicer_BINARY_DIR" not in backend


def _ui_widgets():
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget") if w.get("name")}
    params = {}
    for name, widget in widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                params[name] = prop.find("string").text
    return widgets, params


def test_ui_names_used_by_module_exist_and_parameters_match():
    from MedTranslateModule.parameters import DEVICE_CHOICES, LAYOUT_CHOICES, parameter_names

    widgets, params = _ui_widgets()
    source = (MODULE_DIR / "MedTranslate.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used and used <= set(widgets), f"missing in the .ui: {sorted(used - set(widgets))}"
    fields = parameter_names()
    assert set(params.values()) <= set(fields), sorted(set(params.values()) - set(fields))
    # every field except the model id (filled from the model list) has a widget
    assert set(fields) - set(params.values()) == {"modelId"}
    for combo, choices in (("deviceComboBox", DEVICE_CHOICES), ("layoutComboBox", LAYOUT_CHOICES)):
        items = [i.find("property/string").text for i in widgets[combo].findall("item")]
        assert items == list(choices)


def test_parameter_node_fields_are_annotated_in_source():
    tree = ast.parse((MODULE_DIR / "MedTranslateModule" / "parameters.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedTranslateParameterNode")
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in cls.decorator_list)
    from MedTranslateModule.parameters import parameter_names

    assert [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)] == parameter_names()


def test_ui_loads_with_qt_ui_loader(monkeypatch):
    pytest.importorskip("PySide6")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtCore, QtWidgets
    from PySide6.QtUiTools import QUiLoader

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])

    class Loader(QUiLoader):
        """Slicer's custom widgets (qMRMLNodeComboBox, ctk*) become plain QWidgets/QGroupBoxes."""

        def createWidget(self, class_name, parent=None, name=""):
            if class_name in ("qMRMLNodeComboBox", "ctkSliderWidget", "qMRMLWidget"):
                widget = QtWidgets.QWidget(parent)
            elif class_name == "ctkCollapsibleButton":
                widget = QtWidgets.QGroupBox(parent)
            else:
                return super().createWidget(class_name, parent, name)
            widget.setObjectName(name)
            return widget

    ui_file = QtCore.QFile(str(UI_FILE))
    assert ui_file.open(QtCore.QFile.ReadOnly)
    root = Loader().load(ui_file)
    ui_file.close()
    assert root is not None and root.objectName() == "MedTranslate"
    widgets, params = _ui_widgets()
    for name in widgets:
        if name != "MedTranslate":
            assert root.findChild(QtCore.QObject, name) is not None, name
    button = root.findChild(QtWidgets.QPushButton, "translateButton")
    assert button.text() == "Translate" and not button.isEnabled()
    assert root.findChild(QtWidgets.QComboBox, "deviceComboBox").count() == 3
    steps = root.findChild(QtWidgets.QSpinBox, "diffusionStepsSpinBox")
    assert steps.value() == 0 and steps.text() == "model default"  # 0: no --steps, the card's default
    for name, parameter in params.items():
        assert root.findChild(QtCore.QObject, name).property("SlicerParameterName") == parameter
    root.deleteLater()
    del app


def test_icon_and_screenshot_are_pngs():
    from matplotlib import image

    icon = image.imread(MODULE_DIR / "Resources" / "Icons" / "MedTranslate.png")
    assert icon.shape[:2] == (128, 128)
    shot = image.imread(MODULE_DIR / "Resources" / "Screenshot.png")
    assert shot.shape[1] > shot.shape[0] >= 256 and shot.std() > 0.05


def test_sample_data_sources_come_from_cards(tmp_path):
    from MedTranslateModule.sample_data import builtin_card_paths, read_cards, sample_sources

    sha = "0f" * 32
    card_dir = tmp_path / "models" / "builtin" / "mr2ct-headphantom-unet2d"
    card_dir.mkdir(parents=True)
    (card_dir / "model.json").write_text(json.dumps({
        "id": "mr2ct-headphantom-unet2d", "title": "Head phantom", "source_modality": "MR",
        "target_modality": "CT", "sample_data": [
            {"name": "HeadPhantomT1", "url": "https://example.org/data/HeadPhantomT1.nrrd", "sha256": sha},
            {"name": "NoUrl", "sha256": sha}]}))
    (tmp_path / "models" / "builtin" / "broken").mkdir()
    (tmp_path / "models" / "builtin" / "broken" / "model.json").write_text("{not json")
    paths = builtin_card_paths(tmp_path)
    assert len(paths) == 2
    sources = sample_sources(read_cards(paths))
    assert sources == [{"category": "MedTranslate", "sampleName": "HeadPhantomT1",
                        "uris": ["https://example.org/data/HeadPhantomT1.nrrd"],
                        "fileNames": ["HeadPhantomT1.nrrd"], "nodeNames": ["HeadPhantomT1"],
                        "checksums": [f"SHA256:{sha}"]}]


def test_install_helper_reports_missing_requirements(monkeypatch):
    import importlib.util

    from MedTranslateModule import install

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "monai" else real(name))
    assert install.missing_requirements() == ["monai>=1.4"]
    assert not any("torch" in req for req in install.BACKEND_REQUIREMENTS.values())


def test_install_helper_matches_pyproject_and_checks_versions(monkeypatch, tmp_path):
    """Slicer installs what the backend declares (einops was missing: diffusion models failed in Slicer), a too
    old version counts as missing (monai 1.3 imports but lacks the diffusion networks), and torch is pinned."""
    import importlib.metadata

    from packaging.requirements import Requirement

    from MedTranslateLib.training.config import tomllib
    from MedTranslateModule import install

    declared = [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    # PyTorch extension; ships with Slicer; CLI reports only; Python < 3.11 (Slicer has 3.12)
    not_in_slicer = {"torch", "numpy", "matplotlib", "tomli"}
    assert sorted(install.BACKEND_REQUIREMENTS.values(), key=str.lower) == sorted(
        (str(r) for r in declared if r.name not in not_in_slicer and (r.marker is None or r.marker.evaluate())),
        key=str.lower)
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.3.2" if name == "monai" else real(name))
    assert install.missing_requirements() == ["monai>=1.4"]
    assert (tmp_path / "constraints.txt") == install.torch_constraints(tmp_path)
    assert (tmp_path / "constraints.txt").read_text() == f"torch=={real('torch')}\n"


def test_listing_packages_are_installed_with_slicers_pip_ensure(monkeypatch):
    """A fresh Slicer lacks jsonschema and platformdirs, which 'models list' imports: the panel showed no model and
    never offered to install them. pip_ensure (Slicer >= 5.12) asks only with prompt_install and raises when the
    user declines."""
    import importlib.util
    import types

    import slicer

    from MedTranslateModule import install

    installed: set[str] = set()
    calls = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: (
        None if name in install.LISTING_MODULES and name not in installed else real(name)))

    def pip_ensure(requirements, constraints=None, prompt_install=True, requester=None):
        calls.append(([str(r) for r in requirements], prompt_install, requester))
        assert Path(constraints).read_text().startswith("torch==")  # the installed torch is kept
        if decline:
            raise RuntimeError("declined")
        installed.update({"jsonschema", "platformdirs"})

    monkeypatch.setattr(slicer, "packaging", types.SimpleNamespace(pip_ensure=pip_ensure), raising=False)
    decline = True
    assert install.ensure_listing_packages(ask=True) is False
    assert calls == [(["jsonschema>=4.18", "platformdirs>=3"], True, "MedTranslate")]
    decline = False
    assert install.ensure_listing_packages(ask=False) is True and calls[-1][1] is False
    assert install.ensure_listing_packages() is True and len(calls) == 2  # nothing missing: not asked again


def test_module_file_is_thin_and_has_slicer_classes():
    source = (MODULE_DIR / "MedTranslate.py").read_text()
    tree = ast.parse(source)
    classes = {n.name: [b.id for b in n.bases if isinstance(b, ast.Name)] for n in tree.body
               if isinstance(n, ast.ClassDef)}
    assert classes["MedTranslate"] == ["ScriptedLoadableModule"]
    assert classes["MedTranslateWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["MedTranslateLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["MedTranslateTest"] == ["ScriptedLoadableModuleTest"]
    top_imports = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top_imports |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not top_imports & {"torch", "monai", "SimpleITK", "matplotlib", "MedTranslateLib"}
    assert len(source.splitlines()) < 400
    assert 'categories = [_("Image Synthesis")]' in source


def test_parameter_annotations_are_real_types():
    """The parameter node wrapper needs evaluated annotations (no postponed string annotations)."""
    from MedTranslateModule.parameters import MedTranslateParameterNode

    assert all(not isinstance(value, str) for value in MedTranslateParameterNode.__annotations__.values())
    assert MedTranslateParameterNode.__annotations__["uncertainty"] is bool


@pytest.mark.parametrize("path", sorted([MODULE_DIR / "MedTranslate.py", *(MODULE_DIR / "MedTranslateModule").glob("*.py")]),
                         ids=lambda p: p.name)
def test_module_files_use_no_unbound_names(path):
    """Code the tests cannot run without the Slicer application (the panel) still names only things it imports or
    defines: a name read anywhere must be bound somewhere in the file, or be a builtin."""
    import builtins

    tree = ast.parse(path.read_text())
    bound = set(dir(builtins)) | {"__file__", "__name__"}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    unbound = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - bound)
    assert not unbound, f"{path.name} uses names it never imports or defines: {unbound}"


def test_node_selectors_offer_the_node_types_of_their_parameter():
    """Slicer's parameter-node GUI connector replaces a node selector's nodeTypes with the classes named by its field's
    type (parameterNodeWrapper/util.py getNodeTypes: a node class, or each node class of a Union). The mask selectors
    offered label maps in the .ui, but their fields named only vtkMRMLScalarVolumeNode, so Slicer hid label maps."""
    import typing

    from MedTranslateModule.parameters import MedTranslateParameterNode

    def node_types(annotation):
        args = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)
        return [arg.__name__ for arg in args if arg is not type(None)]

    widgets, params = _ui_widgets()
    selectors = {name: w for name, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox" and name in params}
    assert len(selectors) == 5
    for name, widget in selectors.items():
        listed = [s.text for p in widget.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
        assert listed == node_types(MedTranslateParameterNode.__annotations__[params[name]]), name
    assert "vtkMRMLLabelMapVolumeNode" in node_types(MedTranslateParameterNode.__annotations__["maskVolume"])
