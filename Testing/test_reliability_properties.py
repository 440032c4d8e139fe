"""Property-based reliability tests (hypothesis): random geometries and intensities through the pipeline.

For every generated input the synthetic volume lies on exactly the input grid (size, spacing, origin,
direction), and the only failures allowed are :class:`MedTranslateError` subclasses with a message.
Random geometries: 8..40 voxels per axis, anisotropic spacing 0.3..5 mm, any origin, any rotation
combined with a signed axis permutation (left-handed grids included). Random intensities: MR-like,
CT-like, odd ranges (tiny, huge, negative, constant) and integer pixel types.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from packages import make_untrained_package

from MedTranslateLib.errors import MedTranslateError
from MedTranslateLib.models.package import open_package
from MedTranslateLib.pipeline import Translator

REPO = Path(__file__).resolve().parents[1]
#: Every hypothesis example run in this module (name -> [ok, refused]), printed at the end with ``-s``; each
#: property test also fails unless at least one of its examples was translated (see :func:`some_translated`).
TALLY: dict[str, list[int]] = {}
#: The distinct refusal messages seen (first 90 characters), printed with the tally.
REFUSALS: set[str] = set()

PERMUTATIONS = list(itertools.permutations(range(3)))
SIGNS = list(itertools.product((1.0, -1.0), repeat=3))
INTENSITIES = ("mr", "ct", "tiny", "huge", "negative", "constant", "uint8", "int16", "uint16", "int32")


def _rotation(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis`` (normalised here) by ``angle`` radians."""
    a = np.asarray(axis, float)
    norm = np.linalg.norm(a)
    a = a / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


@st.composite
def directions(draw) -> tuple[float, ...]:
    """A direction matrix: identity, a signed permutation (possibly left-handed) or a random rotation of one."""
    kind = draw(st.sampled_from(("identity", "permuted", "rotated")))
    if kind == "identity":
        return tuple(np.eye(3).ravel())
    perm = np.eye(3)[list(draw(st.sampled_from(PERMUTATIONS)))] * np.array(draw(st.sampled_from(SIGNS)))
    if kind == "rotated":
        axis = tuple(draw(st.floats(-1, 1)) for _ in range(3))
        perm = _rotation(axis, draw(st.floats(-math.pi, math.pi))) @ perm
    return tuple(float(v) for v in perm.ravel())


@st.composite
def geometries(draw) -> dict:
    """Size (x, y, z), spacing, origin and direction of a random grid."""
    return {
        "size": tuple(draw(st.integers(8, 40)) for _ in range(3)),
        "spacing": tuple(draw(st.floats(0.3, 5.0)) for _ in range(3)),
        "origin": tuple(draw(st.floats(-500.0, 500.0)) for _ in range(3)),
        "direction": draw(directions()),
    }


def make_volume(geometry: dict, intensity: str, seed: int) -> sitk.Image:
    """A volume on ``geometry`` with a noisy ellipsoid 'body' whose values follow ``intensity``."""
    rng = np.random.default_rng(seed)
    sx, sy, sz = geometry["size"]
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (sz, sy, sx)], indexing="ij")
    body = (x**2 + y**2 + z**2) < 0.6
    texture = np.sin(4 * x) + np.cos(3 * y) + z + rng.normal(0, 0.1, body.shape)
    if intensity == "ct":
        arr = np.where(body, 40 + 300 * texture, -1000 + rng.normal(0, 5, body.shape))
    elif intensity == "tiny":
        arr = np.where(body, 1e-3 * (2 + texture), 1e-5 * rng.random(body.shape))
    elif intensity == "huge":
        arr = np.where(body, 1e7 * (3 + texture), 1e3 * rng.random(body.shape))
    elif intensity == "negative":
        arr = np.where(body, -5000 + 200 * texture, -9000 + rng.normal(0, 3, body.shape))
    elif intensity == "constant":
        arr = np.full(body.shape, 17.0)
    else:  # MR-like, also used for the integer types
        arr = np.where(body, 400 + 150 * texture, np.abs(rng.normal(0, 3, body.shape)))
    dtype = {"uint8": np.uint8, "int16": np.int16, "uint16": np.uint16, "int32": np.int32}.get(intensity)
    if dtype is np.uint8:
        arr = np.clip(arr * 0.4, 0, 255)
    arr = arr.astype(dtype) if dtype is not None else arr.astype(np.float32)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    return image


