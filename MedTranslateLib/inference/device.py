"""Compute device selection and the matching mixed-precision context."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import torch

from MedTranslateLib.errors import DeviceError

DEVICE_CHOICES = ("auto", "cuda", "cpu")


def _cuda_usable() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip() in ("-1",):
        return False
    try:
        return torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception:  # a broken driver install counts as no CUDA
        logging.getLogger(__name__).debug("CUDA is not usable", exc_info=True)
        return False


def select_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when usable, else the CPU; ``cuda`` (or ``cuda:N``) / ``cpu``: exactly that.

    Raises :class:`DeviceError` when CUDA is asked for but not usable (``CUDA_VISIBLE_DEVICES=-1`` hides it).
    """
    choice = str(name or "auto").strip().lower()
    if choice == "auto":
        return torch.device("cuda") if _cuda_usable() else torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or choice.startswith("cuda:"):
        if not _cuda_usable():
            raise DeviceError("A CUDA GPU was requested, but none is usable here (no NVIDIA driver, a CPU-only "
                              "PyTorch, or CUDA_VISIBLE_DEVICES=-1).",
                              "Use --device cpu (or auto), or install a CUDA build of PyTorch and the NVIDIA driver.")
        device = torch.device(choice)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"GPU {device.index} does not exist; {torch.cuda.device_count()} GPU(s) are visible.",
                              "Use --device cuda (the first GPU) or a lower index.")
        return device
    raise DeviceError(f"Unknown device '{name}'.", "Use auto, cuda, cuda:N or cpu.")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 on CUDA GPUs that support it, float16 on older GPUs, None (full precision) on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_for(device: torch.device) -> Any:
    """A mixed-precision context for ``device`` (a no-op ``nullcontext`` on the CPU)."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def tune_for_inference(device: torch.device) -> None:
    """On CUDA, no timing of cuDNN's convolution algorithms (``cudnn.benchmark``, in case a caller turned it on):
    on an H200, timing them on the first call of each input shape cost the first 256^3 volume 2.4 s (U-Net),
    0.6-2.3 s (pix2pix) and 1.5-4.4 s (diffusion, 10 steps), and made later volumes no faster (BENCHMARKS.md);
    cuDNN's heuristic choice is used instead."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
