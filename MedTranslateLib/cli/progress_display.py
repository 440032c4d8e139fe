"""Progress displays for the command line: a rich progress bar, or JSON lines (the worker protocol)."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from MedTranslateLib.progress import ProgressCallback, ProgressEvent, format_duration


def emit_json(event: str, **fields: Any) -> None:
    """One line of the worker protocol on stdout."""
    print(json.dumps({"event": event, **fields}), flush=True)


def _jsonl_callback(event: ProgressEvent) -> None:
    emit_json("progress", stage=event.stage, fraction=round(event.fraction, 4),
              eta_seconds=None if event.eta_seconds is None else round(event.eta_seconds, 1),
              message=event.message)


@contextmanager
def progress_display(mode: str, description: str = "") -> Iterator[ProgressCallback | None]:
    """Yield a progress callback for ``mode`` (``rich``, ``jsonl`` or ``none``)."""
    if mode == "jsonl":
        yield _jsonl_callback
        return
    if mode == "none" or not sys.stderr.isatty() and mode != "rich":
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
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
