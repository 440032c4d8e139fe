"""Translation logic for the Slicer module: scene <-> files <-> worker process <-> scene.

No Qt: the widget calls :meth:`TranslationLogic.start` then :meth:`TranslationLogic.poll` from a QTimer;
scripts and tests call the blocking :meth:`TranslationLogic.run`. The worker command is injectable
(``worker_command``), so tests drive a fake worker and Slicer drives ``PythonSlicer -m MedTranslateLib``.
The scene only changes when a run succeeds; temporary files are removed in every outcome.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from MedTranslateModule.nodes import (GEOMETRY_TOLERANCE_MM, GIVEN_NAME_ATTRIBUTE, SOURCE_NODE_ATTRIBUTE,
                                      TranslationFailed, check_image_node, check_output_node, check_same_frame,
                                      node_grid, world_ijk_to_ras)
from MedTranslateModule.process import (WorkerEvent, WorkerProcess, default_python, looks_like_out_of_memory,
                                       make_workdir, remove_folder, remove_stale_workdirs, worker_environment)
from MedTranslateModule.rollback import remove_with_display, restore_all, snapshot_output
from MedTranslateModule.wording import panel_wording

DEVICES = ("auto", "cuda", "cpu")
UNCERTAINTY_REFERENCE = "MedTranslateUncertainty"
SIGKILL = 9  # signal.SIGKILL does not exist on Windows
#: The worker's result files: a detached NRRD header is written without compression. They are read back at
#: once and deleted, so gzip was wasted work (512 x 512 x 300 from click to result: 0.96x the wall time)
RESULT_SUFFIX = ".nhdr"


@dataclass
class TranslationRequest:
    """What to translate: the input node, the model and the worker options."""

    input_node: Any
    model_id: str
    target_modality: str = ""
    output_node: Any = None
    output_name: str | None = None
    device: str = "auto"
    mask_node: Any = None
    uncertainty: bool = False
    steps: int | None = None
    samples: int | None = None


@dataclass
class TranslationStatus:
    """Where a run stands: ``idle``, ``running``, ``done``, ``failed`` or ``cancelled``."""

    state: str = "idle"
    stage: str = ""
    fraction: float = 0.0
    eta_seconds: float | None = None
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    output_node: Any = None
    uncertainty_node: Any = None
    input_node: Any = None  # the volume the run translated (the panel's selection may have changed since)

    def text(self) -> str:
        """The status line for the panel: stage, time left and message while running, else the message."""
        if self.state != "running":
            return self.message
        from MedTranslateLib.progress import format_duration

        left = format_duration(self.eta_seconds)
        return f"{self.stage}{f', about {left} left' if left else ''}: {self.message}"


def output_name_for(input_name: str, target_modality: str) -> str:
    """``<input>_synthetic_<target>``, the default name of the output volume."""
    target = (target_modality or "output").strip().replace(" ", "_")
    return f"{input_name}_synthetic_{target}"


class TranslationLogic:
    """Runs one translation at a time in a worker process and loads the result into the scene."""

    def __init__(self, scene: Any = None, worker_command: Sequence[str] | None = None,
                 python_executable: str | None = None,
                 on_status: Callable[[TranslationStatus], None] | None = None) -> None:
        self._scene = scene
        self.python_executable = python_executable or default_python()
        self.worker_command = list(worker_command) if worker_command else [self.python_executable, "-m",
                                                                             "MedTranslateLib"]
        self.on_status = on_status
        self.status = TranslationStatus()
        self._worker: WorkerProcess | None = None
        self._workdir: str | None = None
        self._request: TranslationRequest | None = None
        self._paths: dict[str, str] = {}
        self._done: dict[str, Any] | None = None
        self._errors: list[str] = []
        self._standby: WorkerProcess | None = None
        self._failed_standby_env: dict[str, str] | None = None  # of a standby that died unused; cleared by a run
        self._grids: tuple[Any, Any] = (None, None)  # the input's own grid at the start, the grid it was sent on

    @property
    def scene(self) -> Any:
        if self._scene is not None:
            return self._scene
        import slicer

        return slicer.mrmlScene

    @property
    def is_running(self) -> bool:
        return self._worker is not None

    @property
    def workdir(self) -> str | None:
        """The temporary folder of the current run (None when idle)."""
        return self._workdir

    @property
    def worker_pid(self) -> int | None:
        return self._worker.pid if self._worker else None

    # ---- start ---------------------------------------------------------------------------------
    def build_command(self, request: TranslationRequest, paths: dict[str, str]) -> list[str]:
        """The worker command line for a request (``translate IN -m MODEL -o OUT --progress jsonl ...``)."""
        if request.device not in DEVICES:
            raise TranslationFailed(f"Unknown device {request.device!r}: use one of {', '.join(DEVICES)}.")
        command = [*self.worker_command, "translate", paths["input"], "-m", request.model_id,
                   "-o", paths["output"], "--progress", "jsonl", "--device", request.device]
        if "uncertainty" in paths:
            command += ["--uncertainty", paths["uncertainty"]]
        if "mask" in paths:
            command += ["--mask", paths["mask"]]
        if request.steps:
            command += ["--steps", str(int(request.steps))]
        if request.samples:
            command += ["--samples", str(int(request.samples))]
        return command

    def start(self, request: TranslationRequest) -> None:
        """Write the input to a temporary folder and start the worker (returns at once)."""
        if self.is_running:
            raise TranslationFailed("A translation is already running: wait for it or cancel it first.")
        check_image_node(request.input_node, "an input volume")
        if not request.model_id:
            raise TranslationFailed("Select a model.")
        check_output_node(request.output_node, request.input_node, request.mask_node)
        if request.mask_node is not None:
            if request.mask_node.GetImageData() is None:
                raise TranslationFailed(f"The mask {request.mask_node.GetName()} has no image data: select "
                                        "another mask or none.")
            check_same_frame(request.input_node, request.mask_node, "The mask")
        self._failed_standby_env = None  # after this run a standby worker may be tried again
        remove_stale_workdirs()  # a Slicer killed mid-run left its input copy behind
        self._workdir = make_workdir()
        try:
            paths = {"input": os.path.join(self._workdir, "input.nrrd"),
                     "output": os.path.join(self._workdir, "output" + RESULT_SUFFIX)}
            grids = (node_grid(request.input_node)[1], self._write_node(request.input_node, paths["input"]))
            if request.mask_node is not None:
                paths["mask"] = os.path.join(self._workdir, "mask.nrrd")
                self._write_node(request.mask_node, paths["mask"], frame=request.input_node)
            if request.uncertainty:
                paths["uncertainty"] = os.path.join(self._workdir, "uncertainty" + RESULT_SUFFIX)
            command = self.build_command(request, paths)
            self._worker = self._take_standby(command, request.device)
            if self._worker is None:
                self._worker = WorkerProcess(command, env=worker_environment(request.device), cwd=self._workdir)
                try:
                    self._worker.start()
                except OSError as error:  # no such interpreter (a damaged install): one message, as for failures
                    raise TranslationFailed(f"Could not start the MedTranslate worker ({command[0]}): "
                                            f"{error.strerror or error}. Reinstall the MedTranslate "
                                            "extension.") from error
        except BaseException:
            self._worker = None
            self._cleanup()
            raise
        self._request, self._paths, self._done, self._errors, self._grids = request, paths, None, [], grids
        self._set_status(TranslationStatus(state="running", stage="starting", message="Starting the worker"))

    # ---- prestarted worker ----------------------------------------------------------------------
    def prestart(self, device: str = "auto", model: str | None = None) -> None:
        """Start a standby worker for the next run on ``device`` (``medtranslate standby``): it loads Python,
        torch and the backend now, so the Translate click does not wait for them, and with ``model`` what that
        model's networks need too (MONAI for diffusion and 3D models). It holds those libraries' memory until it
        is used, replaced (another device or model) or released, and ends by itself with Slicer. One that died
        unused is not started again for the same device until a run has been started."""
        if device not in DEVICES:
            raise TranslationFailed(f"Unknown device {device!r}: use one of {', '.join(DEVICES)}.")
        env = worker_environment(device)
        command = [*self.worker_command, "standby"] + (["--model", model] if model else [])
        if self._standby is not None and self._standby.running and self._standby.env == env \
                and self._standby.command == command:
            return
        if self._standby is not None and not self._standby.running:  # it died by itself, unused: a broken start
            self._failed_standby_env = self._standby.env
        self.release_standby()
        if env == self._failed_standby_env:  # not again at every panel change; the next run says what is wrong
            return
        standby = WorkerProcess(command, env=env, takes_job=True)
        try:
            standby.start()
        except OSError:  # no such interpreter: the run starts its own worker and reports what is wrong
            return
        self._standby = standby

    def release_standby(self) -> None:
        """Let the standby worker go (it exits when its input closes); a later run starts its own."""
        standby, self._standby = self._standby, None
        if standby is not None:
            standby.release()

    def wait_for_standby(self, timeout: float = 60.0) -> bool:
        """Block until the standby worker has loaded its libraries (True), for scripts and benchmarks; False when
        there is none, it ended or ``timeout`` s passed."""
        deadline = time.monotonic() + timeout
        while self._standby is not None and self._standby.running and time.monotonic() < deadline:
            if any(event.kind == "ready" for event in self._standby.poll()):
                return True
            time.sleep(0.02)
        return False

    @property
    def standby_pid(self) -> int | None:
        return self._standby.pid if self._standby is not None and self._standby.running else None

    def _take_standby(self, command: list[str], device: str) -> WorkerProcess | None:
        """The standby worker, sent ``command``, when it runs with ``device``'s environment; else None (and it is
        released)."""
        standby, self._standby = self._standby, None
        if standby is None:
            return None
        if standby.env == worker_environment(device) and standby.send_job(command[len(self.worker_command):],
                                                                            self._workdir):
            return standby
        standby.release()
        return None

    def _write_node(self, node: Any, path: str, frame: Any = None) -> Any:
        """Write ``node``'s voxels on its world grid (linear parent transforms applied, those of ``frame`` when
        given: the worker sees the volume as the user does, hardened or not); the result comes back onto its own
        grid, under its transform. Returns the 3 x 4 IJK-to-RAS matrix written."""
        import slicer

        placed = getattr(slicer, node.GetClassName())()  # same class, outside the scene, sharing the voxels
        placed.SetAndObserveImageData(node.GetImageData())
        placed.SetIJKToRASMatrix(world_ijk_to_ras(node, frame))
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(path)
        storage.SetUseCompression(0)
        if not storage.WriteData(placed):
            raise TranslationFailed(f"Could not write {node.GetName()} to a temporary file ({path}).")
        return node_grid(placed)[1]

    # ---- progress --------------------------------------------------------------------------------
    def poll(self) -> TranslationStatus:
        """Handle the worker's new messages; on exit load the result (or report the failure)."""
        worker = self._worker
        if worker is None:
            return self.status
        changed = False
        for event in worker.poll():
            changed = self._handle(event) or changed
        if worker.finished():
            for event in worker.poll():
                self._handle(event)
            self._finish(worker)
        elif changed:
            self._set_status(self.status)
        return self.status

    def _handle(self, event: WorkerEvent) -> bool:
        status = self.status
        if event.kind == "progress":
            status.stage = event.stage or status.stage
            status.fraction = event.fraction if event.fraction is not None else status.fraction
            status.eta_seconds = event.eta_seconds
            status.message = event.message or event.stage
            return True
        if event.kind == "warning":
            status.warnings.append(panel_wording(event.message))
            return True
        if event.kind == "done":
            self._done = event.payload
        elif event.kind == "error":
            self._errors.append(panel_wording(event.message))
        return False

    def _finish(self, worker: WorkerProcess) -> None:
        code = worker.returncode
        request = self._request
        status = TranslationStatus(stage=self.status.stage, fraction=self.status.fraction,
                                   warnings=list(self.status.warnings))
        try:
            if worker.cancelled:
                status.state, status.message = "cancelled", "Cancelled: the scene was not changed."
            elif code == 0 and self._done is not None:
                status.output_node, status.uncertainty_node = self._load_results(request, self._done)
                status.input_node = request.input_node
                status.state, status.fraction, status.message = "done", 1.0, "Done"
            else:
                status.state, status.message = "failed", self._failure_message(code, worker)
        except TranslationFailed as error:
            status.state, status.message = "failed", str(error)
        except Exception as error:  # an unexpected failure while loading must still end the run cleanly
            logging.exception("MedTranslate: loading the translation result failed")  # the traceback, for a report
            status.state, status.message = "failed", f"Could not load the result: {error}"
        finally:
            self._worker = None
            self._cleanup()
        self._set_status(status)

    def _failure_message(self, code: int | None, worker: WorkerProcess) -> str:
        tail = worker.log_tail()
        detail = self._node_names_for_files(" ".join(self._errors) or (tail.splitlines()[-1] if tail else ""))
        if looks_like_out_of_memory(" ".join(self._errors) + "\n" + tail):
            return ("The translation ran out of memory. Choose the CPU device, close other programs, "
                    f"or crop the input volume. ({detail})")
        if code == 0:
            return "The worker finished without reporting a result. " + detail
        if code == -SIGKILL:
            return ("The worker process crashed (signal 9), most likely because the system ran out of memory. "
                    f"Close other programs, choose the CPU device or crop the input volume. {detail}").strip()
        if code is not None and code < 0:
            return f"The worker process crashed (signal {-code}). {detail}".strip()
        return f"The translation failed (exit code {code}). {detail}".strip()

    def _node_names_for_files(self, text: str) -> str:
        """The worker's message with the temporary files it was given named by the user's nodes."""
        request = self._request
        if request is None:
            return text
        nodes = {"input": request.input_node, "mask": request.mask_node}
        for role, path in self._paths.items():
            node = nodes.get(role)
            if node is not None:
                text = text.replace(path, node.GetName()).replace(os.path.basename(path), node.GetName())
        return text

    # ---- results ---------------------------------------------------------------------------------
    def _load_results(self, request: TranslationRequest, done: dict[str, Any]) -> tuple[Any, Any]:
        output_path = done.get("output") or self._paths["output"]
        if not os.path.isfile(output_path):
            raise TranslationFailed(f"The worker reported success but wrote no output file ({output_path}).")
        input_node = request.input_node
        for node, role in ((input_node, "input"), (request.output_node, "output")):
            if node is not None and not self.scene.IsNodePresent(node):
                raise TranslationFailed(f"The {role} volume was removed from the scene (or the scene was closed) "
                                        "during the translation: the result was discarded.")
        loaded = self._read_checked(output_path, input_node)
        uncertainty = None
        uncertainty_path = done.get("uncertainty")
        if request.uncertainty and uncertainty_path and os.path.isfile(uncertainty_path):
            uncertainty = self._read_checked(uncertainty_path, input_node)
        provenance = dict(done.get("provenance") or {})
        provenance.update({"source_volume": input_node.GetName(),
                           "mask_volume": request.mask_node.GetName() if request.mask_node is not None else ""})
        if self.status.warnings:  # reference-free warnings travel with the volume
            provenance["warnings"] = " | ".join(self.status.warnings)
        # everything is read and checked: only now is the scene changed, all or nothing (on failure new nodes are
        # removed and the reused output node and its uncertainty map are put back as they were)
        created: list[Any] = []
        snapshots = snapshot_output(self.scene, request.output_node, UNCERTAINTY_REFERENCE)
        try:
            return self._show_results(request, loaded, uncertainty, provenance, created)
        except BaseException:
            for node in created:
                remove_with_display(self.scene, node)
            restore_all(snapshots)
            raise

    def _show_results(self, request: TranslationRequest, loaded: Any, uncertainty: Any,
                      provenance: dict[str, Any], created: list[Any]) -> tuple[Any, Any]:
        from MedTranslateLib import scene as scene_tools

        input_node = request.input_node
        name = request.output_name or output_name_for(input_node.GetName(), request.target_modality)
        output_node = self._store(loaded, request.output_node, name, input_node, created)
        scene_tools.set_provenance(output_node, provenance)
        output_node.SetAttribute(SOURCE_NODE_ATTRIBUTE, input_node.GetID())
        scene_tools.place_beside(self.scene, input_node, output_node)
        target = (request.target_modality or provenance.get("target_modality") or "").upper()
        if target in ("CT", "SCT"):
            scene_tools.apply_ct_display(output_node)
        else:  # not a CT window left by an earlier CT result in this node
            output_node.GetDisplayNode().SetAutoWindowLevel(1)
        previous = output_node.GetNodeReference(UNCERTAINTY_REFERENCE)
        output_node.SetNodeReferenceID(UNCERTAINTY_REFERENCE, None)  # a new result: the old map no longer fits
        uncertainty_node = None
        if uncertainty is not None:
            uncertainty_node = self._store(uncertainty, previous, f"{output_node.GetName()}_uncertainty",
                                           input_node, created)
            scene_tools.set_provenance(uncertainty_node, {**provenance, "uncertainty": "std"})
            uncertainty_node.SetAttribute(SOURCE_NODE_ATTRIBUTE, input_node.GetID())
            scene_tools.apply_uncertainty_display(uncertainty_node)
            scene_tools.place_beside(self.scene, input_node, uncertainty_node)
            output_node.SetNodeReferenceID(UNCERTAINTY_REFERENCE, uncertainty_node.GetID())
        elif previous is not None and self.scene.IsNodePresent(previous):
            remove_with_display(self.scene, previous)  # the map of the result this one replaced: it would mislead
        return output_node, uncertainty_node

    def _read_checked(self, path: str, input_node: Any) -> Any:
        """Read a result file as a KJI numpy array after checking it lies on exactly the grid the input was sent on.

        SimpleITK (not Slicer's archetype reader, which may flip left-handed grids) keeps voxel order.
        """
        import numpy as np
        import SimpleITK as sitk

        try:
            image = sitk.ReadImage(path)
        except RuntimeError as error:
            raise TranslationFailed(f"Could not read the worker's output {path}: {error}") from error
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise TranslationFailed("The worker's output is not a 3D scalar volume: the result was not loaded.")
        input_size = input_node.GetImageData().GetDimensions()
        if tuple(image.GetSize()) != tuple(input_size):
            raise TranslationFailed(f"The output size {image.GetSize()} differs from the input size "
                                    f"{input_size}: the result was not loaded.")
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        direction = np.array(image.GetDirection()).reshape(3, 3)
        output_matrix = np.eye(4)
        output_matrix[:3, :3] = lps_to_ras @ direction @ np.diag(image.GetSpacing())
        output_matrix[:3, 3] = lps_to_ras @ np.array(image.GetOrigin())
        # the worker gives back the grid it was sent; the input has not moved meanwhile (its transform may have
        # changed: the voxels still match one to one, and the result goes under the same transform)
        own, sent = self._grids
        moved = not np.allclose(node_grid(input_node)[1], own, rtol=0, atol=GEOMETRY_TOLERANCE_MM)
        if moved or not np.allclose(output_matrix[:3], sent, rtol=0, atol=GEOMETRY_TOLERANCE_MM):
            raise TranslationFailed("The output geometry differs from the input's: the result was not loaded.")
        return sitk.GetArrayFromImage(image)

    def _store(self, array: Any, target: Any, name: str, input_node: Any, created: list[Any]) -> Any:
        """Put voxels in ``target`` (or a new scene node with a unique name from ``name``, appended to
        ``created``) on exactly the input's grid. A target that MedTranslate named for another result is renamed;
        a name the user gave is kept."""
        import slicer
        import vtk

        if target is None:
            target = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", self._unused_name(name))
            target.SetAttribute(GIVEN_NAME_ATTRIBUTE, target.GetName())
            created.append(target)
        elif target.GetAttribute(GIVEN_NAME_ATTRIBUTE) == target.GetName() and not target.GetName().startswith(name):
            # a result node named by MedTranslate (not renamed since) now holds another result: name it for that
            target.SetName(self._unused_name(name))
            target.SetAttribute(GIVEN_NAME_ATTRIBUTE, target.GetName())
        matrix = vtk.vtkMatrix4x4()
        input_node.GetIJKToRASMatrix(matrix)
        target.SetIJKToRASMatrix(matrix)
        target.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())  # same place as the input
        holder = slicer.vtkMRMLScalarVolumeNode()  # new voxels in a new image: a rollback gives back the old one
        slicer.util.updateVolumeFromArray(holder, array)
        target.SetAndObserveImageData(holder.GetImageData())
        target.CreateDefaultDisplayNodes()
        return target

    def _unused_name(self, name: str) -> str:
        """``name`` when no node has it, else the scene's unique variant (``name_1``, ...)."""
        return name if self.scene.GetFirstNodeByName(name) is None else self.scene.GenerateUniqueName(name)

    # ---- cancel / blocking -----------------------------------------------------------------------
    def cancel(self) -> None:
        """Kill the worker process tree; the scene stays as it was."""
        if self._worker is not None:
            self._worker.cancel()
            self.poll()

    def run(self, request: TranslationRequest, timeout: float | None = None,
            poll_interval: float = 0.05) -> TranslationStatus:
        """Blocking run for scripts and tests; raises :class:`TranslationFailed` unless it succeeds."""
        self.start(request)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_running:
            self.poll()
            if self.is_running and deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TranslationFailed(f"The translation took longer than {timeout:.0f} s and was stopped.")
            time.sleep(poll_interval)
        if self.status.state != "done":
            raise TranslationFailed(self.status.message)
        return self.status

    def _set_status(self, status: TranslationStatus) -> None:
        self.status = status
        if self.on_status is not None:
            self.on_status(status)

    def _cleanup(self) -> None:
        if self._workdir and not remove_folder(self._workdir):
            logging.warning("MedTranslate: could not remove the temporary folder %s", self._workdir)
        self._workdir = None

