"""Progress reporting (stages, fraction, time left) and cooperative cancellation.

Long work takes a :class:`ProgressTracker` and calls ``tracker.update(fraction)`` inside a stage and
``tracker.check()`` between batches; the tracker raises :class:`~MedTranslateLib.errors.Cancelled`
when its :class:`CancelToken` is set. Listeners receive :class:`ProgressEvent` objects; :func:`progress_display`
shows them (a rich bar, or JSON lines of the worker protocol).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from MedTranslateLib.errors import Cancelled


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report.

    ``fraction`` is the overall progress in [0, 1]; ``stage_fraction`` the progress of ``stage``;
    ``eta_seconds`` the estimated time left for the whole job (None until it can be estimated).
    """

    stage: str
    fraction: float
    stage_fraction: float
    eta_seconds: float | None
    elapsed_seconds: float
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]

#: share of a stage that must be done before its pace is trusted for the time left
MIN_STAGE_FRACTION = 0.02


def format_duration(seconds: float | None) -> str:
    """A time left for people: ``"45 s"``, ``"3 min 20 s"``, ``"1 h 10 min"``; ``""`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    total = int(round(seconds))
    if total < 60:
        return f"{total} s"
    if total < 600:
        return f"{total // 60} min {total % 60:02d} s"
    minutes = int(round(seconds / 60))
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class CancelToken:
    """A thread-safe flag that long work polls between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


class ProgressTracker:
    """Turns per-stage progress into overall progress with a time-left estimate.

    ``stages`` maps stage names to relative weights (expected share of the run time). The time left is
    extrapolated from the current stage's own pace (its seconds per unit of weight, applied to all the weight
    still to do), not from the whole run's: a quick data-loading stage would otherwise make a long training
    look almost finished. It is None until the current stage is :data:`MIN_STAGE_FRACTION` done.
    ``clock`` (seconds, monotonic) is injectable for tests.
    """

    def __init__(
        self,
        stages: Sequence[tuple[str, float]] = (("work", 1.0),),
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        min_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        total = sum(w for _, w in stages) or 1.0
        self._weights = {name: w / total for name, w in stages}
        self._offsets: dict[str, float] = {}
        acc = 0.0
        for name, _ in stages:
            self._offsets[name] = acc
            acc += self._weights[name]
        self.callback = callback
        self.cancel_token = cancel or CancelToken()
        self._clock = clock
        self._start = clock()
        self._stage_start = self._start
        self._stage = stages[0][0] if stages else "work"
        self._last_emit = 0.0
        self._min_interval = min_interval
        self.fraction = 0.0

    def stage(self, name: str, message: str = "") -> None:
        """Enter a stage (stages not declared up front get no weight)."""
        self.check()
        self._stage = name
        self._stage_start = self._clock()
        self.update(0.0, message, force=True)

    def update(self, stage_fraction: float, message: str = "", force: bool = False) -> None:
        """Report progress inside the current stage; also checks for cancellation."""
        self.check()
        stage_fraction = min(max(stage_fraction, 0.0), 1.0)
        weight = self._weights.get(self._stage, 0.0)
        fraction = self._offsets.get(self._stage, self.fraction) + weight * stage_fraction
        self._emit(fraction, self._stage, stage_fraction, message, force, weight)

    def report_at(self, fraction: float, stage: str, stage_fraction: float, message: str = "") -> None:
        """Report progress at an overall ``fraction`` directly (a part of the work run with its own tracker, such
        as one model of an ensemble); the time left is the run's average pace. Never goes backwards."""
        self.check()
        self._emit(max(fraction, 0.0), stage, stage_fraction, message, False, 0.0)

    def _emit(self, fraction: float, stage: str, stage_fraction: float, message: str, force: bool,
              weight: float) -> None:
        """Move the overall fraction forward (never back) and tell the callback, at most every ``min_interval``."""
        self.fraction = max(self.fraction, min(fraction, 1.0))
        now = self._clock()
        if not force and stage_fraction < 1.0 and now - self._last_emit < self._min_interval:
            return
        self._last_emit = now
        if self.callback is not None:
            eta = self._time_left(stage_fraction, weight, now)
            self.callback(ProgressEvent(stage, self.fraction, stage_fraction, eta, now - self._start, message))

    def _time_left(self, stage_fraction: float, weight: float, now: float) -> float | None:
        """Seconds left for the whole job at the current stage's pace (None while it cannot be told)."""
        if weight <= 0.0:  # a stage not declared up front: only the run's average pace is known
            if self.fraction < MIN_STAGE_FRACTION:
                return None
            return (now - self._start) * (1.0 - self.fraction) / self.fraction
        if stage_fraction < MIN_STAGE_FRACTION:
            return None
        seconds_per_weight = (now - self._stage_start) / (weight * stage_fraction)
        return seconds_per_weight * (1.0 - self.fraction)

    def done(self, message: str = "done") -> None:
        self.fraction = 1.0
        if self.callback is not None:
            elapsed = self._clock() - self._start
            self.callback(ProgressEvent(self._stage, 1.0, 1.0, 0.0, elapsed, message))

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        self.cancel_token.raise_if_cancelled()


# ------------------------------------------------------------------ displays (command line, worker protocol)

def emit_json(event: str, **fields: Any) -> None:
    """One line of the worker protocol on stdout."""
    print(json.dumps({"event": event, **fields}), flush=True)


def emit_warning(message: str, jsonl: bool, **fields: Any) -> None:
    """A warning: a ``warning`` event of the worker protocol (with ``fields``), else a line on standard error."""
    if jsonl:
        emit_json("warning", message=message, **fields)
    else:
        print(f"warning: {message}", file=sys.stderr)


def _jsonl_callback(event: ProgressEvent) -> None:
    emit_json("progress", stage=event.stage, fraction=round(event.fraction, 4),
              eta_seconds=None if event.eta_seconds is None else round(event.eta_seconds, 1),
              message=event.message)


def rich_console(**options: Any) -> Any:
    """A rich ``Console`` whose closed output raises :class:`BrokenPipeError`, so the command ends with its
    closed-output exit and message; rich's own handler exits 1 silently."""
    import errno

    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "the output was closed")

    return _Console(**options)


@contextlib.contextmanager
def progress_display(mode: str, description: str = "") -> Iterator[ProgressCallback | None]:
    """Yield a progress callback for ``mode`` (``rich``, ``jsonl`` or ``none``)."""
    if mode == "jsonl":
        yield _jsonl_callback
        return
    if mode == "none" or not sys.stderr.isatty() and mode != "rich":
        yield None
        return
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    console = rich_console(stderr=True)
    # the time left is the tracker's (the current stage's pace), the same figure the Slicer panel shows
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[left]}"), console=console,
                  transient=False) as bar:
        task = bar.add_task(description or "working", total=1.0, left="")

        def callback(event: ProgressEvent) -> None:
            label = f"{description} {event.stage}" if description else event.stage
            left = format_duration(event.eta_seconds)
            bar.update(task, completed=event.fraction, description=label, left=f"{left} left" if left else "")

        yield callback
