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


class WorkerProcess:
    """A worker command in its own process group, with line-wise stdout parsing on a thread."""

    def __init__(self, command: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.command = [str(part) for part in command]
        self.env = env
        self.cwd = cwd
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
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        self._threads = [
            threading.Thread(target=self._read_stdout, name="medtranslate-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="medtranslate-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

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
            self._signal_group(signal.SIGKILL)  # the group outlives its leader only through leftover children
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
        if os.name == "nt":  # pragma: no cover - Windows only
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(self._process.pid)], capture_output=True, check=False)
        else:
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + grace_seconds
            while self._process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            self._signal_group(signal.SIGKILL)
        try:
            self.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
            pass

    def _signal_group(self, sig: int) -> None:
        assert self._process is not None
        try:
            os.killpg(self._process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def default_python() -> str:
    """``PythonSlicer`` inside Slicer (it has Slicer's packages), else this interpreter."""
    import shutil

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


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) sends a Ctrl+C there: no safe check, keep the folder
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or no way to tell: keep the folder
    return True


def remove_stale_workdirs(root: str | None = None) -> list[str]:
    """Remove run folders whose Slicer, on this host, is gone (killed or crashed mid-run, it could not clean up);
    returns them. On Windows nothing is removed (no safe way to ask whether a process lives)."""
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
