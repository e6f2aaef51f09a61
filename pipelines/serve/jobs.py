"""Long jobs of the HTTP service (``POST /v1/dub``): a bounded table of jobs, their progress, and results that expire.

A job is admitted only while fewer than ``max_jobs`` are unfinished (queued or running): one more is a 503 with
Retry-After, so the service never holds more work than it was sized for. A finished job (done, failed or cancelled)
keeps its status and files for ``ttl_s``; then its directory is deleted and its id answers 410 Gone (the last
``remember`` expired ids are kept for that; an id never issued answers 404). Pure Python and thread-safe: the
worker's job thread writes progress while the HTTP side reads it.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.serve.forms import HTTPError

__all__ = ["FINISHED", "Job", "JobCancelled", "JobTable"]

FINISHED = ("done", "failed", "cancelled")


class JobCancelled(Exception):
    """Raised inside a running job (from its progress callback) when the job was cancelled."""


@dataclass
class Job:
    """One job. ``state``: queued -> running -> done | failed | cancelled. ``stage``: what a running job is doing.

    Attributes:
        id: 32 hex digits (random: the id is what lets a client read the job).
        workdir: the job's directory (uploads under ``in/``, results beside it); deleted when the job expires.
        work: what to run, for the worker (paths, options); never shown to the client.
        info: what the client may see about its input (file names, cue count, subtitle fixes).
        files: when done, {kind: file name in ``workdir``} ("video", "report", "speech", ...).
        summary: when done, the report's summary.
        error: when failed, {"status", "error", "detail"} (one line).
    """

    id: str
    workdir: Path
    work: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    state: str = "queued"
    stage: str = "queued"
    cues_done: int = 0
    cues_total: int = 0
    steps_done: int = 0
    steps_total: int = 0
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    files: dict[str, str] = field(default_factory=dict)
    summary: dict | None = None
    error: dict | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def snapshot(self, *, ttl_s: float, now: float) -> dict:
        """What ``GET /v1/jobs/{id}`` shows (JSON-serialisable)."""
        progress = 1.0 if self.state == "done" else (self.steps_done / self.steps_total if self.steps_total else 0.0)
        out = {
            "id": self.id, "state": self.state, "stage": self.stage, "cues_done": self.cues_done,
            "cues_total": self.cues_total, "progress": round(progress, 4), "created": _iso(self.created),
            "started": _iso(self.started), "finished": _iso(self.finished), **self.info,
        }  # fmt: skip
        if self.finished is not None:
            out["expires_in_s"] = round(max(0.0, self.finished + ttl_s - now), 1)
        if self.state == "done":
            out["files"], out["summary"] = dict(self.files), self.summary
        if self.error is not None:
            out["error"] = dict(self.error)
        return out


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class JobTable:
    """The jobs of one worker: admission (``max_jobs`` unfinished), lookup (404 / 410), progress, expiry.

    Args:
        max_jobs: unfinished jobs (queued or running) admitted at once.
        ttl_s: how long a finished job is kept.
        retry_after_s: the Retry-After of a refusal for lack of room.
        clock: seconds since the epoch (``time.time``; a test passes its own).
        remember: expired ids remembered for a 410.
    """

    def __init__(self, *, max_jobs: int, ttl_s: float, retry_after_s: int = 5,
                 clock: Callable[[], float] = time.time, remember: int = 4096):  # fmt: skip
        if max_jobs < 1:
            raise ValueError(f"max_jobs: at least 1, got {max_jobs}")
        self.max_jobs, self.ttl_s, self.retry_after_s, self.clock = max_jobs, float(ttl_s), retry_after_s, clock
        self.jobs: dict[str, Job] = {}
        self.expired: OrderedDict[str, float] = OrderedDict()
        self.remember = remember
        self.lock = threading.Lock()

    def unfinished(self) -> int:
        with self.lock:
            return sum(j.state not in FINISHED for j in self.jobs.values())

    def check_room(self) -> None:
        """Raise the 503 :class:`HTTPError` that a new job would get now (checked before its uploads are written)."""
        n = self.unfinished()
        if n >= self.max_jobs:
            raise self._full(n)

    def _full(self, n: int) -> HTTPError:
        return HTTPError(503, "too_many_jobs", f"{n} dubbing jobs are queued or running (at most {self.max_jobs}); "
                         "retry later", {"Retry-After": str(self.retry_after_s)})  # fmt: skip

    def add(self, job: Job) -> Job:
        """Admit ``job`` (queued), or raise the 503 when the table is full."""
        self.sweep()
        with self.lock:
            n = sum(j.state not in FINISHED for j in self.jobs.values())
            if n >= self.max_jobs:
                raise self._full(n)
            job.created = self.clock()
            self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job:
        """The job, or a 410 (expired) / 404 (never issued) :class:`HTTPError`."""
        self.sweep()
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None:
                return job
            if job_id in self.expired:
                raise HTTPError(410, "expired", f"job {job_id}: its result expired {self.ttl_s:g} s after it "
                                "finished and was deleted; submit the dub again")  # fmt: skip
        raise HTTPError(404, "no_such_job", f"job {job_id}: no such job on this server (ids come from POST /v1/dub)")

    def snapshot(self, job_id: str) -> dict:
        job = self.get(job_id)
        with self.lock:
            return job.snapshot(ttl_s=self.ttl_s, now=self.clock())

    def update(self, job: Job, **changes) -> None:
        """Set fields of ``job`` (progress, stage); ``state`` in FINISHED also stamps ``finished``."""
        with self.lock:
            for k, v in changes.items():
                setattr(job, k, v)
            if changes.get("state") == "running" and job.started is None:
                job.started = self.clock()
            if changes.get("state") in FINISHED:
                job.finished = self.clock()

    def sweep(self) -> list[str]:
        """Delete the jobs finished more than ``ttl_s`` ago (their directories too). Returns their ids."""
        now = self.clock()
        with self.lock:
            gone = [j for j in self.jobs.values() if j.finished is not None and now - j.finished >= self.ttl_s]
            for j in gone:
                del self.jobs[j.id]
                self.expired[j.id] = now
            while len(self.expired) > self.remember:
                self.expired.popitem(last=False)
        for j in gone:
            shutil.rmtree(j.workdir, ignore_errors=True)
        return [j.id for j in gone]
