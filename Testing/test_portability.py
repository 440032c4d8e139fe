"""Windows and macOS: text files are read and written as UTF-8 everywhere (Windows defaults to cp1252), and
ITK is only ever given ASCII paths where Windows would lose a path's characters."""

from __future__ import annotations

import ast
import errno
import io
import os
import sys
from pathlib import Path

import pytest

from conftest import make_image
from MedTranslateLib.errors import InputError, OutputError
from MedTranslateLib.io import itk_paths, read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]
#: modules whose ``open`` is not the built-in text ``open`` (binary files, zip members, OS handles)
_OTHER_OPENS = {"os", "gzip", "archive", "zipfile", "tarfile"}


def _mode(call: ast.Call) -> str:
    for keyword in call.keywords:
        if keyword.arg == "mode" and isinstance(keyword.value, ast.Constant):
            return str(keyword.value.value)
    first_mode = call.args[1:2] if isinstance(call.func, ast.Name) else call.args[0:1]  # open(path, mode); p.open(mode)
    if first_mode and isinstance(first_mode[0], ast.Constant) and isinstance(first_mode[0].value, str):
        return first_mode[0].value
    return "r"


def _text_io_without_encoding(tree: ast.AST) -> list[ast.Call]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        other_module = isinstance(func, ast.Attribute) and getattr(func.value, "id", None) in _OTHER_OPENS
        text_pipes = any(k.arg in ("text", "universal_newlines") for k in node.keywords)
        if (name in ("read_text", "write_text") or (name == "open" and not other_module and "b" not in _mode(node))
                or (name in ("run", "Popen", "check_output") and text_pipes)):
            found.append(node)
    return found


def test_every_text_file_and_pipe_names_its_encoding():
    missing = []
    for folder in ("MedTranslateLib", "MedTranslate"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            missing += [f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)[:90]}"
                        for call in _text_io_without_encoding(tree)]
    assert not missing, "text I/O without encoding= (Windows would use cp1252):\n" + "\n".join(missing)


def test_the_check_sees_what_it_should():
    source = ('open(p); open(p, "rb"); p.open("a", newline=""); p.open("rb"); os.open(p, 1); gzip.open(p)\n'
              'p.read_text(); p.write_text(t, encoding="utf-8"); subprocess.run(c, text=True)\n')
    flagged = [ast.unparse(c) for c in _text_io_without_encoding(ast.parse(source))]
    assert flagged == ["open(p)", "p.open('a', newline='')", "p.read_text()", "subprocess.run(c, text=True)"]


@pytest.fixture
def windows_code_page(monkeypatch, tmp_path):
    """Act as a Windows whose ANSI code page is not UTF-8; ``short`` maps folders to ASCII 8.3 names (made real
    here with symbolic links, so ITK can open them)."""
    short: dict[str, str] = {}
    monkeypatch.setattr(itk_paths, "narrow_paths_lose_characters", lambda: True)
    monkeypatch.setattr(itk_paths, "short_path", lambda path: next(  # a folder's short name spells what is inside
        (ascii + path[len(long):] for long, ascii in short.items() if path == long or path.startswith(long + os.sep)),
        None))
    given: list[str] = []
    real = itk_paths.itk_path

    def recording(path, *args):
        given.append(real(path, *args))
        return given[-1]

    monkeypatch.setattr("MedTranslateLib.io.volumes.itk_path", recording)
    return short, given


def test_paths_go_to_itk_unchanged_elsewhere(tmp_path):
    assert itk_paths.itk_path(tmp_path / "José" / "a.nii.gz") == str(tmp_path / "José" / "a.nii.gz")


def test_a_user_folder_with_accents_is_read_and_written_through_short_names(windows_code_page, tmp_path):
    short, given = windows_code_page
    folder = tmp_path / "José"
    folder.mkdir()
    (tmp_path / "JOSE~1").symlink_to(folder)
    short[str(folder)] = str(tmp_path / "JOSE~1")
    image = make_image()
    written = write_volume(image, folder / "in.nii.gz", modality="MR")
    assert written == folder / "in.nii.gz" and written.is_file()
    read, _ = read_volume(folder / "in.nii.gz")
    assert read.GetSize() == image.GetSize()
    assert given and all(path.isascii() for path in given)


def test_the_working_folder_gives_an_ascii_path_otherwise(windows_code_page, tmp_path, monkeypatch):
    """The Slicer worker runs in its run folder: its files are opened by their names there."""
    _, given = windows_code_page
    folder = tmp_path / "Łódź"
    folder.mkdir()
    monkeypatch.chdir(folder)
    write_volume(make_image(), folder / "input.nrrd", modality="MR")
    read_volume(folder / "input.nrrd")
    assert given and all(path.isascii() and not os.path.isabs(path) for path in given)


