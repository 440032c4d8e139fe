"""Random-forest family: tensor export equals scikit-learn, fit beats a constant, safetensors round trip."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.families import get_family
from MedTranslateLib.families.base import InferenceOptions, pack_state, unpack_state
from MedTranslateLib.families.features import feature_count, feature_spec, voxel_features
from MedTranslateLib.families.forest import FAMILY, export_trees, sample_training_voxels

OPTIONS = {"n_samples": 4000, "n_trees": 5, "max_depth": 8, "seed": 0}




def make_pair(seed: int, shape: tuple[int, int, int] = (16, 20, 20)):
    """Normalised (source, target, mask): the target is a non-linear function of the source plus position."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (x**2 + y**2 + z**2) < 0.7
    source = np.where(body, 0.5 * x + 0.2 * y, -1.0) + rng.normal(0, 0.05, shape)
    target = np.where(body, np.tanh(2 * source) + 0.3 * y, -1.0)
    return source.astype(np.float32), target.astype(np.float32), body.astype(np.float32)


def _batch(volume: np.ndarray, dims: int) -> torch.Tensor:
    tensor = torch.from_numpy(volume)
    return tensor[None, None] if dims == 3 else tensor[:, None]


@pytest.mark.parametrize("dimensionality", ["3d", "2d"])
def test_tensor_forest_equals_sklearn(dimensionality):
    options = {**OPTIONS, "dimensionality": dimensionality}
    dims = 3 if dimensionality == "3d" else 2
    model = FAMILY.fit_estimator([make_pair(0), make_pair(1)], options)
    tensors = export_trees(model.estimators_)
    nets = FAMILY.build(FAMILY.architecture(tensors, options), dims)
    nets["forest"].load_state_dict(tensors)
    source = make_pair(2)[0]
    features = voxel_features(_batch(source, dims), feature_spec(None, dims))
    assert features.shape[1] == feature_count(feature_spec(None, dims))
    expected = model.predict(features.numpy())
    got = nets["forest"].predict_features(features).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the module's forward (features computed inside) agrees with the same prediction
    forward = nets["forest"](_batch(source, dims)).numpy().ravel()
    np.testing.assert_allclose(forward, expected, atol=1e-5)


@pytest.mark.parametrize("extra_trees", [False, True])
def test_fit_grows_trees_with_progress_and_equals_one_fit(extra_trees):
    """Trees grown a few at a time (to report progress) give the forest of one scikit-learn fit."""
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

    options = {**OPTIONS, "dimensionality": "3d", "extra_trees": extra_trees}
    pairs = [make_pair(0), make_pair(1)]
    heard: list[tuple[float, str]] = []
    model = FAMILY.fit_estimator(pairs, options, lambda fraction, message: heard.append((fraction, message)))
    assert [round(f, 2) for f, _ in heard] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert heard[-1][1] == "5/5 trees"
    kind = ExtraTreesRegressor if extra_trees else RandomForestRegressor
    features, targets = sample_training_voxels(pairs, options)
    once = kind(n_estimators=5, max_depth=8, min_samples_leaf=5, max_features=1.0, random_state=0).fit(
        features, targets)
    np.testing.assert_array_equal(model.predict(features), once.predict(features))


def test_fit_stops_when_progress_raises():
    class Stop(Exception):
        pass

    def stop_after_two(fraction, message):
        if fraction >= 0.4:
            raise Stop

    with pytest.raises(Stop):
        FAMILY.fit([make_pair(0)], {**OPTIONS, "dimensionality": "3d"}, stop_after_two)


def test_fit_beats_constant_predictor_and_predictor_runs():
    options = {**OPTIONS, "dimensionality": "3d"}
    tensors = FAMILY.fit([make_pair(0), make_pair(1)], options)
    arch = FAMILY.architecture(tensors, options)
    nets = FAMILY.build(arch, 3)
    nets["forest"].load_state_dict(tensors)
    predictor = FAMILY.make_predictor(nets, {}, InferenceOptions())
    assert predictor.stochastic is False
    source, target, mask = make_pair(3)
    prediction = predictor(torch.from_numpy(source)[None, None])[0, 0].numpy()
    inside = mask > 0
    forest_error = np.abs(prediction - target)[inside].mean()
    constant_error = np.abs(target[inside].mean() - target)[inside].mean()
    assert forest_error < 0.3 * constant_error


def test_mask_weighted_sampling_prefers_the_body():
    source, target, mask = make_pair(0)
    _, targets = sample_training_voxels([(source, target, mask)], {"n_samples": 2000, "mask_weight": 9.0})
    inside_fraction = float((targets > -1.0).mean())
    body_fraction = float(mask.mean())
    assert inside_fraction > body_fraction + 0.2


def test_state_dict_round_trip_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    options = {**OPTIONS, "dimensionality": "2d", "n_trees": 3}
    tensors = FAMILY.fit([make_pair(0)], options)
    arch = FAMILY.architecture(tensors, options)
    nets = FAMILY.build(arch, 2)
    nets["forest"].load_state_dict(tensors)
    save_file(pack_state(nets), tmp_path / "weights.safetensors")
    restored = FAMILY.build(arch, 2)
    unpack_state(restored, load_file(tmp_path / "weights.safetensors"), FAMILY.inference_networks())
    batch = _batch(make_pair(4)[0], 2)
    assert torch.equal(nets["forest"](batch), restored["forest"](batch))


def test_family_flags_and_clear_errors():
    family = get_family("random_forest")
    assert family is FAMILY and family.gradient_trained is False and family.paired
    assert FAMILY.configure_optimizers({}, 1e-3) == {}
    with pytest.raises(ConfigError, match="not trained by gradient"):
        FAMILY.training_step({}, {}, {}, contextlib.nullcontext, {})
    with pytest.raises(ConfigError):
        FAMILY.fit([], {"dimensionality": "3d"})
    with pytest.raises(ConfigError):
        FAMILY.fit([make_pair(0)], {"dimensionality": "2.5d"})
    with pytest.raises(ConfigError, match="n_trees must be at least 1"):
        FAMILY.fit([make_pair(0)], {"dimensionality": "3d", "n_trees": 0})
    with pytest.raises(ConfigError):
        FAMILY.build({"in_channels": 1, "out_channels": 1}, 3)
