"""Progress lines a person reads: one per stage, and while items are processed one line at most every few seconds
with the time elapsed and an ETA (evaluate's clips, preprocess's clips)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """``stage(text)`` says a stage started; ``advance(n, detail)`` counts ``n`` finished items of ``total``.

    A line per update at most every ``every_s`` (the first and the last always). The first update also waited for the
    workers to load their models: its line says how long that took, and the ETA is the mean time per item after it.
    """

    def __init__(self, total: int, log: Callable[[str], object], *, what: str, unit: str, every_s: float = 10.0):
        self.total, self.log, self.what, self.unit, self.every_s = total, log, what, unit, every_s
        self.t0 = self.last = time.perf_counter()
        self.t_first: float | None = None
        self.done = self.done_first = 0

    def stage(self, text: str) -> None:
        self.log(f"{self.what}: {text}")

    def advance(self, n: int = 1, detail: str = "") -> None:
        if n <= 0:
            return
        self.done += n
        now = time.perf_counter()
        head = f"{self.unit} {self.done}/{self.total}{detail}"
        if self.t_first is None:
            self.t_first, self.done_first, self.last = now, self.done, now
            self.stage(f"{head} after {duration(now - self.t0)} (models loaded)")
            return
        if self.done < self.total and now - self.last < self.every_s:
            return
        self.last = now
        eta = (now - self.t_first) / (self.done - self.done_first) * max(0, self.total - self.done)
        self.stage(f"{head} {duration(now - self.t0)} elapsed, ETA {duration(eta)}")


def duration(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``, ``9.6`` -> ``"10s"``."""
    s = round(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