def test_no_ascii_spelling_is_one_clear_error(windows_code_page, tmp_path):
    folder = tmp_path / "José"
    folder.mkdir()
    with pytest.raises(OutputError, match="characters outside ASCII.*UTF-8"):
        write_volume(make_image(), folder / "in.nii.gz", modality="MR")
    assert not list(folder.iterdir())  # nothing half-written
    (folder / "in.nii.gz").write_bytes(b"\0" * 400)
    with pytest.raises(InputError, match="Use a folder and file name with only ASCII letters"):
        read_volume(folder / "in.nii.gz")


def test_a_console_that_cannot_encode_a_name_gets_a_replacement_not_a_crash(tmp_path, monkeypatch):
    import io
    import sys

    from MedTranslateLib.cli.main import main

    stderr = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")  # a redirected stream on Windows
    monkeypatch.setattr(sys, "stderr", stderr)
    missing = tmp_path / "Łódź.nii.gz"
    assert main(["translate", str(missing), "-m", "mr2ct-headphantom-unet2d", "-o", str(tmp_path / "o.nii.gz"),
                 "--progress", "none"]) == 3
    stderr.flush()
    assert "?ód?.nii.gz" in stderr.buffer.getvalue().decode("cp1252")


def test_an_output_held_for_a_moment_by_another_program_is_still_put_in_place(tmp_path, monkeypatch):
    """Windows: a virus scanner or sync client briefly holding a new file makes ``os.replace`` fail."""
    from MedTranslateLib.io import atomic

    monkeypatch.setattr(atomic, "RETRY_HELD_FILES", True)
    real_replace, calls = os.replace, []

    def held_twice(source, target):
        calls.append(source)
        if len(calls) <= 2:
            raise PermissionError(13, "The process cannot access the file because it is being used")
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", held_twice)
    atomic.atomic_write_text(tmp_path / "report.json", "{}")
    assert (tmp_path / "report.json").read_text(encoding="utf-8") == "{}" and len(calls) == 3
    monkeypatch.setattr(atomic, "RETRY_HELD_FILES", False)  # elsewhere a refusal is final
    calls.clear()
    with pytest.raises(OutputError):
        atomic.atomic_write_text(tmp_path / "other.json", "{}")
    assert len(calls) == 1 and not (tmp_path / "other.json").exists()


def test_every_path_handed_to_simpleitk_goes_through_itk_path():
    """``sitk.ReadImage(str(path))`` would fail for C:\\Users\\José on Windows: paths go through ``itk_path``."""
    path_argument = {"ReadImage": 0, "WriteImage": 1, "SetFileName": 0, "GetGDCMSeriesIDs": 0}
    raw = []
    for path in sorted((REPO / "MedTranslateLib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in path_argument and len(node.args) > path_argument[node.func.attr]:
                argument = node.args[path_argument[node.func.attr]]
                if isinstance(argument, ast.Call) and ast.unparse(argument.func) in ("str", "os.path.join", "os.fspath"):
                    raw.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:90]}")
    assert not raw, "paths given to SimpleITK without itk_path:\n" + "\n".join(raw)


class _ClosedWindowsPipe(io.StringIO):
    """Standard output on Windows after the reader went away: writes fail with EINVAL (CPython issue 79935)."""

    def write(self, text: str) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


def test_a_closed_windows_pipe_ends_like_a_closed_pipe_not_in_a_traceback(monkeypatch):
    from MedTranslateLib.cli import main as cli

    closed = _ClosedWindowsPipe()
    monkeypatch.setattr(sys, "stdout", closed)
    with monkeypatch.context() as windows:
        windows.setattr(os, "name", "nt")
        cli._wrap_standard_streams()
    assert isinstance(sys.stdout, cli._ClosedPipeIsBroken)
    assert cli.main(["models", "list"]) == cli.OUTPUT_CLOSED
    assert sys.stdout is closed  # main gives the streams back as it found them


def test_other_stream_errors_are_not_taken_for_a_closed_pipe():
    from MedTranslateLib.cli.main import _ClosedPipeIsBroken

    class Full(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    stream = _ClosedPipeIsBroken(Full())
    with pytest.raises(OSError) as raised:
        print("x", file=stream)
    assert raised.value.errno == errno.ENOSPC and not isinstance(raised.value, BrokenPipeError)
    assert stream.getvalue() == ""  # everything else reaches the stream itself
