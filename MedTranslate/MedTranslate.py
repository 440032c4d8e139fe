"""MedTranslate: translate medical volumes between modalities (MR -> synthetic CT, CBCT -> CT, T1 -> T2).

Thin Slicer module: the panel binds to :class:`MedTranslateParameterNode`; all work happens in
``MedTranslateModule`` (logic, worker process, display) and in the ``MedTranslateLib`` backend, which
runs in a separate ``PythonSlicer`` process so a crash or out-of-memory cannot take Slicer down.
"""

from __future__ import annotations

import logging
import os

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedTranslateModule.logic import TranslationFailed, TranslationLogic, TranslationRequest
from MedTranslateModule.nodes import default_input_volume, evaluate_against_reference, output_for_input
from MedTranslateModule.process import nvidia_driver_present, worker_environment
from MedTranslateModule.parameters import DEVICE_CHOICES, LAYOUT_CHOICES, MedTranslateParameterNode

POLL_INTERVAL_MS = 100


class MedTranslate(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedTranslate")
        self.parent.categories = [_("Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedTranslate developers"]
        self.parent.helpText = _(
            "Translate a volume into another modality (MR to synthetic CT, CBCT to CT, T1 to T2/FLAIR) "
            "with a model from the list; the result keeps the input's exact geometry. Research use only: "
            "synthetic images are not for diagnosis.")
        self.parent.acknowledgementText = _("Uses PyTorch, MONAI and SimpleITK. Metrics follow SynthRAD 2023/2025.")
        slicer.app.connect("startupCompleted()", _register_sample_data)


def _register_sample_data() -> None:
    from MedTranslateModule.sample_data import register_sample_data

    icon = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "MedTranslate.png")
    try:
        register_sample_data(thumbnail=icon)
    except Exception as error:  # sample data must never break Slicer's start
        logging.warning(f"MedTranslate: sample data not registered: {error}")


class MedTranslateWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: binds the .ui to the parameter node and drives :class:`TranslationLogic` with a QTimer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._allModels = []
        self._models = {}
        self._enteredBefore = False
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedTranslate.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedTranslateLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.translateButton.clicked.connect(self.onTranslateButton)
        self.ui.evaluateButton.clicked.connect(self.onEvaluateButton)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.modelSearchLineEdit.textChanged.connect(self.showModels)
        self.ui.importModelButton.clicked.connect(self.onImportModel)
        self.ui.removeModelButton.clicked.connect(self.onRemoveModel)
        self.ui.openModelFolderButton.clicked.connect(self.onOpenModelFolder)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.updateCpuNotice)
        self.ui.opacitySliderWidget.valueChanged.connect(self.onOpacityChanged)
        self.ui.inputVolumeSelector.currentNodeChanged.connect(self.updateButtons)
        self.ui.metricsTableWidget.horizontalHeader().setStretchLastSection(True)
        self.modelProblemsLabel = qt.QLabel()  # under the model list: packages the backend could not read
        self.modelProblemsLabel.wordWrap = True
        self.ui.modelChoiceWidget.layout().addWidget(self.modelProblemsLabel)
        self.loadModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        if self.logic and self.logic.translation.is_running:
            self.logic.translation.cancel()
        if self.logic:
            self.logic.translation.release_standby()
        self.removeObservers()

    def enter(self) -> None:
        if self._enteredBefore and not self._allModels:  # none listed at setup (packages declined, a backend
            self.loadModels()                             # error): try again each time the module is opened
        self._enteredBefore = True
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic and self.logic.translation.is_running:  # its nodes are going away
            self.logic.translation.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:  # auto-pick a plain scalar image, never a colour volume or a result
            first = default_input_volume(slicer.mrmlScene)
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            index = self.ui.modelComboBox.findData(self._parameterNode.modelId)
            if index >= 0:
                self.ui.modelComboBox.setCurrentIndex(index)
            self.onModelChanged(self.ui.modelComboBox.currentIndex)  # a new node takes the model shown
        self.updateButtons()

    # ---- models ------------------------------------------------------------------------------------
    def loadModels(self) -> None:
        from MedTranslateModule.install import LISTING_MODULES, ensure_listing_packages, missing_requirements
        from MedTranslateModule.models import list_models_and_problems, show_problems

        self._allModels, problems = [], []
        try:
            if not ensure_listing_packages(ask=True):  # a fresh Slicer lacks two small packages the list needs
                self.ui.modelCardLabel.text = _("Listing the models needs the Python packages {packages}. Open the "
                                                "module again to install them.").format(
                    packages=", ".join(missing_requirements(LISTING_MODULES)))
            else:
                with slicer.util.WaitCursor():
                    self._allModels, problems = list_models_and_problems(
                        self.logic.translation.worker_command, env=worker_environment("auto"))
        except Exception as error:
            self.ui.modelCardLabel.text = _("Could not list the models: {error}").format(error=error)
        show_problems(self.modelProblemsLabel, problems)  # a package that stopped passing says why
        self.showModels()

    def showModels(self, *args) -> None:
        """Fill the model list with the models matching the search text, keeping the selection if it is shown."""
        from MedTranslateModule.models import filter_models

        models = filter_models(self._allModels, self.ui.modelSearchLineEdit.text)
        self._models = {model.id: model for model in models}
        selected = self._parameterNode.modelId if self._parameterNode else ""
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for model in models:
            combo.addItem(model.label, model.id)
        combo.setCurrentIndex(max(combo.findData(selected), 0) if models else -1)
        combo.blockSignals(False)
        self.onModelChanged(combo.currentIndex)

    def selectedModel(self):
        return self._models.get(self.ui.modelComboBox.currentData)

    def onModelChanged(self, index: int) -> None:
        model = self.selectedModel()
        if model:
            self.ui.modelCardLabel.text = model.card_text()
        elif self._allModels:
            self.ui.modelCardLabel.text = _("No model matches the search.") if not self._models \
                else _("No model selected.")
        if self._parameterNode:
            self._parameterNode.modelId = model.id if model else ""  # none shown: none to run
        self.updateButtons()

    def onImportModel(self) -> None:
        from MedTranslateModule.models import import_model

        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import a MedTranslate model package"),
                                              "", _("Model packages (*.zip model.json);;All files (*)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not import the model."), waitCursor=True):
            message = import_model(self.logic.translation.worker_command, path, env=worker_environment("auto"))
            self.ui.statusLabel.text = message
            self.loadModels()

    def onRemoveModel(self) -> None:
        from MedTranslateModule.models import remove_model

        model = self.selectedModel()
        if not model or not slicer.util.confirmYesNoDisplay(
                _("Delete {model} {version} from your model folder?").format(model=model.id, version=model.version)):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not remove the model."), waitCursor=True):
            self.ui.statusLabel.text = remove_model(self.logic.translation.worker_command, model,
                                                    env=worker_environment("auto"))
            self.loadModels()

    def onOpenModelFolder(self) -> None:
        from MedTranslateModule.models import user_models_folder

        with slicer.util.tryWithErrorDisplay(_("Could not open the model folder."), waitCursor=True):
            folder = user_models_folder(self.logic.translation.worker_command, env=worker_environment("auto"))
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def updateCpuNotice(self, *args) -> None:
        device = self.ui.deviceComboBox.currentText
        no_gpu = device == "CPU" or (device == "Auto" and not self.logic.cudaAvailable())
        self.ui.cpuNoticeLabel.visible = no_gpu

    def updateButtons(self, *args) -> None:
        running = bool(self.logic and self.logic.translation.is_running)
        node = self._parameterNode
        if node and node.outputVolume and output_for_input(node.outputVolume, node.inputVolume) is None:
            node.outputVolume = None  # another input's result: the next run makes a new volume
        ready = bool(node and node.inputVolume and node.modelId)
        self.ui.translateButton.text = _("Cancel") if running else _("Translate")
        self.ui.translateButton.enabled = running or ready
        self.ui.evaluateButton.enabled = bool(node and node.outputVolume and node.referenceVolume) and not running
        model = self.selectedModel()
        self.ui.removeModelButton.enabled = bool(model and model.removable) and not running
        self.ui.importModelButton.enabled = not running
        self.updateCpuNotice()
        if ready and not running:  # the next run's worker loads Python and torch now, not after the click
            self.logic.translation.prestart(DEVICE_CHOICES[node.device], node.modelId)

    # ---- run -------------------------------------------------------------------------------------
    def onTranslateButton(self) -> None:
        translation = self.logic.translation
        if translation.is_running:
            translation.cancel()
            return
        node = self._parameterNode
        model = self._models.get(node.modelId)
        with slicer.util.tryWithErrorDisplay(_("Could not start the translation."), waitCursor=True):
            from MedTranslateModule.install import ensure_backend_packages
            from MedTranslateModule.nodes import overwrite_question
            from MedTranslateModule.parameters import request_from_panel

            if not ensure_backend_packages(ask=True, before_install=translation.release_standby):
                return
            request = request_from_panel(node, model)
            question = overwrite_question(request.output_node)
            if question and not slicer.util.confirmOkCancelDisplay(question):
                return
            translation.start(request)
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self._timer.start()
        self.updateButtons()

    def onPoll(self) -> None:
        status = self.logic.translation.poll()
        self.ui.progressBar.value = int(round(100 * status.fraction))
        self.ui.statusLabel.text = status.text()
        if status.state == "running":
            return
        self._timer.stop()
        self.ui.progressBar.visible = False
        if status.warnings:
            self.ui.statusLabel.text += "\n" + "\n".join(status.warnings)
        if status.state == "failed":
            slicer.util.errorDisplay(status.message)
        elif status.state == "done" and self._parameterNode:
            self._parameterNode.outputVolume = status.output_node
            self.showResult(status)
        self.updateButtons()

    def showResult(self, status) -> None:
        from MedTranslateModule.display import show_result

        node = self._parameterNode  # the run's own input: the selector may show another volume by now
        layout = LAYOUT_CHOICES[node.layout]
        show_result(status.input_node, status.output_node, node.foregroundOpacity, layout, status.uncertainty_node)

    def onOpacityChanged(self, value: float) -> None:
        from MedTranslateModule.display import set_foreground_opacity

        set_foreground_opacity(value)

    # ---- evaluation ------------------------------------------------------------------------------
    def onEvaluateButton(self) -> None:
        from MedTranslateModule.models import model_of_node

        node = self._parameterNode
        # the model that made the synthetic volume (its provenance), else the one selected
        model = model_of_node(self._allModels, node.outputVolume) or self._models.get(node.modelId)
        modality, card = model.evaluation_settings() if model else ("CT", None)
        with slicer.util.tryWithErrorDisplay(_("Evaluation failed."), waitCursor=True):
            rows = evaluate_against_reference(node.outputVolume, node.referenceVolume, node.referenceMask,
                                              modality, card).rows()
            table = self.ui.metricsTableWidget
            table.setRowCount(len(rows))
            for row, (name, text) in enumerate(rows):
                table.setItem(row, 0, qt.QTableWidgetItem(name))
                table.setItem(row, 1, qt.QTableWidgetItem(text))


