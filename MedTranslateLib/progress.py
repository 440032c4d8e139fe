"""Progress reporting (stages, fraction, time left) and cooperative cancellation.

Long work takes a :class:`ProgressTracker` and calls ``tracker.update(fraction)`` inside a stage and
``tracker.check()`` between batches; the tracker raises :class:`~MedTranslateLib.errors.Cancelled`
when its :class:`CancelToken` is set. Listeners receive :class:`ProgressEvent` objects.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

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

    ``stages`` maps stage names to relative weights (expected share of the run time).
    """

    def __init__(
        self,
        stages: Sequence[tuple[str, float]] = (("work", 1.0),),
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        min_interval: float = 0.1,
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
        self._start = time.monotonic()
        self._stage = stages[0][0] if stages else "work"
        self._last_emit = 0.0
        self._min_interval = min_interval
        self.fraction = 0.0

    @property
    def stage_name(self) -> str:
        return self._stage

    def stage(self, name: str, message: str = "") -> None:
        """Enter a stage (stages not declared up front get no weight)."""
        self.check()
        self._stage = name
        self.update(0.0, message, force=True)

    def update(self, stage_fraction: float, message: str = "", force: bool = False) -> None:
        """Report progress inside the current stage; also checks for cancellation."""
        self.check()
        stage_fraction = min(max(stage_fraction, 0.0), 1.0)
        weight = self._weights.get(self._stage, 0.0)
        fraction = self._offsets.get(self._stage, self.fraction) + weight * stage_fraction
        self.fraction = max(self.fraction, min(fraction, 1.0))
        now = time.monotonic()
        if not force and stage_fraction < 1.0 and now - self._last_emit < self._min_interval:
            return
        self._last_emit = now
        elapsed = now - self._start
        eta = elapsed * (1.0 - self.fraction) / self.fraction if self.fraction > 0.02 else None
        if self.callback is not None:
            self.callback(ProgressEvent(self._stage, self.fraction, stage_fraction, eta, elapsed, message))

    def done(self, message: str = "done") -> None:
        self.fraction = 1.0
        if self.callback is not None:
            elapsed = time.monotonic() - self._start
            self.callback(ProgressEvent(self._stage, 1.0, 1.0, 0.0, elapsed, message))

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        self.cancel_token.raise_if_cancelled()