def assert_same_grid(out: sitk.Image, ref: sitk.Image) -> None:
    """Exact equality of size, spacing, origin and direction (no tolerance)."""
    assert out.GetSize() == ref.GetSize()
    assert out.GetSpacing() == ref.GetSpacing()
    assert out.GetOrigin() == ref.GetOrigin()
    assert out.GetDirection() == ref.GetDirection()


def _tally(name: str, ok: bool) -> None:
    TALLY.setdefault(name, [0, 0])[0 if ok else 1] += 1


@contextmanager
def some_translated(name: str) -> Iterator[None]:
    """Around a whole hypothesis test: fail unless at least one of its examples tallied under ``name`` was
    translated. "On the input grid or a clean refusal" holds vacuously when every example is refused."""
    before = TALLY.get(name, [0, 0])[0]
    yield
    ok, refused = TALLY.get(name, [0, 0])
    assert ok > before, (f"{name}: none of the {refused} examples was translated, all were refused: "
                         + "; ".join(sorted(line for line in REFUSALS if line.startswith(f"{name}: ")))[:2000])


def translate_or_refuse(translator: Translator, image: sitk.Image, name: str) -> None:
    """Translate; the result must be on the input grid, or the refusal a MedTranslateError with a message."""
    reference = sitk.Image(image)  # the input must not be modified either
    try:
        result = translator.translate(image)
    except MedTranslateError as error:
        assert error.message.strip() and error.problem.strip()
        _tally(name, False)
        REFUSALS.add(f"{name}: {type(error).__name__}: {error.message[:90]}")
        return
    _tally(name, True)
    assert_same_grid(result.output, reference)
    assert result.output.GetPixelID() == sitk.sitkFloat32
    assert np.isfinite(sitk.GetArrayViewFromImage(result.output)).all()
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(reference))


@pytest.fixture(scope="module")
def translators(tmp_path_factory) -> dict[str, Translator]:
    """Untrained MR->CT packages: 2D, 2.5D, 3D, and a 2D one that resamples to 3 mm and reorients to RAS."""
    root = tmp_path_factory.mktemp("reliability_packages")
    made = {
        "2d": make_untrained_package(root / "u2d", "unet", "2d"),
        "2.5d": make_untrained_package(root / "u25d", "unet", "2.5d"),
        "3d": make_untrained_package(root / "u3d", "unet", "3d"),
        "2d-resampled": make_untrained_package(root / "u2dr", "unet", "2d", id="test-unet-2d-resampled",
                                               input_overrides={"spacing": [3.0, 3.0, 3.0], "orientation": "RAS"}),
    }
    return {name: Translator(open_package(path), "cpu") for name, path in made.items()}


@pytest.fixture(scope="module", autouse=True)
def report_tally():
    yield
    total = sum(sum(v) for v in TALLY.values())
    print(f"\n[reliability] hypothesis examples run: {total} "
          + ", ".join(f"{k}: {v[0]} translated / {v[1]} refused" for k, v in sorted(TALLY.items())))
    for line in sorted(REFUSALS):
        print(f"[reliability] refused: {line}")


