"""Guard for device selection: CUDA_VISIBLE_DEVICES=-1 hides a GPU even when PyTorch would report one."""

from __future__ import annotations

import pytest
import torch

from MedTranslateLib.errors import DeviceError
from MedTranslateLib.inference.device import select_device


@pytest.fixture
def pretend_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_hidden_gpu_is_not_used(pretend_gpu, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # the Slicer panel's "force CPU"
    assert select_device("auto").type == "cpu"
    with pytest.raises(DeviceError):
        select_device("cuda")


def test_visible_gpu_is_chosen_by_auto(pretend_gpu, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert select_device("auto").type == "cuda"
