"""The backend worker as a separate process: start, read JSON-lines progress, cancel the process tree.

Pure Python (no Slicer, no Qt): a reader thread puts parsed lines in a queue and the caller drains it
with :meth:`WorkerProcess.poll` from its own thread (Slicer: a QTimer on the main thread), so scene
changes only ever happen on the caller's thread.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

#: How many trailing stderr / non-JSON lines are kept to explain a crash.
LOG_TAIL_LINES = 40
OOM_MARKERS = ("out of memory", "outofmemoryerror", "cuda error: out of memory", "memoryerror")
#: Windows process creation flags (the ``subprocess`` constants exist only there)
CREATE_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)
CREATE_NEW_PROCESS_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)
#: Windows API values to ask whether a process runs (:func:`_alive_windows`)
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
ERROR_INVALID_PARAMETER = 87
STILL_ACTIVE = 259


@dataclass
class WorkerEvent:
    """One message from the worker: ``progress``, ``warning``, ``done``, ``error`` or ``log`` (plain text)."""

    kind: str
    stage: str = ""
    fraction: float | None = None
    eta_seconds: float | None = None
    message: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


def parse_worker_line(line: str) -> WorkerEvent | None:
    """Parse one stdout line of the worker protocol; text that is not a protocol object becomes ``log``."""
    text = line.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return WorkerEvent("log", message=text)
    if not isinstance(data, dict) or "event" not in data:
        return WorkerEvent("log", message=text)
    kind = str(data["event"])
    fraction = data.get("fraction")
    eta = data.get("eta_seconds")
    return WorkerEvent(
        kind=kind,
        stage=str(data.get("stage") or ""),
        fraction=min(max(float(fraction), 0.0), 1.0) if _finite(fraction) else None,
        eta_seconds=float(eta) if _finite(eta) and eta >= 0 else None,
        message=str(data.get("message") or ""),
        payload=data,
    )


def _finite(value: object) -> bool:
    """A real number (JSON lets NaN and Infinity through; they would break the percent and time left shown)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def looks_like_out_of_memory(text: str) -> bool:
    """True when worker output reports running out of (GPU or CPU) memory."""
    lowered = text.lower()
    return any(marker in lowered for marker in OOM_MARKERS)


def popen_options(own_group: bool = False) -> dict[str, Any]:
    """``subprocess`` keyword arguments for a child of Slicer: on Windows no console window (Slicer is a GUI
    program, the worker and ``taskkill`` console ones); with ``own_group`` a new process group / session, so
    :func:`kill_process_tree` reaches all its children."""
    if os.name == "nt":
        return {"creationflags": CREATE_NO_WINDOW | (CREATE_NEW_PROCESS_GROUP if own_group else 0)}
    return {"start_new_session": True} if own_group else {}


