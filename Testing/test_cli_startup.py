"""``medtranslate --help`` stays fast: building the parser imports no heavy library."""

import subprocess
import sys

HEAVY = ("torch", "monai", "SimpleITK", "matplotlib", "scipy", "sklearn", "slicer")


def test_parser_imports_no_heavy_library():
    code = ("import sys; from MedTranslateLib.cli.main import build_parser; build_parser(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"heavy modules imported at start-up: {out.stdout}"


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "MedTranslateLib", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for command in ("translate", "models", "demo", "train", "evaluate", "bench"):
        assert command in out.stdout
