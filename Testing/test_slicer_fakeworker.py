"""A fake MedTranslate worker: a real separate process speaking the JSON-lines worker protocol.

Run as ``python test_slicer_fakeworker.py translate IN -m MODEL -o OUT --progress jsonl ...``. The model
id picks the behaviour: ``fake-ok``, ``fake-slow`` (sleeps, with a sleeping child process),
``fake-crash`` (killed by a signal), ``fake-oom`` (CUDA out-of-memory error), ``fake-error`` (protocol
error event), ``fake-nogpu`` (a warning and an error naming command-line options), ``fake-shifted`` (wrong
output geometry), ``fake-silent`` (exit 0 without ``done``).
It also holds the pytest tests of the fake itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["translate"])
    parser.add_argument("input")
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--progress", default="jsonl")
    parser.add_argument("--uncertainty")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mask")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--samples", type=int)
    args = parser.parse_args(argv)
    import SimpleITK as sitk

    behaviour = args.model.removeprefix("fake-")
    image = sitk.ReadImage(args.input, sitk.sitkFloat32)
    print("fake worker starting (plain log line)", flush=True)
    emit("progress", stage="prepare", fraction=0.1, eta_seconds=2.0, message="preparing")
    if args.device == "cpu" and os.environ.get("CUDA_VISIBLE_DEVICES") != "-1":
        emit("error", message="CUDA_VISIBLE_DEVICES was not -1 for a CPU run", exit_code=7)
        return 7
    if behaviour == "slow":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        pid_file = os.environ.get("FAKE_WORKER_PIDFILE")
        if pid_file:
            Path(pid_file).write_text(f"{os.getpid()} {child.pid}")
        for step in range(600):
            emit("progress", stage="predict", fraction=0.1 + step / 1000, eta_seconds=60.0 - step * 0.1,
                 message=f"slice {step}")
            time.sleep(0.1)
    if behaviour == "crash":
        print("Segmentation fault in fake kernel", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if behaviour == "oom":
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr, flush=True)
        return 1
    if behaviour == "nogpu":  # the backend's own words, which name command-line options
        emit("warning", message="--samples 1 was raised to 2: an uncertainty map needs at least 2 samples.")
        emit("error", message="A CUDA GPU was requested, but none is usable here. Use --device cpu (or auto), or "
                              "install a CUDA build of PyTorch and the NVIDIA driver.", exit_code=5)
        return 5
    if behaviour == "error":
        emit("error", message=f"The volume {os.path.basename(args.input)!r} is constant. Check the input.",
             exit_code=3)
        return 3
    emit("warning", message="fake warning: input looks unusual")
    emit("progress", stage="predict", fraction=0.6, eta_seconds=0.5, message="predicting")
    output = sitk.Cast(image * 2.0 - 1000.0, sitk.sitkFloat32)
    output.CopyInformation(image)
    if behaviour == "shifted":
        output.SetOrigin(tuple(o + 5.0 for o in image.GetOrigin()))
    sitk.WriteImage(output, args.output)
    if args.uncertainty:
        std = sitk.Abs(image) * 0.01
        std.CopyInformation(image)
        sitk.WriteImage(sitk.Cast(std, sitk.sitkFloat32), args.uncertainty)
    if behaviour == "silent":
        return 0
    emit("progress", stage="write", fraction=1.0, eta_seconds=0.0, message="written")
    emit("done", output=args.output, uncertainty=args.uncertainty,
         provenance={"synthetic": "true", "model_id": args.model, "model_version": "1.2.3",
                     "model_sha256": "ab" * 32, "target_modality": "CT", "date": "2026-01-01T00:00:00+00:00",
                     "device": args.device, "steps": args.steps, "samples": args.samples,
                     "mask": bool(args.mask)},
         warnings=["fake warning: input looks unusual"])
    return 0


def fake_worker_command() -> list[str]:
    """The command prefix that replaces ``python -m MedTranslateLib`` in tests."""
    return [sys.executable, str(HERE)]


def make_tiny_package(folder: Path, model_id: str = "slicer-e2e") -> Path:
    """A real model package (untrained 2D U-Net, MR -> CT) for end-to-end tests with the real backend."""
    from MedTranslateLib.families import get_family
    from MedTranslateLib.models.export import export_package
    from packages import make_test_card

    card = make_test_card(id=model_id, architecture={"channels": [4, 8], "strides": [2]},
                          input={"slice_size": [16, 16], "batch_size": 16})
    nets = get_family("unet").build(card["architecture"], 2)
    state = {f"{name}.{key}": value for name, net in nets.items() for key, value in net.state_dict().items()}
    return Path(export_package(state, card, folder))


def test_fake_worker_writes_output_with_input_geometry(tmp_path):
    import SimpleITK as sitk
    from conftest import make_image

    image = make_image(spacing=(0.9, 1.1, 2.0), origin=(1.0, -2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "in.nrrd"))
    done = subprocess.run([*fake_worker_command(), "translate", str(tmp_path / "in.nrrd"), "-m", "fake-ok",
                           "-o", str(tmp_path / "out.nrrd"), "--progress", "jsonl"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "done"
    out = sitk.ReadImage(str(tmp_path / "out.nrrd"))
    assert out.GetSize() == image.GetSize() and out.GetOrigin() == image.GetOrigin()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
