"""Messages of the backend name command-line options (``--device cpu``); in the Slicer panel they name the panel's
own controls instead."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "MedTranslate"))

from MedTranslateModule.wording import panel_wording  # noqa: E402


def _backend_message(device: str) -> str:
    from MedTranslateLib.errors import DeviceError
    from MedTranslateLib.inference import device as devices

    try:
        devices.select_device(device)
    except DeviceError as error:
        return error.message
    pytest.skip("this machine has a usable CUDA GPU")


def test_the_backend_s_no_gpu_message_names_the_panel_s_device_choice(monkeypatch):
    from MedTranslateLib.inference import device as devices

    monkeypatch.setattr(devices, "_cuda_usable", lambda: False)
    text = panel_wording(_backend_message("cuda"))
    assert "--device" not in text and "Choose CPU (or Auto) as the Device" in text, text
    assert text.startswith("A CUDA GPU was requested")


@pytest.mark.parametrize("cli, panel", [
    ("Use --device cpu, close other GPU programs, or use a smaller model.",
     "Choose CPU as the Device, close other GPU programs, or use a smaller model."),
    ("Use --device cuda (the first GPU) or a lower index.", "Choose GPU as the Device (the first GPU) or a lower index."),
    ("--samples 1 was raised to 2: an uncertainty map needs at least 2 samples.",
     "Samples 1 was raised to 2: an uncertainty map needs at least 2 samples."),
    ("Leave out --uncertainty, or use an ensemble.", "Leave out Uncertainty, or use an ensemble."),
    ("A message without options.", "A message without options."),
])
def test_command_line_options_become_the_panel_s_controls(cli, panel):
    assert panel_wording(cli) == panel


def test_a_failed_run_in_the_panel_says_what_to_choose_not_which_option_to_type(scene, input_node):
    """The worker's error (the backend's own words, with ``--device cpu``) and its warnings reach the panel in the
    panel's words."""
    from MedTranslateModule.logic import TranslationFailed, TranslationLogic, TranslationRequest
    from test_slicer_fakeworker import fake_worker_command

    logic = TranslationLogic(scene=scene, worker_command=fake_worker_command())
    with pytest.raises(TranslationFailed):
        logic.run(TranslationRequest(input_node, "fake-nogpu", target_modality="CT"), timeout=60)
    status = logic.status
    assert status.state == "failed" and "--" not in status.message, status.message
    assert "Choose CPU (or Auto) as the Device" in status.message
    assert status.warnings == ["Samples 1 was raised to 2: an uncertainty map needs at least 2 samples."]
