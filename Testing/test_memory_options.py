"""Memory of the translate options: an uncertainty map (flip TTA) and a given mask hold no input-grid volume
longer than they need, and give the same results as before."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedTranslateLib.families.base import InferenceOptions
from MedTranslateLib.inference import engine
from MedTranslateLib.progress import ProgressTracker
from conftest import make_image
from packages import make_untrained_package


class LeftBias:
    """Not flip-equivariant (adds a ramp along x), so flip TTA gives a spread."""

    stochastic = False

    def __call__(self, source: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return source[:, :1] + 0.1 * torch.linspace(-1, 1, source.shape[-1])


def test_flip_tta_holds_no_restored_pass_while_the_next_is_restored():
    """Each restored pass is folded in and dropped; the plain pass is restored once more at the end, after the
    running mean is gone: the output and the spread are exactly those of the passes as they were folded in."""
    array = np.random.default_rng(0).uniform(-1, 1, (4, 8, 10)).astype(np.float32)
    card = {"dimensionality": "2d", "architecture": {"in_channels": 1, "out_channels": 1},
            "input": {"slice_axis": "axial", "spacing": None}}
    alive: list[int] = []
    restored: list[weakref.ref] = []
    passes: list[np.ndarray] = []

    def restore_pass(values: np.ndarray) -> np.ndarray:
        alive.append(sum(ref() is not None for ref in restored))
        passes.append(values.copy())
        out = np.repeat(values, 2, axis=0) * np.float32(100.0)
        restored.append(weakref.ref(out))
        return out

    result = engine.predict_volume(array, None, card, LeftBias(), InferenceOptions(tta=True), torch.device("cpu"),
                                   ProgressTracker(), restore_pass)
    assert alive == [0] * 5  # four passes, then the plain one again; none still held at any call
    np.testing.assert_array_equal(passes[4], passes[0])
    np.testing.assert_array_equal(result.mean, np.repeat(passes[0], 2, axis=0) * np.float32(100.0))
    stats = engine._RunningStats()
    for values in passes[:4]:
        stats.add(np.repeat(values, 2, axis=0) * np.float32(100.0))
    np.testing.assert_array_equal(result.std, stats.std())
    assert float(result.std.max()) > 0


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return make_untrained_package(tmp_path_factory.mktemp("model") / "model", "unet", "2d")


@pytest.fixture
def translator(package):
    from MedTranslateLib.models.package import open_package
    from MedTranslateLib.pipeline import Translator

    return Translator(open_package(package), device="cpu")


def _watch_checked_arrays(monkeypatch) -> list[weakref.ref]:
    """Weak references to the arrays the input check gets; inference asserts that none of them is alive."""
    from MedTranslateLib.evaluation import ood
    from MedTranslateLib.inference import engine as engine_module

    checked: list[weakref.ref] = []
    check_input, predict_volume = ood.check_input, engine_module.predict_volume

    def watched_check(array, mask, spacing, card):
        checked.extend(weakref.ref(a) for a in (array, mask) if isinstance(a, np.ndarray))
        return check_input(array, mask, spacing, card)

    def watched_predict(*args, **kwargs):
        assert checked and all(ref() is None for ref in checked), "an input-grid array of the checks is still held"
        return predict_volume(*args, **kwargs)

    monkeypatch.setattr(ood, "check_input", watched_check)
    monkeypatch.setattr(engine_module, "predict_volume", watched_predict)
    return checked


@pytest.mark.parametrize("given_mask", [False, True])
def test_the_input_checks_leave_no_volume_behind_for_inference(translator, monkeypatch, given_mask):
    """The body masks of the checks (with a given mask: the automatic one, and the volume it was found on) are
    freed before inference and restore, and the result does not change."""
    image = make_image((16, 24, 20))
    mask = sitk.Cast(sitk.BinaryThreshold(image, 100.0, 1e9, 1, 0), sitk.sitkUInt8) if given_mask else None
    expected = translator.translate(image, mask)
    _watch_checked_arrays(monkeypatch)
    result = translator.translate(image, mask)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result.output),
                                  sitk.GetArrayViewFromImage(expected.output))
    assert result.warnings == expected.warnings


def test_an_uncertainty_map_frees_each_volume_once_it_is_an_image(translator, monkeypatch):
    """The restored passes are not held beside each other, the mean is freed before the std becomes an image, and
    the output is the one translated without an uncertainty map."""
    from MedTranslateLib import preprocess

    image = make_image((16, 24, 20))
    plain = translator.translate(image)
    made: list[weakref.ref] = []
    restore_array, on_input_grid = preprocess.restore_array, preprocess.on_input_grid

    def watched(function):
        def call(array, *args, **kwargs):
            assert all(ref() is None or ref() is array for ref in made), "an earlier input-grid volume is held"
            out = function(array, *args, **kwargs)
            made.append(weakref.ref(out if isinstance(out, np.ndarray) else array))
            return out
        return call

    monkeypatch.setattr(preprocess, "restore_array", watched(restore_array))
    monkeypatch.setattr(preprocess, "on_input_grid", watched(on_input_grid))
    result = translator.translate(image, uncertainty=True)
    assert len(made) == 4 + 1 + 2  # four restored passes, the plain one again, two images
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result.output), sitk.GetArrayViewFromImage(plain.output))
    assert result.uncertainty is not None and sitk.GetArrayViewFromImage(result.uncertainty).max() > 0


@pytest.mark.parametrize("direction", [None, (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)])
def test_automatic_body_reads_the_volume_in_place_and_finds_the_mask_prepare_finds(direction):
    """Without reorientation the OOD check's voxels are a read-only view of the image (no float32 copy);
    either way the automatic mask is the one ``prepare`` records, in the model's orientation."""
    from MedTranslateLib.preprocess import automatic_body, in_model_orientation, prepare

    image = make_image((16, 24, 20), direction=direction)
    card = {"input": {"orientation": "LPS", "spacing": None, "slice_axis": "axial"}, "source_modality": "MR",
            "dimensionality": "2d", "normalization": {"input": {"method": "percentile", "percentiles": [0.5, 99.5]}}}
    array, body, spacing = automatic_body(image, card)
    prepared = prepare(image, card)
    expected_array, expected_body, expected_spacing = in_model_orientation(image, prepared.input_mask,
                                                                           prepared.record)
    np.testing.assert_array_equal(array, expected_array)
    np.testing.assert_array_equal(body, expected_body)
    assert tuple(spacing) == tuple(expected_spacing)
    in_place = np.shares_memory(array, sitk.GetArrayViewFromImage(image))
    assert in_place == (direction is None) and (array.flags.writeable != in_place)
