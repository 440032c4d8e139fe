"""``medtranslate standby``: a worker that loads its libraries now and runs the command it is sent later.

The Slicer module starts one before the Translate click (when the module opens and after each run), so that
the click no longer waits for the interpreter, torch and the backend to load (about 2 s of a 6 s run). It
prints ``{"event": "ready"}`` once loaded, then reads one line from standard input: a JSON object
``{"argv": [...], "cwd": "..."}``, the arguments of another ``medtranslate`` command (``translate ...``), which it
runs as that command would run and exits with its code. An empty standard input (the caller closed it: it
went away or no longer needs the worker) ends it quietly with code 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from MedTranslateLib.errors import ConfigError

#: What a translation needs, imported before the command arrives (what the click would otherwise wait for).
PRELOADED = ("torch", "SimpleITK", "scipy.ndimage", "MedTranslateLib.pipeline", "MedTranslateLib.inference.engine",
             "MedTranslateLib.preprocess", "MedTranslateLib.evaluation.ood", "MedTranslateLib.models.registry",
             "MedTranslateLib.cli.translate")


def parse_job(line: str) -> tuple[list[str], str | None]:
    """The command's arguments and working folder from the line sent on standard input."""
    try:
        job: Any = json.loads(line)
    except ValueError as error:
        raise ConfigError(f"The standby worker got a line that is not JSON ({error}).",
                          'Send one line such as {"argv": ["translate", ...], "cwd": "/tmp/run"}.') from error
    argv = job.get("argv") if isinstance(job, dict) else None
    if not isinstance(argv, list) or not argv or not all(isinstance(part, str) for part in argv):
        raise ConfigError("The standby worker's command has no argument list.",
                          'Send {"argv": ["translate", ...]}: the arguments of one medtranslate command.')
    if argv[0] == "standby":
        raise ConfigError("A standby worker cannot be sent another standby command.", "Send the command to run.")
    cwd = job.get("cwd")
    return argv, cwd if isinstance(cwd, str) and cwd else None


def preload_model(model: str) -> None:
    """Import what ``model``'s networks need (MONAI for diffusion and 3D models: seconds) by building them once from
    its card, without weights. A model that cannot be opened or built is left to the run, which reports it."""
    from MedTranslateLib.errors import MedTranslateError
    from MedTranslateLib.families import build_for_inference, get_family
    from MedTranslateLib.models.registry import ModelRegistry

    try:
        card = ModelRegistry().resolve(model).card
        build_for_inference(get_family(card.family), card.to_dict()["architecture"], card.spatial_dims)
    except (MedTranslateError, OSError, ValueError, TypeError, KeyError, IndexError):
        pass  # the run opens the model again and says what is wrong with it


def run_standby(args: argparse.Namespace) -> int:
    """Load the libraries (and what ``--model`` needs), say ready, wait for one command and run it; returns its
    exit code."""
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)
    if getattr(args, "model", None):
        preload_model(args.model)
    print(json.dumps({"event": "ready"}), flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    argv, cwd = parse_job(line)
    if cwd:
        os.chdir(cwd)
    from MedTranslateLib.cli.main import main

    return main(argv)
