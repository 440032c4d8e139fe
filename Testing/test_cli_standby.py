"""``medtranslate standby``: loads the libraries, says ready, runs the one command it is sent, or ends quietly
when its input closes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from MedTranslateLib.cli.standby import parse_job
from MedTranslateLib.errors import ConfigError


def _standby(stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MedTranslateLib", "standby"], input=stdin, capture_output=True,
                          text=True, timeout=300, check=False)


def test_the_job_line_gives_the_arguments_and_the_folder():
    assert parse_job('{"argv": ["translate", "in.nrrd"], "cwd": "/tmp/run"}') == (["translate", "in.nrrd"], "/tmp/run")
    assert parse_job('{"argv": ["models", "list"]}') == (["models", "list"], None)
    for line, words in (("translate in.nrrd", "not JSON"), ('{"argv": []}', "no argument list"),
                        ('{"argv": ["models", 3]}', "no argument list"), ('["translate"]', "no argument list"),
                        ('{"argv": ["standby"]}', "cannot be sent another standby")):
        with pytest.raises(ConfigError, match=words):
            parse_job(line)


def test_a_standby_worker_runs_the_command_it_is_sent_in_its_folder(tmp_path):
    """Relative paths of the command are the folder's: the Slicer module sends the run folder."""
    import SimpleITK as sitk

    from conftest import make_image

    image = make_image((12, 10, 8))
    sitk.WriteImage(image, str(tmp_path / "ref.nrrd"))
    sitk.WriteImage(image + 5.0, str(tmp_path / "pred.nrrd"))
    job = {"argv": ["evaluate", "--pred", "pred.nrrd", "--ref", "ref.nrrd", "--modality", "CT"], "cwd": str(tmp_path)}
    done = _standby(json.dumps(job) + "\n")
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and json.loads(lines[0]) == {"event": "ready"}, done.stderr
    assert any(line.strip("│ ").split() == ["mae", "│", "5"] for line in lines[1:]), done.stdout


def test_a_standby_worker_whose_input_closes_ends_quietly_and_a_bad_job_is_refused():
    closed = _standby("")
    assert (closed.returncode, closed.stdout.strip(), closed.stderr) == (0, '{"event": "ready"}', "")
    bad = _standby('{"argv": ["standby"]}\n')
    assert bad.returncode == ConfigError.exit_code and "cannot be sent another standby" in bad.stderr


@pytest.mark.parametrize("family, imports_monai", [("diffusion", True), ("unet", False)])
def test_a_standby_worker_for_a_model_imports_what_its_family_needs(tmp_path, family, imports_monai):
    """``standby --model M`` also imports what M's networks need before it says ready (MONAI for diffusion and 3D
    models: 1.5 s here, seconds more where MONAI finds many optional packages), and nothing more for a U-Net."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from packages import make_untrained_package

    package = make_untrained_package(tmp_path / "pkg", family, "2d")
    code = ("import sys\nfrom MedTranslateLib.cli.standby import preload_model\n"
            f"preload_model({str(package)!r})\nprint('monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split()[-1] == str(imports_monai), out.stdout + out.stderr


def test_a_standby_worker_for_a_model_it_cannot_open_still_gets_ready(tmp_path):
    """What is wrong with the model is the run's to report, with its own message: the standby says ready."""
    proc = subprocess.run([sys.executable, "-m", "MedTranslateLib", "standby", "--model", str(tmp_path / "none")],
                          input="", capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and json.loads(proc.stdout.splitlines()[0]) == {"event": "ready"}, proc.stderr
