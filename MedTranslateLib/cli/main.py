"""``medtranslate``: translate, models, demo, train, evaluate, bench.

Only argparse is imported at start-up; each command imports what it needs, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from MedTranslateLib import __version__
from MedTranslateLib.errors import MedTranslateError


def _add_translate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="translate volumes with a model",
                       description="Translate one volume (or several into a folder) with a model package.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI, NRRD, MHA/MHD file or DICOM folder")
    p.add_argument("-m", "--model", required=True, help="model id, id@version, package folder or .zip")
    p.add_argument("-o", "--output", required=True,
                   help="output file (.nii.gz, .nrrd, .mha) or folder (DICOM series); a folder for several inputs")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: the CUDA GPU when there is one, else the CPU (default: auto)")
    p.add_argument("--mask", help="body mask on the input grid (replaces the automatic mask)")
    p.add_argument("--uncertainty", metavar="PATH", help="also write a per-voxel uncertainty (std) volume")
    p.add_argument("--output-type", choices=("auto", "float32", "int16"), default="auto",
                   help="voxel type of the written volume: auto = int16 Hounsfield units for CT (float32 when values "
                        "exceed int16), float32 otherwise")
    p.add_argument("--ensemble", nargs="+", metavar="MODEL", default=[],
                   help="more model packages: the output is the ensemble mean, the uncertainty its spread "
                        "(it takes every name after it: give the inputs before the options)")
    p.add_argument("--steps", type=int, help="diffusion and bridge models: sampling steps (default: the card's, else 5 for diffusion, 10 for bridge)")
    p.add_argument("--sampler", help="diffusion models: ddim, dpm++2m or ddpm (default: the model card's, else ddim); bridge models have their own")
    p.add_argument("--samples", type=int, default=None,
                   help="diffusion and bridge models: samples averaged (default: the model card's, else 1); with "
                        "--uncertainty their spread is the map, and at least 4 are drawn")
    p.add_argument("--seed", type=int, default=0, help="seed of stochastic samplers (default: 0)")
    p.add_argument("--series-uid", help="DICOM input: the SeriesInstanceUID to read (default: largest series)")
    p.add_argument("--scene", metavar="OUT.mrb", help="also write a Slicer scene with the fused, linked display")
    p.add_argument("--progress", choices=("rich", "jsonl", "none"), default="rich",
                   help="progress display; jsonl is the worker protocol used by the Slicer module")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (byte-identical CPU output)")
    p.set_defaults(handler=_lazy("MedTranslateLib.cli.translate", "run_translate"))


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, show, import or remove model packages, or print your model folder")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="{list,show,import,remove,folder}")
    lp = msub.add_parser("list", help="list the models the registry finds")
    lp.add_argument("--json", action="store_true",
                    help='machine-readable output: {"models": [...], "problems": [...]}')
    sp = msub.add_parser("show", help="show a model card")
    sp.add_argument("model", help="model id, id@version, package folder or .zip")
    sp.add_argument("--json", action="store_true", help="the card as JSON")
    ip = msub.add_parser("import", help="import a model package (.zip or folder) into your model folder")
    ip.add_argument("file", help="a package .zip, a package folder, or the model.json inside one")
    ip.add_argument("--overwrite", action="store_true", help="replace an imported package with the same id and version")
    rp = msub.add_parser("remove", help="remove an imported model from your model folder")
    rp.add_argument("model", help="id or id@version of an imported model (built-in models cannot be removed)")
    msub.add_parser("folder", help="print your model folder (MEDTRANSLATE_MODELS_DIR, else the user data folder)")
    p.set_defaults(handler=_lazy("MedTranslateLib.cli.models", "run_models"))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="translate the built-in phantom with the built-in model",
                       description="Render a head phantom the demo model never saw, translate its T1 MR into a "
                                   "synthetic CT and print MAE / PSNR / SSIM against the phantom's true CT. Writes "
                                   "synthetic_ct.nii.gz, demo.png (input | synthetic | reference | difference), "
                                   "metrics.json and the phantom's volumes into --output.")
    p.add_argument("--output", default="demo_output", help="folder for the demo's files (default: demo_output)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: the CUDA GPU when there is one, else the CPU (default: auto)")
    p.add_argument("--model", default=None, help="model to use (default: the bundled MR -> CT demo model)")
    p.set_defaults(handler=_lazy("MedTranslateLib.cli.demo", "run_demo"))


def _add_delegated(sub: argparse._SubParsersAction, name: str, help_text: str, module: str,
                   add_args: str, run: str) -> None:
    p = sub.add_parser(name, help=help_text)
    import importlib

    getattr(importlib.import_module(module), add_args)(p)
    p.set_defaults(handler=_lazy(module, run))


def _lazy(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    def call(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(args)

    return call


def build_parser() -> argparse.ArgumentParser:
    """The ``medtranslate`` argument parser with every subcommand (no heavy imports)."""
    parser = argparse.ArgumentParser(
        prog="medtranslate",
        description="MedTranslate: medical image translation (MR -> synthetic CT, CBCT -> CT, T1 -> T2/FLAIR, ...). "
                    "Research software, not for clinical use.",
    )
    parser.add_argument("--version", action="version", version=f"MedTranslate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_translate(sub)
    _add_models(sub)
    _add_demo(sub)
    _add_delegated(sub, "train", "train a model and export a package", "MedTranslateLib.training.cli",
                   "add_train_arguments", "run_train")
    _add_delegated(sub, "evaluate", "evaluate synthetic volumes against references (SynthRAD metrics)",
                   "MedTranslateLib.evaluation.cli", "add_evaluate_arguments", "run_evaluate")
    _add_delegated(sub, "bench", "measure translate speed and memory", "MedTranslateLib.bench",
                   "add_bench_arguments", "run_bench")
    standby = sub.add_parser("standby", help="load the libraries, then run one command sent on standard input as "
                                             "JSON (the Slicer module's prestarted worker)")
    standby.add_argument("--model", default=None, help="also load what this model's networks need (e.g. MONAI)")
    standby.set_defaults(handler=_lazy("MedTranslateLib.cli.standby", "run_standby"))
    return parser


class Terminated(SystemExit):
    """SIGTERM (a scheduler, ``timeout``, the Slicer module's Cancel) or SIGHUP (a closed terminal or ssh
    session): unwinds like Ctrl-C, so every partial output is removed on the way out."""

#: the exit code of a process whose standard output was closed (SIGPIPE's 128 + 13, as the shell reports it)
OUTPUT_CLOSED = 141


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(128 + signum)


def _report(args: argparse.Namespace, message: str, exit_code: int) -> None:
    """One error: an ``error`` event for the worker protocol, else a line on standard error."""
    if getattr(args, "progress", None) == "jsonl":
        import json

        print(json.dumps({"event": "error", "message": message, "exit_code": exit_code}), flush=True)
    else:
        print(f"error: {message}", file=sys.stderr)


def _output_closed() -> int:
    """The exit of a run whose standard output was closed (``| head``, a Slicer that is gone)."""
    import os

    try:  # no second error when Python flushes the closed stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real descriptor (captured output)
        pass
    try:
        print("stopped: the standard output was closed; nothing half-written is left.", file=sys.stderr)
    except (OSError, ValueError):
        pass
    return OUTPUT_CLOSED


class _ClosedPipeIsBroken:
    """A standard stream whose closed pipe raises :class:`BrokenPipeError`. Windows raises ``OSError(EINVAL)``
    instead (CPython issue 79935), which would otherwise end in a traceback, not the closed-output exit."""

    def __init__(self, stream: object) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)

    def _call(self, method: str, *args: object) -> object:
        import errno

        try:
            return getattr(self._stream, method)(*args)
        except OSError as error:
            if error.errno == errno.EINVAL and not isinstance(error, BrokenPipeError):
                raise BrokenPipeError(errno.EPIPE, "the standard output was closed") from error
            raise

    def write(self, text: str) -> object:
        return self._call("write", text)

    def flush(self) -> object:
        return self._call("flush")


def _wrap_standard_streams() -> None:
    """On Windows a closed pipe reads as one (undone by :func:`_restore_standard_streams`)."""
    import os

    if os.name == "nt":
        sys.stdout, sys.stderr = (s if isinstance(s, _ClosedPipeIsBroken) else _ClosedPipeIsBroken(s)
                                  for s in (sys.stdout, sys.stderr))


def _restore_standard_streams() -> None:
    sys.stdout, sys.stderr = (s._stream if isinstance(s, _ClosedPipeIsBroken) else s for s in (sys.stdout, sys.stderr))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, MedTranslateError.exit_code on a known error)."""
    import signal

    from MedTranslateLib.signals import STOP_SIGNALS

    for stream in (sys.stdout, sys.stderr):  # a Windows pipe (cp1252) cannot encode every name: never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    parser = build_parser()
    args = parser.parse_args(argv)
    _wrap_standard_streams()
    import threading

    in_main_thread = threading.current_thread() is threading.main_thread()
    hooked = [sig for sig in STOP_SIGNALS if sig != signal.SIGINT]  # Ctrl-C stays Python's KeyboardInterrupt
    # a signal set to be ignored stays ignored (`nohup medtranslate train ... &` survives a closed terminal)
    hooked = [sig for sig in hooked if in_main_thread and signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, _terminate) for sig in hooked}
    try:
        try:
            return int(args.handler(args) or 0)
        except MedTranslateError as error:
            _report(args, error.message, error.exit_code)
            return error.exit_code
        except (KeyboardInterrupt, Terminated) as stop:
            code = 130 if isinstance(stop, KeyboardInterrupt) else int(stop.code)
            _report(args, f"{'interrupted' if code == 130 else 'terminated'}; nothing half-written is left.", code)
            return code
        except BrokenPipeError:
            raise
        except Exception as error:  # a bug: the worker protocol still gets its one error event, then the traceback
            if getattr(args, "progress", None) == "jsonl":
                _report(args, f"internal error ({type(error).__name__}: {error}); please report it with the "
                              "traceback on standard error.", 1)
            raise
    except BrokenPipeError:  # also from reporting an error on a closed output: stop, do not claim success
        return _output_closed()
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back from here
                signal.signal(sig, handler)
        _restore_standard_streams()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
