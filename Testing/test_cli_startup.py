"""``medtranslate --help`` stays fast: building the parser imports no heavy library."""

import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("family", ["unet", "pix2pix", "cyclegan"])
def test_translating_with_a_2d_generator_does_not_import_monai(tmp_path, family):
    """The U-Net generator is torch only: MONAI's import (seconds; 12 s on the H200 image, whose MONAI imports
    every optional package it finds) is paid by diffusion and 3D models only. GAN packages build their generator
    alone for inference, not the discriminators (MONAI's)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from packages import make_untrained_package

    from MedTranslateLib.phantom import make_head_phantom

    package = make_untrained_package(tmp_path / "pkg", family, "2d")
    import SimpleITK as sitk

    sitk.WriteImage(make_head_phantom(seed=3).t1, str(tmp_path / "t1.nii.gz"))
    code = ("import sys; from MedTranslateLib.cli.main import main\n"
            f"code = main(['translate', {str(tmp_path / 't1.nii.gz')!r}, '-m', {str(package)!r}, "
            f"'-o', {str(tmp_path / 'out.nii.gz')!r}, '--device', 'cpu'])\n"
            "print(code, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split()[-2:] == ["0", "False"], out.stdout + out.stderr
    assert (tmp_path / "out.nii.gz").is_file()