def kill_process_tree(process: subprocess.Popen, grace_seconds: float = 0.0) -> None:
    """Kill a process started with ``popen_options(own_group=True)`` and all its children: on Windows
    ``taskkill /T /F``; elsewhere SIGTERM to its group, then SIGKILL after ``grace_seconds`` (at once when 0)."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False,
                       **popen_options())
        return
    if grace_seconds > 0:
        _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class WorkerProcess:
    """A worker command in its own process group, with line-wise stdout parsing on a thread."""

    def __init__(self, command: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 takes_job: bool = False) -> None:
        self.command = [str(part) for part in command]
        self.env = env
        self.cwd = cwd
        self.takes_job = takes_job  # a standby worker: its command comes later on standard input (:meth:`send_job`)
        self._process: subprocess.Popen | None = None
        self._events: queue.Queue[WorkerEvent] = queue.Queue()
        self._stderr_tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._threads: list[threading.Thread] = []
        self.cancelled = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Start the process (new session / process group, so cancel can kill all its children)."""
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if self.takes_job else subprocess.DEVNULL,
            env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
            **popen_options(own_group=True))
        self._threads = [
            threading.Thread(target=self._read_stdout, name="medtranslate-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="medtranslate-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def send_job(self, argv: Sequence[str], cwd: str | None = None) -> bool:
        """Give a standby worker (``medtranslate standby``) the command to run; False when it cannot take it
        (it has exited, or was given one already)."""
        stdin = self._process.stdin if self._process is not None else None
        if not self.takes_job or stdin is None or stdin.closed or self._process.poll() is not None:
            return False
        try:
            stdin.write(json.dumps({"argv": [str(part) for part in argv], "cwd": cwd}) + "\n")
            stdin.close()
        except OSError:  # it died meanwhile (a broken pipe)
            return False
        launcher = self.command[:self.command.index("standby")] if "standby" in self.command else self.command[:-1]
        self.command, self.cwd = [*launcher, *map(str, argv)], cwd  # what it runs now (``standby`` and its options go)
        return True

    def release(self) -> None:
        """Let a standby worker that got no command go: its standard input closes and it exits by itself."""
        stdin = self._process.stdin if self._process is not None else None
        if stdin is not None and not stdin.closed:
            try:
                stdin.close()
            except OSError:
                pass

    def _read_stdout(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            event = parse_worker_line(line)
            if event is not None:
                if event.kind == "log":
                    self._stderr_tail.append(event.message)
                self._events.put(event)

    def _read_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            if line.strip():
                self._stderr_tail.append(line.rstrip())

    def poll(self) -> list[WorkerEvent]:
        """Events received since the last call (never blocks)."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def finished(self) -> bool:
        """True when the process has exited and all its output was read.

        A worker that died (e.g. killed by the system) can leave children holding its output pipes open;
        they are killed here, so the run ends at once and no orphan keeps running.
        """
        if self._process is None or self._process.poll() is None:
            return False
        if any(thread.is_alive() for thread in self._threads) and os.name != "nt":
            # the group outlives its leader only through leftover children
            _signal_group(self._process.pid, signal.SIGKILL)
            for thread in self._threads:
                thread.join(timeout=0.5)
        return not any(thread.is_alive() for thread in self._threads)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit and the end of its output; returns the exit code."""
        assert self._process is not None
        code = self._process.wait(timeout)
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    def log_tail(self) -> str:
        """The last stderr / non-protocol lines, to explain a failure."""
        return "\n".join(self._stderr_tail)

    def cancel(self, grace_seconds: float = 3.0) -> None:
        """Kill the whole process tree: terminate politely, then kill after ``grace_seconds``."""
        self.cancelled = True
        if self._process is None or self._process.poll() is not None:
            return
        kill_process_tree(self._process, grace_seconds)
        try:
            self.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
            pass


def nvidia_driver_present() -> bool:
    """True when an NVIDIA driver tool (``nvidia-smi``) is on the PATH: a CUDA GPU is likely usable."""
    return shutil.which("nvidia-smi") is not None


def worker_environment(device: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the worker: unbuffered UTF-8 output, the backend importable, no GPU for a CPU run.

    Slicer adds extension folders to its own ``sys.path`` at run time only, so the folder holding
    ``MedTranslateLib`` is put on the child's ``PYTHONPATH``.
    """
    import importlib.util

    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"  # the module reads it as UTF-8 (Windows would write the ANSI code page)
    env.setdefault("PYTHONUTF8", "1")  # UTF-8 files by default too, unless the user chose otherwise
    spec = importlib.util.find_spec("MedTranslateLib")
    if spec is not None and spec.origin:
        root = os.path.dirname(os.path.dirname(os.path.abspath(spec.origin)))
        parts = [part for part in env.get("PYTHONPATH", "").split(os.pathsep) if part]
        env["PYTHONPATH"] = os.pathsep.join([root] + [part for part in parts if part != root])
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"  # "Force CPU": the child cannot see any GPU
    return env


def default_python() -> str:
    """``PythonSlicer`` inside Slicer (it has Slicer's packages), else this interpreter."""
    if "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


#: the temporary folders of runs (the input volume, written for the worker, is patient data)
WORKDIR_PREFIX = "MedTranslate-"
OWNER_FILE = "owner.pid"


def make_workdir() -> str:
    """A private temporary folder for one run, marked with this process's id (see :func:`remove_stale_workdirs`)."""
    import tempfile

    folder = tempfile.mkdtemp(prefix=WORKDIR_PREFIX)
    with open(os.path.join(folder, OWNER_FILE), "w", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()} {_host()}")
    return folder


def _host() -> str:
    import socket

    return socket.gethostname()


def remove_folder(folder: str, tries: int = 10, pause: float = 0.2) -> bool:
    """Remove a run folder, retrying ``tries`` times ``pause`` s apart while it stays (on Windows a just-killed
    worker's files can be open for a moment, and open files cannot be deleted there); True when it is gone."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    for _ in range(tries):
        if not os.path.exists(folder):
            return True
        time.sleep(pause)
        shutil.rmtree(folder, ignore_errors=True)
    return not os.path.exists(folder)


def _alive(pid: int) -> bool:
    """False only when process ``pid`` surely no longer runs (in doubt its folder is kept)."""
    if os.name == "nt":  # os.kill(pid, 0) sends a Ctrl+C there
        try:
            return _alive_windows(pid)
        except Exception:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or no way to tell: keep the folder
    return True


def _alive_windows(pid: int) -> bool:
    """``OpenProcess`` then ``GetExitCodeProcess``: no such process (ERROR_INVALID_PARAMETER) or an exit code
    other than STILL_ACTIVE means gone; any other failure (e.g. access denied) means alive."""
    import ctypes

    handle_type, dword, boolean = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.argtypes = (dword, boolean, dword)
    kernel32.OpenProcess.restype = handle_type
    kernel32.GetExitCodeProcess.argtypes = (handle_type, ctypes.POINTER(dword))
    kernel32.GetExitCodeProcess.restype = boolean
    kernel32.CloseHandle.argtypes = (handle_type,)
    kernel32.CloseHandle.restype = boolean
    handle = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return ctypes.get_last_error() != ERROR_INVALID_PARAMETER
    try:
        code = dword()
        return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def remove_stale_workdirs(root: str | None = None) -> list[str]:
    """Remove run folders whose Slicer, on this host, is gone (killed or crashed mid-run, it could not clean up);
    returns them. A folder whose owner may still run (or cannot be checked) is kept."""
    import shutil
    import tempfile

    root = root or tempfile.gettempdir()
    removed = []
    try:
        names = [name for name in os.listdir(root) if name.startswith(WORKDIR_PREFIX)]
    except OSError:
        return removed
    for name in names:
        folder = os.path.join(root, name)
        try:
            with open(os.path.join(folder, OWNER_FILE), encoding="utf-8") as handle:
                pid, host = handle.read().split()
            owner = int(pid)
        except (OSError, ValueError):
            continue  # not ours to judge
        if host == _host() and owner != os.getpid() and not _alive(owner):  # a shared /tmp: only this host's
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
