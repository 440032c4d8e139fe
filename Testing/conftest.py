"""Shared fixtures: small synthetic volumes, the real-data folder, an isolated user model folder, and a
slicer-core scene with an input volume, and a Ctrl-C pressed while outputs move into place."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The real data folder (MEDTRANSLATE_DATA or ../shared/data), or None when absent."""
    env = os.environ.get("MEDTRANSLATE_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture
def real_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data not found: set MEDTRANSLATE_DATA or put it in ../shared/data")
    return path


@pytest.fixture(autouse=True)
def isolated_user_models(tmp_path_factory, monkeypatch):
    """Every test gets its own empty user model folder, so tests never touch the real one."""
    folder = tmp_path_factory.mktemp("user_models")
    monkeypatch.setenv("MEDTRANSLATE_MODELS_DIR", str(folder))
    return folder


def make_image(shape_zyx=(20, 24, 28), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
               direction=None, seed: int = 0, dtype=np.float32):
    """A small SimpleITK test volume with a bright ellipsoid 'body' on a dark background."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    body = (x**2 + y**2 + z**2) < 0.7
    arr = np.where(body, 300.0 + 200.0 * x + rng.normal(0, 10, shape_zyx), rng.normal(0, 2, shape_zyx))
    img = sitk.GetImageFromArray(arr.astype(dtype))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


@pytest.fixture
def small_image():
    return make_image()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread per test process: tiny networks run faster on one thread, and parallel test
    workers (pytest -n 2) do not fight over the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: The IJK -> RAS matrix of ``input_node`` (axes swapped and flipped, anisotropic, shifted).
IJK_TO_RAS = np.array([[0.0, -1.2, 0.0, 30.5], [-0.9, 0.0, 0.0, 12.25], [0.0, 0.0, 2.5, -40.0], [0, 0, 0, 1]])


@pytest.fixture
def scene():
    """A new slicer-core MRML scene, set as ``slicer.mrmlScene`` for the test (needs slicer-core: test modules
    that use it call ``pytest.importorskip("slicer")``)."""
    import slicer

    from MedTranslateLib.scene import new_scene

    scene, _ = new_scene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    yield scene
    slicer.mrmlScene = previous


@pytest.fixture
def input_node(scene):
    """A 16x14x12 scalar volume "MRHead" on ``IJK_TO_RAS``, under a patient and study in the subject hierarchy."""
    import slicer

    z, y, x = np.mgrid[0:12, 0:14, 0:16]
    array = (100.0 * np.sin(x / 3.0) + 10.0 * y + z).astype(np.float32)
    node = slicer.util.addVolumeFromArray(array, ijkToRAS=IJK_TO_RAS, name="MRHead")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient")
    study = hierarchy.CreateStudyItem(patient, "Study")
    hierarchy.CreateItem(study, node)
    return node


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C (SIGINT) raises KeyboardInterrupt during the test, as in a terminal. A process started in the background
    by a shell without job control (``(make test &)``) inherits SIGINT ignored, and Python then leaves it ignored:
    the tests that press Ctrl-C would see nothing happen."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _CtrlCAfterFirstMove:
    """``os.replace`` that presses Ctrl-C (SIGINT) once, right after the first move it makes."""

    def __init__(self) -> None:
        self.real = os.replace
        self.pressed = False
        self.active = True

    def __call__(self, src, dst) -> None:
        self.real(src, dst)
        if self.active and not self.pressed:
            self.pressed = True
            signal.raise_signal(signal.SIGINT)

    @contextlib.contextmanager
    def paused(self):
        self.active = False
        try:
            yield
        finally:
            self.active = True


@pytest.fixture
def ctrl_c_after_first_move(monkeypatch, ctrl_c_raises):
    """One Ctrl-C in the middle of moving outputs into place (the moment an interruption did most harm)."""
    replace = _CtrlCAfterFirstMove()
    monkeypatch.setattr(os, "replace", replace)
    return replace


def process_alive(pid: int) -> bool:
    """True while process ``pid`` runs (POSIX; a zombie, exited but not reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").split()[2] != "Z"
    except OSError:
        return False
