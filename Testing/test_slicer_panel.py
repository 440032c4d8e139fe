"""The module's panel (``MedTranslate.py``) driven for real on a slicer-core scene.

slicer-core has no Qt, no ``slicer.app`` and no ``ScriptedLoadableModule``: this file puts small stand-ins for
those in place (a timer that only records start/stop, labels and buttons as plain attributes), loads the real
``MedTranslate.py`` and drives its ``MedTranslateWidget`` methods with the fake worker, so what the panel does
with the scene (which volumes it shows, what it picks) is what the test sees.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("slicer")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedTranslate"))

from conftest import IJK_TO_RAS  # noqa: E402
from test_slicer_fakeworker import fake_worker_command  # noqa: E402


class _Signal:
    def __init__(self) -> None:
        self.slots: list = []

    def connect(self, slot) -> None:
        self.slots.append(slot)


class _Timer:
    """``qt.QTimer`` stand-in: the test calls ``onPoll`` itself while ``active``."""

    def __init__(self) -> None:
        self.timeout = _Signal()
        self.active = False

    def setInterval(self, milliseconds: int) -> None:
        pass

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False


def _widget_stub(**values) -> SimpleNamespace:
    return SimpleNamespace(text="", enabled=True, visible=False, value=0, currentText="CPU", currentData=None,
                           **values)


class _Stub:
    def __init__(self, *args, **kwargs) -> None:
        pass


@pytest.fixture
def panel_module(scene, monkeypatch):
    """The real ``MedTranslate.py`` loaded with stand-ins for Qt, ``slicer.app`` and ScriptedLoadableModule."""
    import slicer

    qt = types.ModuleType("qt")
    qt.QTimer = _Timer
    qt.Qt = SimpleNamespace(WaitCursor=0)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleWidget"):
        setattr(scripted, name, type(name, (_Stub,), {}))
    app = SimpleNamespace(setOverrideCursor=lambda cursor: None, restoreOverrideCursor=lambda: None,
                          testingEnabled=lambda: True, layoutManager=lambda: None)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    errors: list[str] = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *args, **kwargs: errors.append(text))
    spec = importlib.util.spec_from_file_location("MedTranslatePanelUnderTest",
                                                  REPO / "MedTranslate" / "MedTranslate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.shown_errors = errors
    return module


@pytest.fixture
def panel(panel_module, scene, input_node, monkeypatch):
    """A ``MedTranslateWidget`` with its parameters on ``input_node``, the fake worker and the model ``fake-ok``."""
    from MedTranslateModule import install
    from MedTranslateModule.logic import TranslationLogic
    from MedTranslateModule.models import ModelInfo

    def no_install(missing, ask):  # the Translate click never installs into the test's Python
        pytest.fail(f"the panel would install {missing}")

    monkeypatch.setattr(install, "_pip_ensure", no_install)

    widget = panel_module.MedTranslateWidget()
    widget.shown_errors = panel_module.shown_errors  # what slicer.util.errorDisplay was given
    widget.logic = panel_module.MedTranslateLogic()
    widget.logic.translation = TranslationLogic(scene=scene, worker_command=fake_worker_command())
    names = ("translateButton", "evaluateButton", "removeModelButton", "importModelButton", "progressBar",
             "statusLabel", "cpuNoticeLabel", "deviceComboBox", "modelComboBox")
    widget.ui = SimpleNamespace(**{name: _widget_stub() for name in names})
    widget.ui.modelComboBox.currentData = "fake-ok"
    model = ModelInfo("fake-ok", target_modality="CT", family="unet")
    widget._allModels, widget._models = [model], {model.id: model}
    widget._parameterNode = SimpleNamespace(
        inputVolume=input_node, outputVolume=None, maskVolume=None, modelId="fake-ok", device="CPU",
        uncertainty=False, diffusionSteps=0, samples=1, foregroundOpacity=0.5, layout="Side by side",
        referenceVolume=None, referenceMask=None)
    yield widget
    widget.logic.translation.release_standby()
    if widget.logic.translation.is_running:
        widget.logic.translation.cancel()


def _poll_until_finished(widget, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while widget._timer.active and time.monotonic() < deadline:
        widget.onPoll()
        time.sleep(0.05)
    assert not widget._timer.active, "the run did not finish"


def _let_the_fake_standby_end(widget, seconds: float = 30.0) -> None:
    """After a run the panel prestarts a standby worker; the fake worker knows no ``standby`` and exits at once. A
    click before it has exited hands the run to it (as to a real standby still loading), and the run then fails
    with the fake's exit: tests that click again wait for it to end first (under load it took long enough to race)."""
    translation = widget.logic.translation
    deadline = time.monotonic() + seconds
    while translation._standby is not None and translation._standby.running and time.monotonic() < deadline:
        time.sleep(0.05)


