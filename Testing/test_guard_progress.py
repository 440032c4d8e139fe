"""Guards for progress: stage weights are relative, a stage's fraction is clamped, the overall fraction never
exceeds 1, and the end of a stage is always reported even right after another report."""

from __future__ import annotations

import pytest

from MedTranslateLib.progress import ProgressTracker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stage_weights_are_relative_shares() -> None:
    events = []
    tracker = ProgressTracker((("load", 2.0), ("run", 6.0)), events.append, min_interval=0.0, clock=Clock())
    tracker.stage("load")
    tracker.update(1.0)
    assert events[-1].fraction == pytest.approx(0.25)
    tracker.stage("run")
    tracker.update(0.5)
    assert events[-1].fraction == pytest.approx(0.625)


def test_overshooting_work_counts_stay_inside_their_stage() -> None:
    events = []
    tracker = ProgressTracker((("a", 1.0), ("b", 1.0)), events.append, min_interval=0.0, clock=Clock())
    tracker.stage("a")
    tracker.update(1.7)  # e.g. 17/10 units counted
    assert events[-1].fraction == pytest.approx(0.5) and events[-1].stage_fraction == 1.0
    tracker.update(-0.5)
    assert events[-1].stage_fraction == 0.0


def test_overall_fraction_never_exceeds_one() -> None:
    events = []
    tracker = ProgressTracker(callback=events.append, min_interval=0.0, clock=Clock())
    tracker.report_at(1.4, "work", 1.0)
    assert tracker.fraction == 1.0 and events[-1].fraction == 1.0


def test_the_end_of_a_stage_is_reported_even_within_the_interval() -> None:
    events = []
    clock = Clock()
    tracker = ProgressTracker(callback=events.append, min_interval=10.0, clock=clock)
    tracker.stage("work")
    clock.now += 0.01
    tracker.update(0.5)  # throttled
    clock.now += 0.01
    tracker.update(1.0)  # the stage is complete: always shown
    assert events[-1].stage_fraction == 1.0 and events[-1].fraction == 1.0
