"""Performance features that must not silently disappear: OpenMP passive waiting set before torch is
loaded (by importing the package), and the engine's work counts reported in the worker protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from MedTranslateLib.families.base import InferenceOptions
from MedTranslateLib.inference.engine import predict_volume
from MedTranslateLib.progress import ProgressTracker


def test_package_sets_passive_omp_wait_before_torch_loads():
    code = ("import sys, os; import MedTranslateLib; "
            "assert 'torch' not in sys.modules; print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's choice wins
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "ACTIVE"


class Centre:
    stochastic = False

    def __call__(self, source: torch.Tensor, generator=None) -> torch.Tensor:
        return source[:, :1].clone()


def test_engine_reports_units_and_slice_shape():
    array = np.zeros((7, 16, 20), np.float32)
    mask = np.zeros(array.shape, bool)
    mask[2:5, 4:8, 4:8] = True  # three body slices
    card = {"dimensionality": "2d", "architecture": {"in_channels": 1, "out_channels": 1},
            "input": {"slice_axis": "axial", "batch_size": 2}}
    prediction = predict_volume(array, mask, card, Centre(), InferenceOptions(), torch.device("cpu"), ProgressTracker())
    assert prediction.stats == {"units": 3, "unit_shape": [16, 20], "passes": 1, "batch_size": 2, "device": "cpu"}
    tta = predict_volume(array, mask, {**card, "input": {"slice_axis": "coronal"}}, Centre(),
                         InferenceOptions(tta=True), torch.device("cpu"), ProgressTracker())
    assert tta.stats["passes"] == 4 and tta.stats["unit_shape"] == [7, 20] and tta.stats["units"] == 4
    json.dumps(prediction.stats)  # goes into the worker protocol's done line
