"""Device selection and the mixed-precision context."""

from __future__ import annotations

import contextlib

import pytest
import torch

from MedTranslateLib.errors import DeviceError
from MedTranslateLib.inference.device import autocast_dtype, autocast_for, select_device, tune_for_inference


def test_cpu_and_auto_without_cuda(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError) as info:
        select_device("cuda")
    assert "--device cpu" in info.value.fix


def test_auto_prefers_cuda_when_usable(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("auto") == torch.device("cuda")
    assert select_device("CUDA") == torch.device("cuda")
    with pytest.raises(DeviceError):
        select_device("cuda:3")


def test_unknown_device_name():
    with pytest.raises(DeviceError):
        select_device("tpu")


def test_autocast_is_a_noop_on_cpu():
    assert autocast_dtype(torch.device("cpu")) is None
    assert isinstance(autocast_for(torch.device("cpu")), contextlib.nullcontext)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_autocast_on_cuda_uses_half_precision():
    device = torch.device("cuda")
    with autocast_for(device):
        out = torch.nn.Linear(4, 4).to(device)(torch.zeros(2, 4, device=device))
    assert out.dtype in (torch.bfloat16, torch.float16)


def test_no_cudnn_algorithm_timing_for_inference_on_cuda(monkeypatch):
    """Timing cuDNN's algorithms on each new shape cost seconds per first volume on an H200 and gained nothing."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    tune_for_inference(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is True  # the CPU does not use cuDNN: left as the caller set it
    tune_for_inference(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is False
