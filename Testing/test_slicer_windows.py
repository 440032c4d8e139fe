"""The Slicer module's Windows behaviour, checked on any system by faking ``os.name``, ``subprocess`` and
``ctypes``: no console windows, the models command's process tree killed on a timeout, UTF-8 worker output,
dead owners' run folders found, and run folders still locked for a moment removed after a retry. The same code
paths also run for real on this system where they are not Windows-only."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedTranslate"))

from conftest import process_alive  # noqa: E402
from MedTranslateModule import logic as logic_module  # noqa: E402
from MedTranslateModule import process  # noqa: E402
from MedTranslateModule.models import run_models_command  # noqa: E402
from MedTranslateModule.process import (CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, OWNER_FILE,  # noqa: E402
                                        WorkerProcess, popen_options, remove_folder, remove_stale_workdirs)

NO_WINDOW_NEW_GROUP = CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP


class FakePopen:
    """Records how a child was started; ``communicate`` answers from ``replies`` (an exception is raised)."""

    started: list[FakePopen] = []
    replies: list = []

    def __init__(self, command, **kwargs) -> None:
        self.command, self.kwargs, self.pid, self.returncode = command, kwargs, 4242, None
        self.stdout, self.stderr = io.StringIO(""), io.StringIO("")
        self.timeouts: list[float | None] = []
        FakePopen.started.append(self)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = 1
        return 1

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.timeouts.append(timeout)
        reply = FakePopen.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        self.returncode = 0
        return reply


@pytest.fixture
def fake_windows(monkeypatch):
    """``os.name`` is "nt" inside ``with fake_windows():``; children are FakePopen (answering ``"[]"`` unless
    ``FakePopen.replies`` says otherwise), ``subprocess.run`` calls are recorded in ``fake_windows.runs``."""
    FakePopen.started, FakePopen.replies = [], [("[]", "")]
    runs: list[tuple[list[str], dict]] = []

    def run(command, **kwargs):
        runs.append((command, kwargs))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(subprocess, "run", run)

    @contextlib.contextmanager
    def windows():
        with monkeypatch.context() as patch:
            patch.setattr(os, "name", "nt")  # only around the calls: pathlib would make WindowsPaths
            yield

    windows.runs = runs
    return windows


def test_popen_options_hide_the_console_on_windows_only(fake_windows):
    with fake_windows():
        windows = popen_options(), popen_options(own_group=True)
    assert windows == ({"creationflags": CREATE_NO_WINDOW}, {"creationflags": NO_WINDOW_NEW_GROUP})
    assert (CREATE_NO_WINDOW, CREATE_NEW_PROCESS_GROUP) == (0x08000000, 0x00000200)  # the documented values
    assert popen_options() == {} and popen_options(own_group=True) == {"start_new_session": True}


def test_no_console_window_for_the_worker_its_cancel_or_a_models_command(fake_windows):
    """Slicer is a GUI program: every console child (PythonSlicer, taskkill) opened a console window."""
    worker = WorkerProcess(["PythonSlicer", "-m", "MedTranslateLib", "translate"])
    with fake_windows():
        worker.start()
        worker.cancel()
        assert run_models_command(["PythonSlicer", "-m", "MedTranslateLib"], ["list", "--json"]) == "[]"
    started, models = FakePopen.started
    assert started.kwargs["creationflags"] == NO_WINDOW_NEW_GROUP and "start_new_session" not in started.kwargs
    assert fake_windows.runs == [(["taskkill", "/T", "/F", "/PID", "4242"],
                                  {"capture_output": True, "check": False, "creationflags": CREATE_NO_WINDOW})]
    assert models.command[-3:] == ["models", "list", "--json"]
    assert models.kwargs["creationflags"] == NO_WINDOW_NEW_GROUP
    assert (models.kwargs["encoding"], models.kwargs["errors"]) == ("utf-8", "replace")  # not Windows' cp1252


@pytest.mark.parametrize("answers_when_killed", [True, False])
def test_models_command_timeout_kills_the_tree_and_never_blocks_on_windows(fake_windows, answers_when_killed):
    """subprocess.run killed only the PythonSlicer launcher, then waited for its output without a limit."""
    FakePopen.replies = [subprocess.TimeoutExpired("PythonSlicer", 7),
                         ("", "") if answers_when_killed else subprocess.TimeoutExpired("PythonSlicer", 5)]
    with fake_windows(), pytest.raises(RuntimeError, match="did not answer within 7 s"):
        run_models_command(["PythonSlicer"], ["list"], timeout=7)
    assert FakePopen.started[0].timeouts == [7, 5]
    assert [command for command, _ in fake_windows.runs] == [["taskkill", "/T", "/F", "/PID", "4242"]]


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_models_command_timeout_kills_the_launchers_children_too(tmp_path):
    """``PythonSlicer`` is a launcher: killing only it left the real Python running."""
    pid_file = tmp_path / "child.pid"
    launcher = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
                "'import time; time.sleep(60)']); open(sys.argv[1], 'w').write(str(child.pid)); time.sleep(60)")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="did not answer within 2 s"):
        run_models_command([sys.executable, "-c", launcher, str(pid_file)], [], timeout=2)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while process_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not process_alive(child), "the launcher's child kept running"
        assert time.monotonic() - started < 10
    finally:
        if process_alive(child):
            os.kill(child, signal.SIGKILL)


def test_models_command_reads_utf8_and_survives_undecodable_bytes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import sys\nsys.stdout.buffer.write('Jos\\u00e9 \\u2192 ok\\n'.encode() + b'\\xff\\n')\n",
                      encoding="utf-8")
    assert run_models_command([sys.executable, str(script)], []) == "Jos\u00e9 \u2192 ok\n\ufffd\n"


def test_worker_writes_utf8_whatever_the_users_settings(tmp_path):
    """The module reads the worker as UTF-8; on Windows the worker wrote the ANSI code page (here: latin-1,
    which cannot even encode the arrow, so the worker failed)."""
    env = logic_module.worker_environment("auto", base={"PYTHONIOENCODING": "latin-1"})
    assert env["PYTHONIOENCODING"] == "utf-8" and env["PYTHONUTF8"] == "1"
    assert logic_module.worker_environment("auto", base={"PYTHONUTF8": "0"})["PYTHONUTF8"] == "0"
    script = tmp_path / "worker.py"
    script.write_text("print('C:\\\\Users\\\\Jos\\u00e9 \\u2192 models')\n", encoding="utf-8")
    assert run_models_command([sys.executable, str(script)], [], env=env) == "C:\\Users\\Jos\u00e9 \u2192 models\n"


class FakeFunction:
    """A kernel32 function: ``argtypes`` / ``restype`` can be set, calls go to ``body``."""

    def __init__(self, body) -> None:
        self.body, self.argtypes, self.restype = body, None, None

    def __call__(self, *args):
        return self.body(*args)


class FakeKernel32:
    """Processes by pid: ("none", last error) when OpenProcess fails, ("exit", code) or ("no exit code", 0)."""

    def __init__(self, processes: dict[int, tuple[str, int]]) -> None:
        self.processes, self.last_error, self.open_handles = processes, 0, set()
        self.OpenProcess = FakeFunction(self._open)
        self.GetExitCodeProcess = FakeFunction(self._exit_code)
        self.CloseHandle = FakeFunction(self.open_handles.remove)

    def _open(self, access: int, inherit: bool, pid: int):
        assert access == 0x1000 and inherit is False  # PROCESS_QUERY_LIMITED_INFORMATION
        kind, value = self.processes[pid]
        if kind == "none":
            self.last_error = value
            return None
        self.open_handles.add(pid)
        return pid

    def _exit_code(self, handle: int, code) -> int:
        kind, value = self.processes[handle]
        if kind == "no exit code":
            return 0
        code._obj.value = value
        return 1


def test_dead_owners_are_found_on_windows(fake_windows, monkeypatch, tmp_path):
    """On Windows every owner counted as alive, so no run folder (a copy of patient data) was ever removed."""
    kernel32 = FakeKernel32({100: ("none", 87), 101: ("none", 5), 102: ("exit", 259), 103: ("exit", 0),
                             104: ("no exit code", 0), 105: ("exit", 1)})
    loaded = []
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error=False: loaded.append(
        (name, use_last_error)) or kernel32, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: kernel32.last_error, raising=False)
    host = process._host()
    for pid in kernel32.processes:
        (tmp_path / f"MedTranslate-{pid}").mkdir()
        (tmp_path / f"MedTranslate-{pid}" / OWNER_FILE).write_text(f"{pid} {host}")
    with fake_windows():
        alive = {pid: process._alive(pid) for pid in kernel32.processes}
        removed = remove_stale_workdirs(str(tmp_path))
    # no such process (87) or exited: gone; access denied (5), still active (259) or no answer: kept
    assert alive == {100: False, 101: True, 102: True, 103: False, 104: True, 105: False}
    assert sorted(removed) == [str(tmp_path / f"MedTranslate-{pid}") for pid in (100, 103, 105)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MedTranslate-101", "MedTranslate-102",
                                                          "MedTranslate-104"]
    assert not kernel32.open_handles and set(loaded) == {("kernel32", True)}
    assert kernel32.OpenProcess.restype is ctypes.c_void_p
    assert kernel32.OpenProcess.argtypes == (ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32)
    assert kernel32.GetExitCodeProcess.restype is ctypes.c_int and kernel32.CloseHandle.restype is ctypes.c_int


def test_windows_check_that_fails_keeps_the_folder(fake_windows, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("no kernel32")

    monkeypatch.setattr(ctypes, "WinDLL", broken, raising=False)
    with fake_windows():
        assert process._alive(123456)
    monkeypatch.delattr(ctypes, "WinDLL", raising=False)  # as on this system: the check itself is missing
    with fake_windows():
        assert process._alive(123456)


def _locked_for(monkeypatch, calls: int) -> list[str]:
    """``shutil.rmtree`` leaves the folder in place for its first ``calls`` calls, as open files on Windows do."""
    real, seen = shutil.rmtree, []

    def rmtree(path, ignore_errors=False, **kwargs):
        seen.append(path)
        if len(seen) > calls:
            real(path, ignore_errors=ignore_errors, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    return seen


def test_a_run_folder_still_locked_after_cancel_is_removed_by_a_retry(monkeypatch, tmp_path):
    folder = tmp_path / "MedTranslate-run"
    folder.mkdir()
    (folder / "input.nrrd").write_text("patient")
    seen = _locked_for(monkeypatch, 3)
    logic = logic_module.TranslationLogic(scene=object(), worker_command=["worker"], python_executable="python")
    logic._workdir = str(folder)
    logic._cleanup()
    assert not folder.exists() and len(seen) == 4 and logic.workdir is None


def test_a_folder_that_stays_locked_is_given_up_on_and_reported(monkeypatch, tmp_path, caplog):
    folder = tmp_path / "MedTranslate-run"
    folder.mkdir()
    seen = _locked_for(monkeypatch, 100)
    started = time.monotonic()
    assert not remove_folder(str(folder), tries=10, pause=0.01) and folder.exists()
    assert len(seen) == 11 and time.monotonic() - started < 1
    monkeypatch.setattr(logic_module, "remove_folder", lambda path: False)
    logic = logic_module.TranslationLogic(scene=object(), worker_command=["worker"], python_executable="python")
    logic._workdir = str(folder)
    with caplog.at_level(logging.WARNING):
        logic._cleanup()
    assert f"could not remove the temporary folder {folder}" in caplog.text and logic.workdir is None