class MedTranslateLogic(ScriptedLoadableModuleLogic):
    """Parameter node + the translation logic (usable from the Python console without the panel)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.translation = TranslationLogic()

    def getParameterNode(self) -> MedTranslateParameterNode:
        return MedTranslateParameterNode(super().getParameterNode())

    @staticmethod
    def cudaAvailable() -> bool:
        """Cheap guess (no torch import in Slicer's process): an NVIDIA driver is installed.

        The worker reports the device it really uses (a warning when it falls back to the CPU).
        """
        return nvidia_driver_present()


class MedTranslateTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: MRBrainT1 -> synthetic CT with the bundled model on the CPU."""

    MODEL_ID = "mr2ct-headphantom-unet2d"

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        import importlib.util

        self.setUp()
        if importlib.util.find_spec("torch") is None:  # a fresh Slicer (e.g. the extension's ctest) has no torch
            self.delayDisplay("Skipped: torch is not installed (install the PyTorch extension to run this test)")
            return
        self.test_translate_mr_brain_on_cpu()

    def test_translate_mr_brain_on_cpu(self) -> None:
        import numpy as np
        import SampleData

        self.delayDisplay("Loading CTMRBrain sample data")
        SampleData.downloadSample("CTMRBrain")
        input_node = slicer.util.getNode("MRBrainT1")
        logic = MedTranslateLogic().translation
        self.delayDisplay("Translating MRBrainT1 on the CPU")
        before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
        status = logic.run(TranslationRequest(input_node, self.MODEL_ID, target_modality="CT", device="cpu"),
                           timeout=1800)
        output = status.output_node
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"), before + 1)
        self.assertEqual(output.GetName(), "MRBrainT1_synthetic_CT")
        self.assertEqual(output.GetImageData().GetDimensions(), input_node.GetImageData().GetDimensions())
        in_matrix, out_matrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        input_node.GetIJKToRASMatrix(in_matrix)
        output.GetIJKToRASMatrix(out_matrix)
        for i in range(4):
            for j in range(4):
                self.assertEqual(in_matrix.GetElement(i, j), out_matrix.GetElement(i, j))
        values = slicer.util.arrayFromVolume(output)
        self.assertTrue(np.isfinite(values).all())
        self.assertGreaterEqual(float(values.min()), -1100.0)
        self.assertLessEqual(float(values.max()), 3200.0)
        self.assertEqual(output.GetAttribute("MedTranslate.synthetic"), "true")
        self.assertEqual(output.GetAttribute("MedTranslate.model_id"), self.MODEL_ID)
        self.assertEqual(len(output.GetAttribute("MedTranslate.model_sha256") or ""), 64)
        from MedTranslateModule.display import show_result

        composites = show_result(input_node, output, 0.5)
        red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(red.GetBackgroundVolumeID(), input_node.GetID())
        self.assertEqual(red.GetForegroundVolumeID(), output.GetID())
        self.assertTrue(all(c.GetLinkedControl() for c in composites.values()))
        self.delayDisplay("Test passed")
        with self.assertRaises(TranslationFailed):
            logic.run(TranslationRequest(input_node, "no-such-model", device="cpu"), timeout=600)
