"""Progress tracker: overall fraction, time left from the current stage's pace, cancellation."""

from __future__ import annotations

import pytest

from MedTranslateLib.errors import Cancelled
from MedTranslateLib.progress import progress_display
from MedTranslateLib.progress import CancelToken, ProgressEvent, ProgressTracker, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_left_follows_the_current_stage_not_a_quick_first_stage():
    """1 s of loading (weight 0.1) then a 100 s training (weight 0.9): 10 s into training, 90 s are left.
    The run's average pace (0.19 done in 11 s) would say 47 s."""
    clock, events = FakeClock(), []
    tracker = ProgressTracker((("load", 0.1), ("train", 0.9)), events.append, min_interval=0.0, clock=clock)
    tracker.stage("load")
    clock.now = 1.0
    tracker.update(1.0)
    tracker.stage("train")
    assert events[-1].eta_seconds is None  # no pace yet for this stage
    clock.now = 11.0
    tracker.update(0.1)
    assert events[-1].fraction == pytest.approx(0.19)
    assert events[-1].eta_seconds == pytest.approx(90.0)
    assert events[-1].elapsed_seconds == pytest.approx(11.0)
    clock.now = 61.0
    tracker.update(0.6)
    assert events[-1].eta_seconds == pytest.approx(40.0)


def test_time_left_counts_the_stages_still_to_come_at_the_current_pace():
    clock, events = FakeClock(), []
    tracker = ProgressTracker((("a", 0.5), ("b", 0.5)), events.append, min_interval=0.0, clock=clock)
    tracker.stage("a")
    clock.now = 10.0
    tracker.update(0.5)  # 10 s per quarter of the job: 30 s left
    assert events[-1].eta_seconds == pytest.approx(30.0)


def test_undeclared_stage_uses_the_average_pace_and_done_reports_zero():
    clock, events = FakeClock(), []
    tracker = ProgressTracker(callback=events.append, min_interval=0.0, clock=clock)
    clock.now = 5.0
    tracker.update(0.5)
    tracker.stage("extra")  # not declared: no weight of its own
    assert events[-1].eta_seconds == pytest.approx(5.0)
    tracker.done()
    assert (events[-1].fraction, events[-1].eta_seconds) == (1.0, 0.0)


def test_fraction_never_goes_back_and_cancel_raises():
    token, events = CancelToken(), []
    tracker = ProgressTracker((("a", 1.0),), events.append, token, min_interval=0.0)
    tracker.update(0.6)
    tracker.update(0.3)
    assert events[-1].fraction == pytest.approx(0.6)
    token.cancel()
    with pytest.raises(Cancelled):
        tracker.update(0.7)


@pytest.mark.parametrize("seconds,text", [(None, ""), (float("nan"), ""), (-1.0, ""), (0.4, "0 s"), (44.6, "45 s"),
                                          (200.0, "3 min 20 s"), (4186.0, "1 h 10 min"), (1800.0, "30 min")])
def test_time_left_in_words(seconds, text):
    assert format_duration(seconds) == text


def test_command_line_bar_shows_the_trackers_time_left(capsys):
    with progress_display("rich", "translate") as callback:
        callback(ProgressEvent("inference", 0.4, 0.5, 200.0, 10.0, "half"))
    assert "3 min 20 s left" in capsys.readouterr().err