def _red_view(scene):
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if composite.GetLayoutName() == "Red":
            return composite
    return None


def test_the_panel_shows_a_finished_run_over_the_input_it_was_made_from(panel, scene, input_node):
    """The user picks another patient in the input selector while the run is in flight: the result must still be
    fused over the volume it was computed from, not over the volume now selected (or crash when none is)."""
    import slicer

    other = slicer.util.addVolumeFromArray(np.full((12, 14, 16), 7.0, np.float32), ijkToRAS=IJK_TO_RAS,
                                           name="PatientB")
    panel.onTranslateButton()
    assert panel._timer.active and panel.logic.translation.is_running
    panel._parameterNode.inputVolume = other  # changed mid-run
    _poll_until_finished(panel)
    assert panel.logic.translation.status.state == "done", panel.shown_errors
    result = panel.logic.translation.status.output_node
    red = _red_view(scene)
    assert red.GetForegroundVolumeID() == result.GetID()
    assert red.GetBackgroundVolumeID() == input_node.GetID()  # not PatientB's
    assert panel.ui.translateButton.text == "Translate"

    _let_the_fake_standby_end(panel)
    panel.onTranslateButton()  # now of PatientB, the selected input
    panel._parameterNode.inputVolume = None  # the selector set to none mid-run: the result is still shown
    _poll_until_finished(panel)
    assert panel.logic.translation.status.state == "done", panel.shown_errors
    second = panel.logic.translation.status.output_node
    assert second is not result and second.GetAttribute("MedTranslate.source_volume") == "PatientB"
    assert _red_view(scene).GetForegroundVolumeID() == second.GetID()
    assert _red_view(scene).GetBackgroundVolumeID() == other.GetID()
    assert panel.ui.translateButton.text == "Translate" and not panel.shown_errors


def test_a_standby_worker_that_dies_at_start_is_not_restarted_on_every_panel_change(panel, monkeypatch):
    """Each change in the panel (a slider step, a selector) asks for a standby worker; one that dies as it starts (a
    Slicer whose Python lacks torch before the first Translate, a broken install) was started again at every
    change, one Python process after another. After such a death none is started until a run is."""
    from MedTranslateModule.process import WorkerProcess

    started: list[list[str]] = []
    real_start = WorkerProcess.start

    def counting_start(worker):
        started.append(worker.command)
        real_start(worker)

    monkeypatch.setattr(WorkerProcess, "start", counting_start)
    translation = panel.logic.translation
    panel.updateButtons()  # the fake worker knows no "standby" command: it exits at once with an error
    assert len(started) == 1 and started[0][-3:] == ["standby", "--model", panel._parameterNode.modelId]
    for _ in range(4):  # the user keeps changing settings
        _let_the_fake_standby_end(panel)
        panel.updateButtons()
    assert len(started) == 1, f"{len(started)} worker processes started for one panel"
    panel.onTranslateButton()  # a run starts its own worker and reports any problem; afterwards one more try
    _poll_until_finished(panel)
    assert panel.logic.translation.status.state == "done"
    assert "translate" in started[1] and [command[-3] for command in started[2:]] == ["standby"]


def test_cancel_and_failure_in_the_panel_leave_the_scene_as_it_was(panel, scene):
    """Cancel mid-run: no node added, the status says so, the button is Translate again; a failing worker: one
    error message (with the node's name, not the temporary file's) and no node added."""
    before = scene.GetNumberOfNodes()
    panel._parameterNode.modelId = "fake-slow"
    panel._models["fake-slow"] = panel._models["fake-ok"]
    panel.onTranslateButton()
    assert panel.ui.translateButton.text == "Cancel" and panel.ui.progressBar.visible
    deadline = time.monotonic() + 30
    while panel.logic.translation.poll().stage != "predict" and time.monotonic() < deadline:
        time.sleep(0.05)
    panel.onTranslateButton()  # the button reads Cancel while running
    _poll_until_finished(panel)
    assert panel.ui.statusLabel.text.startswith("Cancelled") and not panel.ui.progressBar.visible
    assert panel.ui.translateButton.text == "Translate" and scene.GetNumberOfNodes() == before
    assert not panel.shown_errors
    panel._parameterNode.modelId = "fake-error"
    panel._models["fake-error"] = panel._models["fake-ok"]
    _let_the_fake_standby_end(panel)
    panel.onTranslateButton()
    _poll_until_finished(panel)
    assert len(panel.shown_errors) == 1 and "The volume 'MRHead' is constant" in panel.shown_errors[0]
    assert scene.GetNumberOfNodes() == before and panel._parameterNode.outputVolume is None


