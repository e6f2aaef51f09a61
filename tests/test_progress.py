"""Progress lines (pipelines/progress.py): a line per stage, at most one per interval while items finish (the first
and the last always), the first saying how long the models took to load, an ETA from the items after it. Time comes
from a clock the test advances, so nothing here depends on how fast the machine is."""

import pytest

from pipelines import progress
from pipelines.progress import Progress, duration


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            return now[0]

    monkeypatch.setattr(progress, "time", Clock)
    return now


def test_lines_are_throttled_and_the_eta_counts_only_the_items_after_the_models_loaded(clock):
    lines: list[str] = []
    p = Progress(6, lines.append, what="vssflow evaluate", unit="clip", every_s=10.0)
    p.stage("generating on 2 actors")
    clock[0] += 40.0  # loading the models, then the first clip
    p.advance(1, " (v2s)")
    clock[0] += 2.0
    p.advance()  # 2 s after the last line: quiet
    clock[0] += 10.0
    p.advance(2)  # 12 s since the first line: 3 items in 12 s after it
    clock[0] += 1.0
    p.advance(0)  # nothing finished: nothing said
    p.advance(1)  # 5/6, 1 s after the last line: quiet
    clock[0] += 3.0
    p.advance(1)  # the last is always said
    assert lines == [
        "vssflow evaluate: generating on 2 actors",
        "vssflow evaluate: clip 1/6 (v2s) after 40s (models loaded)",
        "vssflow evaluate: clip 4/6 52s elapsed, ETA 8s",  # 12 s / 3 items * 2 left
        "vssflow evaluate: clip 6/6 56s elapsed, ETA 0s",
    ]


def test_durations_read_as_minutes_and_seconds():
    assert [duration(s) for s in (0.2, 9.6, 59.4, 60.0, 75.2, 3600.0)] == ["0s", "10s", "59s", "1m00s", "1m15s",
                                                                           "60m00s"]  # fmt: skip
