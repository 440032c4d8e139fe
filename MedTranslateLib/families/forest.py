"""The ``random_forest`` family: a classical voxel-wise regression baseline (not gradient-trained).

``FAMILY.fit(samples, options)`` draws voxels (weighted towards the body mask), computes the voxel features of
:mod:`MedTranslateLib.families.features` with torch, fits a scikit-learn ``RandomForestRegressor`` (or
``ExtraTreesRegressor``) and exports every tree as tensors (children_left, children_right, feature, threshold,
value; padded to the largest node count), so the package stores them in safetensors, never as a pickle.
:class:`ForestModule` holds those tensors as buffers and predicts with torch only: features, then a vectorised
level-by-level traversal of all trees with ``gather``. Dimensionality "3d" (3D features, patches) and "2d"
(2D features per slice) are both supported. Architecture keys: ``n_trees``, ``max_nodes``, ``max_depth``,
``features`` (the feature spec), ``in_channels``, ``out_channels`` (1).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.families.base import Batch, InferenceOptions
from MedTranslateLib.families.features import feature_count, feature_spec, iter_feature_maps, voxel_features

_CHUNK_VOXELS = 262_144  # voxels traversed at once (bounds the (trees, voxels) index tensors)
#: ``progress(fraction, message)`` during a fit; it may raise to stop the fit (cancel)
FitProgress = Callable[[float, str], None]


class ForestModule(nn.Module):
    """A regression forest stored as padded tensors; ``forward`` maps (N, C, *spatial) to (N, 1, *spatial)."""

    def __init__(self, n_trees: int, max_nodes: int, max_depth: int, spec: Mapping[str, Any]) -> None:
        super().__init__()
        self.spec = feature_spec(spec)
        self.max_depth = int(max_depth)
        shape = (int(n_trees), int(max_nodes))
        self.register_buffer("children_left", torch.full(shape, -1, dtype=torch.int64))
        self.register_buffer("children_right", torch.full(shape, -1, dtype=torch.int64))
        self.register_buffer("feature", torch.zeros(shape, dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("value", torch.zeros(shape, dtype=torch.float64))

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        """Forest mean prediction for a (voxels, F) feature matrix (the same comparisons as scikit-learn)."""
        outputs = []
        for start in range(0, features.shape[0], _CHUNK_VOXELS):
            # scikit-learn compares float32 features with float64 thresholds
            x = features[start:start + _CHUNK_VOXELS].float().double()
            n_trees = self.children_left.shape[0]
            node = torch.zeros((x.shape[0], n_trees), dtype=torch.int64, device=x.device)
            left, right = self.children_left.T, self.children_right.T      # (nodes, trees)
            feat, thr = self.feature.T, self.threshold.T
            for _ in range(self.max_depth):
                node_left = left.gather(0, node)                              # (voxels, trees)
                is_leaf = node_left < 0
                if bool(is_leaf.all()):
                    break
                values = x.gather(1, feat.gather(0, node))
                go_left = values <= thr.gather(0, node)
                step = torch.where(go_left, node_left, right.gather(0, node))
                node = torch.where(is_leaf, node, step)
            outputs.append(self.value.T.gather(0, node).mean(dim=1))
        return torch.cat(outputs).float()

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        dims = self.spec["dims"]
        if source.dim() != dims + 2:
            raise ConfigError(f"This random forest uses {dims}D features but got a {source.dim() - 2}D batch.",
                              "Use the dimensionality the model was trained with.")
        channel = source.shape[1] // 2
        image = source[:, channel:channel + 1]
        prediction = self.predict_features(voxel_features(image, self.spec))
        return prediction.reshape((source.shape[0], 1) + tuple(source.shape[2:]))


class ForestPredictor:
    """Deterministic predictor wrapping a :class:`ForestModule`."""

    stochastic = False

    def __init__(self, net: ForestModule) -> None:
        self.net = net

    def to(self, device: torch.device | str) -> "ForestPredictor":
        self.net.to(device)
        return self

    def __call__(self, source: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.net(source.float())


def export_trees(estimators: Sequence[Any]) -> dict[str, torch.Tensor]:
    """scikit-learn fitted trees -> padded tensors (leaves and padding have children -1)."""
    max_nodes = max(est.tree_.node_count for est in estimators)
    out = {"children_left": np.full((len(estimators), max_nodes), -1, np.int64),
           "children_right": np.full((len(estimators), max_nodes), -1, np.int64),
           "feature": np.zeros((len(estimators), max_nodes), np.int64),
           "threshold": np.zeros((len(estimators), max_nodes), np.float64),
           "value": np.zeros((len(estimators), max_nodes), np.float64)}
    for i, est in enumerate(estimators):
        tree = est.tree_
        n = tree.node_count
        out["children_left"][i, :n] = tree.children_left
        out["children_right"][i, :n] = tree.children_right
        out["feature"][i, :n] = np.maximum(tree.feature, 0)   # leaves have feature -2; never read
        out["threshold"][i, :n] = tree.threshold
        out["value"][i, :n] = tree.value[:, 0, 0]
    return {key: torch.from_numpy(value) for key, value in out.items()}


def tree_depth(tensors: Mapping[str, torch.Tensor]) -> int:
    """Depth of the deepest tree in exported tensors (number of splits on the longest path)."""
    left, right = tensors["children_left"].numpy(), tensors["children_right"].numpy()
    deepest = 0
    for t in range(left.shape[0]):
        stack = [(0, 0)]
        while stack:
            node, depth = stack.pop()
            if left[t, node] < 0:
                deepest = max(deepest, depth)
            else:
                stack += [(int(left[t, node]), depth + 1), (int(right[t, node]), depth + 1)]
    return deepest


def _as_batch(volume: np.ndarray, dims: int) -> torch.Tensor:
    """A (z, y, x) array as (1, 1, z, y, x) for 3D features or (z, 1, y, x) for 2D slice features."""
    tensor = torch.as_tensor(np.asarray(volume, dtype=np.float32))
    return tensor[None, None] if dims == 3 else tensor[:, None]


def sample_training_voxels(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                           options: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, F) float32, targets (n,)) drawn from the volumes; voxels inside the mask are
    ``mask_weight`` (default 9) times as likely as background voxels."""
    spec = feature_spec(options.get("features"), _dims(options))
    n_voxels = int(options.get("n_samples", 50_000))
    mask_weight = float(options.get("mask_weight", 9.0))
    rng = np.random.default_rng(int(options.get("seed", 0)))
    if not samples:
        raise ConfigError("No training volumes were given to the random forest.", "Give at least one pair.")
    per_volume = max(1, n_voxels // len(samples))
    features, targets = [], []
    for source, target, mask in samples:
        if source.shape != target.shape:
            raise ConfigError(f"Source and target shapes differ: {source.shape} vs {target.shape}.",
                              "Random forests need paired, resampled volumes.")
        weights = np.ones(source.size) if mask is None else np.where(np.asarray(mask).ravel() > 0, mask_weight, 1.0)
        chosen = rng.choice(source.size, size=min(per_volume, source.size), replace=False, p=weights / weights.sum())
        index = torch.from_numpy(np.sort(chosen))
        columns = [m.reshape(-1)[index] for m in iter_feature_maps(_as_batch(source, spec["dims"]), spec)]
        features.append(torch.stack(columns, dim=1).numpy())
        targets.append(np.asarray(target, dtype=np.float32).ravel()[index.numpy()])
    return np.concatenate(features), np.concatenate(targets)


def _dims(options: Mapping[str, Any]) -> int:
    value = str(options.get("dimensionality", "3d")).lower()
    if value not in ("2d", "3d"):
        raise ConfigError(f"Random forests support dimensionality '2d' or '3d', not '{value}'.", "Use '2d' or '3d'.")
    return 2 if value == "2d" else 3


class RandomForestFamily:
    """Voxel-feature regression forest, fitted once with :meth:`fit`."""

    name = "random_forest"
    paired = True
    gradient_trained = False
    network_name = "forest"
    # the architecture is written by :meth:`architecture` after the fit; the forest is configured by its options
    architecture_keys: frozenset[str] = frozenset()
    option_keys = frozenset({"features", "n_samples", "mask_weight", "seed", "dimensionality", "extra_trees",
                             "n_trees", "max_depth", "min_samples_leaf", "max_features", "n_jobs"})

    def build(self, architecture: Mapping[str, Any], spatial_dims: int) -> dict[str, nn.Module]:
        spec = feature_spec(architecture.get("features"), spatial_dims)
        for key in ("n_trees", "max_nodes", "max_depth"):
            if key not in architecture:
                raise ConfigError(f"The random-forest architecture lacks '{key}'.",
                                  "Use RandomForestFamily.architecture() after fit to write the card.")
        return {self.network_name: ForestModule(int(architecture["n_trees"]), int(architecture["max_nodes"]),
                                                int(architecture["max_depth"]), spec)}

    def inference_networks(self) -> tuple[str, ...]:
        return (self.network_name,)

    def configure_optimizers(self, nets: dict[str, nn.Module], lr: float) -> dict[str, torch.optim.Optimizer]:
        return {}

    def training_step(self, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                      batch: Batch, autocast: Callable[[], Any], options: Mapping[str, Any]) -> dict[str, float]:
        raise ConfigError("The random forest is not trained by gradient steps.",
                          "Train it with RandomForestFamily.fit(samples, options) (the trainer does this for "
                          "families with gradient_trained = False).")

    def fit_estimator(self, samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                      options: Mapping[str, Any], progress: FitProgress | None = None) -> Any:
        """The fitted scikit-learn forest (see :meth:`fit` for the options). The trees grow a few at a time
        (``warm_start``: the same forest as one fit) so that ``progress(fraction, message)`` hears about them and
        can stop the fit by raising."""
        from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

        report = progress or (lambda fraction, message: None)
        report(0.0, "sampling training voxels")
        features, targets = sample_training_voxels(samples, options)
        kind = ExtraTreesRegressor if bool(options.get("extra_trees", False)) else RandomForestRegressor
        n_trees, n_jobs = int(options.get("n_trees", 20)), int(options.get("n_jobs", 1))
        if n_trees < 1:
            raise ConfigError(f"family_options.n_trees must be at least 1, not {n_trees}.", "The default is 20.")
        model = kind(n_estimators=0, max_depth=int(options.get("max_depth", 12)),
                     min_samples_leaf=int(options.get("min_samples_leaf", 5)),
                     max_features=options.get("max_features", 1.0), warm_start=True,
                     random_state=int(options.get("seed", 0)), n_jobs=n_jobs)
        per_round = max(1, os.cpu_count() or 1) if n_jobs < 0 else max(1, n_jobs)
        while model.n_estimators < n_trees:
            model.n_estimators = min(n_trees, model.n_estimators + per_round)
            model.fit(features, targets)
            report(model.n_estimators / n_trees, f"{model.n_estimators}/{n_trees} trees")
        return model

    def fit(self, samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
            options: Mapping[str, Any], progress: FitProgress | None = None) -> dict[str, torch.Tensor]:
        """Fit on (source, target, mask) normalised (z, y, x) arrays; returns the forest tensors (the
        ``forest`` network's state dict). Options: ``dimensionality`` ("3d"), ``features``, ``n_samples``
        (50000), ``mask_weight`` (9), ``n_trees`` (20), ``max_depth`` (12), ``min_samples_leaf`` (5),
        ``max_features`` (1.0), ``extra_trees`` (False), ``seed`` (0), ``n_jobs`` (1)."""
        return export_trees(self.fit_estimator(samples, options, progress).estimators_)

    def architecture(self, tensors: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> dict[str, Any]:
        """The card ``architecture`` matching tensors from :meth:`fit` (so ``build`` can load them)."""
        dims = _dims(options)
        spec = feature_spec(options.get("features"), dims)
        n_trees, max_nodes = tensors["children_left"].shape
        return {"in_channels": 1, "out_channels": 1, "n_trees": int(n_trees), "max_nodes": int(max_nodes),
                "max_depth": tree_depth(tensors), "features": spec, "n_features": feature_count(spec)}

    def make_predictor(self, nets: dict[str, nn.Module], card: Mapping[str, Any],
                       options: InferenceOptions) -> ForestPredictor:
        return ForestPredictor(nets[self.network_name])  # type: ignore[arg-type]


FAMILY = RandomForestFamily()