def test_packages_installed_at_the_click_are_not_run_by_the_standby_worker_that_loaded_the_old_ones(
        panel, monkeypatch):
    """A standby worker starts as soon as the panel is ready, importing torch, monai and the backend. When the
    Translate click then installs or upgrades packages (monai 1.3 from another extension -> 1.4), that standby
    still holds the old ones in memory: the run must go to a fresh worker, not to it."""
    from MedTranslateModule import install

    translation = panel.logic.translation
    translation.worker_command = [sys.executable, "-m", "MedTranslateLib"]  # a real standby worker
    translation.prestart("cpu")
    standby = translation.standby_pid
    assert standby is not None and translation.wait_for_standby(180)
    outdated = ["monai>=1.4"]
    monkeypatch.setattr(install, "missing_requirements", lambda modules=None: list(outdated))

    def upgrade(missing, ask):  # what pip_ensure does: afterwards nothing is missing
        outdated.clear()
        return True

    monkeypatch.setattr(install, "_pip_ensure", upgrade)
    panel.onTranslateButton()
    assert not outdated and translation.is_running
    assert translation.worker_pid != standby, "the run went to the worker holding the old packages"
    translation.cancel()
    translation.prestart("cpu")  # nothing to install: the standby worker takes the run
    standby = translation.standby_pid
    assert standby is not None and translation.wait_for_standby(180)
    panel.onTranslateButton()
    assert translation.worker_pid == standby
    translation.cancel()


def _auto_picked_input(panel):
    """What the panel's own ``initializeParameterNode`` picks as the input of a parameter node that has none (as
    when the module opens or the scene was closed); connecting the Qt widgets is left out."""
    panel._parameterNode = None
    panel.logic.getParameterNode = lambda: SimpleNamespace(inputVolume=None)
    panel.setParameterNode = lambda node: setattr(panel, "_parameterNode", node)
    panel.initializeParameterNode()
    return panel._parameterNode.inputVolume


@pytest.mark.parametrize("unsuitable", ["RGB scalar volume", "vector volume", "earlier result", "label map"])
def test_the_automatic_input_is_a_plain_image_never_a_colour_volume_or_an_earlier_result(panel, scene, input_node,
                                                                                           unsuitable):
    """Opening the module picked the first scalar-class volume that was not a label map: a colour (3-component)
    volume, a vtkMRMLVectorVolumeNode or a synthetic volume MedTranslate made (translating a result again) could
    become the input. It takes the first plain single-component image that is not a result; none when only such
    volumes are loaded."""
    import slicer

    from MedTranslateModule.logic import TranslationRequest

    colour = np.zeros((12, 14, 16, 3), np.uint8)
    if unsuitable == "RGB scalar volume":
        import vtk

        image = vtk.vtkImageData()  # a colour image loaded as a scalar volume (a photo, a screenshot)
        image.SetDimensions(16, 14, 12)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
        bad = [scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "photo")]
        bad[0].SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(IJK_TO_RAS))
        bad[0].SetAndObserveImageData(image)
        assert bad[0].GetImageData().GetNumberOfScalarComponents() == 3
    elif unsuitable == "vector volume":
        bad = [slicer.util.addVolumeFromArray(colour, ijkToRAS=IJK_TO_RAS, name="RGB",
                                              nodeClassName="vtkMRMLVectorVolumeNode")]
    elif unsuitable == "earlier result":
        status = panel.logic.translation.run(TranslationRequest(input_node, "fake-ok", target_modality="CT",
                                                                uncertainty=True), timeout=60)
        bad = [status.output_node, status.uncertainty_node]
    else:
        bad = [slicer.util.addVolumeFromArray(np.ones((12, 14, 16), np.uint8), ijkToRAS=IJK_TO_RAS,
                                              name="labels", nodeClassName="vtkMRMLLabelMapVolumeNode")]
    scene.RemoveNode(input_node)  # only the unsuitable volumes are left
    assert all(scene.IsNodePresent(node) for node in bad)
    assert _auto_picked_input(panel) is None

    plain = slicer.util.addVolumeFromArray(np.ones((12, 14, 16), np.float32), ijkToRAS=IJK_TO_RAS, name="T1")
    assert _auto_picked_input(panel) is plain
