"""Stop signals (Ctrl-C, SIGTERM, a closed terminal) held back during work that must not stop half-way.

Standard library only: :mod:`MedTranslateLib.io.atomic` uses it, and the command line's start-up must stay quick.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

#: the signals that stop a run: Ctrl-C, SIGTERM (schedulers, the Slicer module's Cancel), a closed terminal
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_deferring = threading.local()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold the stop signals during a block that must not stop half-way (moving outputs into place, one training
    step); the first signal that arrived meanwhile is delivered when the block ends, a second one at once (the
    user insists). Nested blocks hold until the outermost ends; outside the main thread (where Python runs signal
    handlers) this does nothing."""
    if threading.current_thread() is not threading.main_thread() or getattr(_deferring, "active", False):
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    previous = {sig: handler for sig, handler in previous.items() if handler is not None}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)
        if len(caught) > 1:  # asked twice: stop now, as the user insists
            restore()
            signal.raise_signal(signum)

    _deferring.active = True
    try:
        for sig in previous:
            signal.signal(sig, hold)
        yield
    finally:
        _deferring.active = False
        restore()
        if len(caught) == 1:  # (a second one was delivered at once)
            signal.raise_signal(caught[0])