PROPERTY_SETTINGS = settings(max_examples=30, deadline=timedelta(seconds=60), derandomize=True,
                             suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", ["2d", "2.5d", "3d", "2d-resampled"])
def test_output_grid_equals_input_grid_or_clean_refusal(translators, kind):
    """Each example is translated onto the input grid or cleanly refused, and at least one is translated."""

    @PROPERTY_SETTINGS
    @given(geometry=geometries(), intensity=st.sampled_from(INTENSITIES), seed=st.integers(0, 2**16))
    def translate_one(geometry, intensity, seed):
        translate_or_refuse(translators[kind], make_volume(geometry, intensity, seed), kind)

    with some_translated(kind):
        translate_one()


def test_direction_strategy_covers_left_handed_and_rotated():
    """The geometry generator really produces left-handed, permuted and oblique grids (a failing guard)."""
    from hypothesis import find

    left = find(directions(), lambda d: np.linalg.det(np.reshape(d, (3, 3))) < 0)
    oblique = find(directions(), lambda d: np.min(np.abs(np.reshape(d, (3, 3))[np.abs(np.reshape(d, (3, 3))) > 1e-6]))
                   < 0.9)
    assert np.allclose(np.reshape(left, (3, 3)) @ np.reshape(left, (3, 3)).T, np.eye(3), atol=1e-9)
    assert np.allclose(np.reshape(oblique, (3, 3)) @ np.reshape(oblique, (3, 3)).T, np.eye(3), atol=1e-9)


def test_nrrd_round_trip_of_the_output_matches_itk_itself(tmp_path, translators):
    """The written output's grid equals what ITK gives for the input file itself read and re-written (exact)."""
    from MedTranslateLib.io import read_volume, write_volume

    geometry = {"size": (8, 8, 8), "spacing": (1.0942948374049075, 1.0, 0.8046875), "origin": (0.0, 0.0, 0.0),
                "direction": tuple(np.eye(3).ravel())}
    sitk.WriteImage(make_volume(geometry, "mr", 0), str(tmp_path / "in.nrrd"))
    image, _ = read_volume(tmp_path / "in.nrrd")
    write_volume(translators["2d"].translate(image).output, tmp_path / "out.nrrd", modality="CT")
    sitk.WriteImage(image, str(tmp_path / "itk.nrrd"))
    assert_same_grid(sitk.ReadImage(str(tmp_path / "out.nrrd")), sitk.ReadImage(str(tmp_path / "itk.nrrd")))


def test_constant_and_mismatched_inputs_are_refused_cleanly(translators):
    """Deterministic anchors: a constant volume and a CT given to an MR model are refused with a message."""
    geometry = {"size": (12, 10, 9), "spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0),
                "direction": tuple(np.eye(3).ravel())}
    for intensity in ("constant", "ct"):
        with pytest.raises(MedTranslateError) as caught:
            translators["2d"].translate(make_volume(geometry, intensity, 0))
        assert caught.value.message


def test_cli_file_round_trip_keeps_the_grid(tmp_path_factory):
    """``medtranslate translate`` on NRRD/MHA files writes the output on exactly the input file's grid, or
    refuses cleanly; at least one example is translated."""

    @settings(max_examples=4, deadline=timedelta(seconds=120), derandomize=True,
              phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: each example is a process
              suppress_health_check=[HealthCheck.too_slow])
    @given(geometry=geometries(), suffix=st.sampled_from((".nrrd", ".mha")),
           intensity=st.sampled_from(("mr", "int16", "uint16")), seed=st.integers(0, 1000))
    def round_trip(geometry, suffix, intensity, seed):
        folder = tmp_path_factory.mktemp("cli_roundtrip")
        package = make_untrained_package(folder / "pkg", "unet", "2d")
        source = folder / f"in{suffix}"
        sitk.WriteImage(make_volume(geometry, intensity, seed), str(source))
        output = folder / f"out{suffix}"
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}
        done = subprocess.run([sys.executable, "-m", "MedTranslateLib", "translate", str(source), "-m", str(package),
                               "-o", str(output), "--device", "cpu"], capture_output=True, text=True, timeout=120,
                              env=env, cwd=REPO, check=False)
        _tally("cli", done.returncode == 0)
        if done.returncode != 0:  # only clean, user-facing refusals are acceptable
            REFUSALS.add(f"cli: exit {done.returncode}: {done.stderr.strip()[:90]}")
            assert done.returncode in (3, 4, 5, 6, 7), done.stderr
            assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr, done.stderr
            assert not output.exists()
            return
        written, original = sitk.ReadImage(str(output)), sitk.ReadImage(str(source))
        assert written.GetSize() == original.GetSize()
        # NRRD stores spacing x direction as one vector: ITK's own read -> write -> read may move it by an ulp
        for get in ("GetSpacing", "GetOrigin", "GetDirection"):
            np.testing.assert_allclose(getattr(written, get)(), getattr(original, get)(), rtol=1e-14, atol=1e-13)
        assert sorted(p.name for p in folder.iterdir()) == sorted(["pkg", source.name, output.name])  # no temp files

    with some_translated("cli"):
        round_trip()
