"""The bad-input matrix: every case gives ONE clear error and exit code, writes nothing and leaves the
input untouched, through the command line (in process), the worker process (JSON lines) and the
Slicer module logic (slicer-core scene, real worker)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image
from MedTranslateLib.cli.main import main
from MedTranslateLib.errors import ConfigError, InputError, ModelError, OutputError
from packages import make_untrained_package
from test_io_bad_input import mha_header, write_mha


@dataclass
class Case:
    """``build(tmp) -> (argv after 'translate', files that must stay untouched)``."""

    name: str
    build: Callable[[Path], tuple[list[str], list[Path]]]
    code: int
    words: tuple[str, ...]
    volume: Callable[[Path], sitk.Image] | None = None  # the same case as an in-memory volume (Slicer)
    extra: dict = field(default_factory=dict)


def mr_image(shape=(12, 40, 36)) -> sitk.Image:
    return make_image(shape, spacing=(2.0, 2.0, 3.0))


def ct_image() -> sitk.Image:
    from MedTranslateLib.phantom import make_head_phantom

    return make_head_phantom(shape_zyx=(16, 32, 28), spacing_mm=(6.0, 6.0, 10.0), seed=3).ct


def seg_image() -> sitk.Image:
    """A label map (BraTS's -seg file) on the MR's grid."""
    labels = (sitk.GetArrayFromImage(mr_image()) > 0.5).astype(np.uint8) * 2
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(mr_image())
    return image


def model(tmp: Path, **kw) -> Path:
    return make_untrained_package(tmp / "model", "unet", kw.pop("dimensionality", "2d"), **kw)


def volume_case(make: Callable[[], sitk.Image], suffix: str = ".nii.gz", model_kw: dict | None = None):
    def build(tmp: Path):
        path = tmp / f"input{suffix}"
        sitk.WriteImage(make(), str(path))
        return [str(path), "-m", str(model(tmp, **(model_kw or {})))], [path]
    return build


def file_case(write: Callable[[Path], Path]):
    def build(tmp: Path):
        path = write(tmp)
        return [str(path), "-m", str(model(tmp))], [path] if path.exists() else []
    return build


def _write_bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name
    return write


def _truncated(name: str) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / name
        sitk.WriteImage(mr_image(), str(path), name.endswith(".gz"))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    return write


def _mha(name: str, **header) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        write_mha(tmp / name, mha_header(**header))
        return tmp / name
    return write


def _array_image(array: np.ndarray, **kw) -> Callable[[], sitk.Image]:
    def make() -> sitk.Image:
        image = sitk.GetImageFromArray(array, **kw)
        return image
    return make


def _with_voxel(value: float) -> Callable[[], sitk.Image]:
    def make() -> sitk.Image:
        array = sitk.GetArrayFromImage(mr_image())
        array[5, 10, 10] = value
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(mr_image())
        return image
    return make


def _dicom_mixed(tmp: Path) -> tuple[list[str], list[Path]]:
    from MedTranslateLib.io import write_volume

    folder = tmp / "dicom"
    folder.mkdir()
    write_volume(mr_image(), folder / "a", modality="MR")
    write_volume(mr_image((8, 40, 36)), folder / "b", modality="MR")
    for sub in ("a", "b"):
        for f in (folder / sub).iterdir():
            f.rename(folder / f"{sub}_{f.name}")
        (folder / sub).rmdir()
    return [str(folder), "-m", str(model(tmp)), "--series-uid", "1.2.3.4.5"], list(folder.iterdir())


def _tampered(kind: str):
    def build(tmp: Path):
        path = tmp / "input.nii.gz"
        sitk.WriteImage(mr_image(), str(path))
        package = model(tmp)
        weights = package / "weights.safetensors"
        if kind == "sha":
            data = bytearray(weights.read_bytes())
            data[-1] ^= 0xFF
            weights.write_bytes(bytes(data))
        elif kind == "corrupt":
            garbage = b"\x00not a safetensors file" * 10
            weights.write_bytes(garbage)
            card = json.loads((package / "model.json").read_text())
            card["weights"].update(sha256=hashlib.sha256(garbage).hexdigest(), size_bytes=len(garbage))
            (package / "model.json").write_text(json.dumps(card))
        elif kind == "schema":
            card = json.loads((package / "model.json").read_text())
            card["normalization"]["input"]["method"] = "magic"
            (package / "model.json").write_text(json.dumps(card))
        elif kind == "traversal":
            evil = tmp / "evil.zip"
            with zipfile.ZipFile(evil, "w") as archive:
                archive.writestr("model.json", (package / "model.json").read_text())
                archive.writestr("../../escaped.safetensors", b"x")
            return [str(path), "-m", str(evil)], [path, evil]
        return [str(path), "-m", str(package)], [path, weights]
    return build


def _output_case(kind: str):
    def build(tmp: Path):
        path = tmp / "input.nii.gz"
        sitk.WriteImage(mr_image(), str(path))
        argv = [str(path), "-m", str(model(tmp))]
        if kind == "unwritable":
            (tmp / "a_file").write_text("x")
            argv += ["-o", str(tmp / "a_file" / "out.nii.gz")]
        elif kind == "same-as-input":
            argv += ["-o", str(path)]
        elif kind == "mask-grid":
            mask = tmp / "mask.nii.gz"
            sitk.WriteImage(sitk.Cast(make_image((12, 40, 30)) > 100, sitk.sitkUInt8), str(mask))
            argv += ["--mask", str(mask)]
            return argv, [path, mask]
        elif kind == "steps":
            argv += ["--steps", "0"]
        return argv, [path]
    return build


CASES = [
    Case("missing file", file_case(lambda tmp: tmp / "nothing.nii.gz"), InputError.exit_code, ("no such file",)),
    Case("empty file", file_case(_write_bytes("empty.nii.gz", b"")), InputError.exit_code, ("empty",)),
    Case("truncated nii.gz", file_case(_truncated("t.nii.gz")), InputError.exit_code, ("truncated",)),
    Case("truncated mha", file_case(_truncated("t.mha")), InputError.exit_code, ("t.mha",)),
    Case("malformed nrrd header", file_case(_write_bytes("bad.nrrd", b"NRRD0004\ntype: float\ndimension: x\n\n")),
         InputError.exit_code, ("bad.nrrd",)),
    Case("text renamed .nii", file_case(_write_bytes("notes.nii", b"patient notes, not an image\n" * 20)),
         InputError.exit_code, ("notes.nii",)),
    Case("2D image", volume_case(_array_image(np.ones((30, 30), np.float32))), InputError.exit_code, ("2d",)),
    Case("4D image", volume_case(lambda: sitk.JoinSeries([mr_image(), mr_image()]), ".nrrd"),
         InputError.exit_code, ("4d",)),
    Case("RGB image", volume_case(_array_image(np.random.default_rng(0).random((6, 8, 10, 3)).astype(np.float32),
                                               isVector=True)), InputError.exit_code, ("component",)),
    Case("constant volume", volume_case(_array_image(np.full((10, 12, 14), 7, np.float32))),
         InputError.exit_code, ("constant",), volume=lambda tmp: _array_image(np.full((10, 12, 14), 7, np.float32))()),
    Case("all zero volume", volume_case(_array_image(np.zeros((10, 12, 14), np.float32))),
         InputError.exit_code, ("zero",)),
    Case("NaN voxel", volume_case(_with_voxel(float("nan")), ".mha"), InputError.exit_code, ("nan",),
         volume=lambda tmp: _with_voxel(float("nan"))()),
    Case("Inf voxel", volume_case(_with_voxel(float("inf")), ".mha"), InputError.exit_code, ("inf",)),
    Case("zero spacing", file_case(_mha("zero.mha", spacing="1 0 1")), InputError.exit_code, ("spacing",)),
    Case("non-orthogonal direction", file_case(_mha("skew.mha", matrix="1 0 0 0.5 1 0 0 0 1")),
         InputError.exit_code, ("direction",)),
    Case("gigantic dimensions in a tiny file", file_case(_mha("huge.mha", dims="100000 100000 100000")),
         InputError.exit_code, ("huge.mha",)),
    Case("integer range beyond float32", volume_case(_array_image(
        np.random.default_rng(0).integers(0, 2**31, (8, 10, 12)).astype(np.uint32)), ".nrrd"),
        InputError.exit_code, ("float32",)),
    Case("DICOM folder with mixed series, unknown uid", _dicom_mixed, InputError.exit_code, ("1.2.3.4.5",)),
    Case("empty folder", lambda tmp: ([str((tmp / "empty").mkdir() or tmp / "empty"), "-m", str(model(tmp))], []),
         InputError.exit_code, ("empty",)),
    Case("smaller than the model window", volume_case(lambda: mr_image((3, 6, 6)),
                                                      model_kw={"dimensionality": "3d",
                                                                "input_overrides": {"min_size": [8, 16, 16]}}),
         InputError.exit_code, ("smaller",), volume=lambda tmp: mr_image((3, 6, 6)),
         extra={"model_kw": {"dimensionality": "3d", "input_overrides": {"min_size": [8, 16, 16]}}}),
    Case("CT given to an MR model", volume_case(ct_image), InputError.exit_code, ("ct",),
         volume=lambda tmp: ct_image()),
    Case("segmentation given as the scan", volume_case(seg_image), InputError.exit_code, ("segmentation",),
         volume=lambda tmp: seg_image()),
    Case("unknown model", lambda tmp: ([str(_save(tmp)), "-m", "no-such-model"], [tmp / "input.nii.gz"]),
         ModelError.exit_code, ("no-such-model",), volume=lambda tmp: mr_image(), extra={"model": "no-such-model"}),
    Case("weights SHA256 mismatch", _tampered("sha"), ModelError.exit_code, ("sha256",),
         volume=lambda tmp: mr_image(), extra={"tamper": "sha"}),
    Case("corrupt weights file", _tampered("corrupt"), ModelError.exit_code, ("safetensors",),
         volume=lambda tmp: mr_image(), extra={"tamper": "corrupt"}),
    Case("invalid model card", _tampered("schema"), ModelError.exit_code, ("normalization.input.method",)),
    Case("zip package with path traversal", _tampered("traversal"), ModelError.exit_code, ("..",)),
    Case("unwritable output path", _output_case("unwritable"), OutputError.exit_code, ("a_file",)),
    Case("output would overwrite the input", _output_case("same-as-input"), OutputError.exit_code, ("input",)),
    Case("mask on another grid", _output_case("mask-grid"), InputError.exit_code, ("mask",)),
    Case("zero sampling steps", _output_case("steps"), ConfigError.exit_code, ("--steps",)),
]


def _save(tmp: Path) -> Path:
    path = tmp / "input.nii.gz"
    sitk.WriteImage(mr_image(), str(path))
    return path


def digest(paths: list[Path]) -> dict[str, str]:
    out = {}
    for path in paths:
        if path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _argv(case: Case, tmp: Path) -> tuple[list[str], Path, list[Path]]:
    argv, protected = case.build(tmp)
    out_dir = tmp / "out"
    out_dir.mkdir(exist_ok=True)
    if "-o" not in argv:
        argv += ["-o", str(out_dir / "sct.nii.gz")]
    return argv, out_dir, protected


def test_matrix_has_at_least_25_cases():
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_command_line(case: Case, tmp_path, capsys):
    argv, out_dir, protected = _argv(case, tmp_path)
    before = digest(protected)
    listing = sorted(str(p) for p in tmp_path.rglob("*"))
    code = main(["translate", *argv, "--progress", "none"])
    err = capsys.readouterr().err
    assert code == case.code, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for word in case.words:
        assert word.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []
    assert sorted(str(p) for p in tmp_path.rglob("*")) == listing, "a file was written or removed"
    assert digest(protected) == before, "the input was modified"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_worker_process(case: Case, tmp_path):
    argv, out_dir, protected = _argv(case, tmp_path)
    before = digest(protected)
    proc = subprocess.run([sys.executable, "-m", "MedTranslateLib", "translate", *argv, "--progress", "jsonl"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == case.code, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and errors[0]["exit_code"] == case.code
    assert not any(e["event"] == "done" for e in events)
    assert "Traceback" not in proc.stderr
    assert list(out_dir.iterdir()) == []
    assert digest(protected) == before


SLICER_CASES = [c for c in CASES if c.volume is not None]


@pytest.mark.parametrize("case", SLICER_CASES, ids=[c.name for c in SLICER_CASES])
def test_slicer_logic(case: Case, tmp_path):
    pytest.importorskip("slicer")
    import slicer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedTranslate"))
    from MedTranslateModule.logic import TranslationFailed, TranslationLogic, TranslationRequest

    from MedTranslateLib.scene import new_scene

    scene, _ = new_scene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    try:
        image = case.volume(tmp_path)
        array = sitk.GetArrayFromImage(image)
        node = slicer.util.addVolumeFromArray(array, name="input")
        node.SetSpacing(image.GetSpacing())
        if "model" in case.extra:
            model_id = case.extra["model"]
        elif "tamper" in case.extra:
            argv, _ = _tampered(case.extra["tamper"])(tmp_path)
            model_id = argv[argv.index("-m") + 1]
        else:
            model_id = str(model(tmp_path, **case.extra.get("model_kw", {})))
        nodes_before = scene.GetNumberOfNodes()
        array_before = slicer.util.arrayFromVolume(node).copy()
        logic = TranslationLogic(scene=scene)
        with pytest.raises(TranslationFailed) as info:
            logic.run(TranslationRequest(input_node=node, model_id=model_id, device="cpu"), timeout=300)
        message = str(info.value).lower()
        for word in case.words:
            assert word.lower() in message, message
        assert scene.GetNumberOfNodes() == nodes_before, "a partial node was left in the scene"
        assert np.array_equal(slicer.util.arrayFromVolume(node), array_before, equal_nan=True)
        assert logic.workdir is None or not Path(logic.workdir).exists(), "temporary files were left"
    finally:
        slicer.mrmlScene = previous
