"""pipelines/serve/jobs.py: the bounded job table of the dubbing service, on a clock the test moves (no Ray, no
sleeping): admission up to max_jobs unfinished, 404 for an id never issued, 410 once a finished job has expired
(its directory deleted), the status a client sees."""

from __future__ import annotations

import pytest

from pipelines.serve.forms import HTTPError
from pipelines.serve.jobs import Job, JobTable


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _job(tmp_path, k: int) -> Job:
    d = tmp_path / f"job{k}"
    (d / "in").mkdir(parents=True, exist_ok=True)
    return Job(id=f"{k:032x}", workdir=d, cues_total=5)


def test_admits_up_to_max_jobs_unfinished_then_503_with_retry_after(tmp_path):
    table = JobTable(max_jobs=2, ttl_s=60, retry_after_s=7, clock=Clock())
    a, b = table.add(_job(tmp_path, 1)), table.add(_job(tmp_path, 2))
    with pytest.raises(HTTPError) as e:
        table.check_room()
    assert e.value.status == 503 and e.value.headers == {"Retry-After": "7"}
    assert "2 dubbing jobs are queued or running (at most 2)" in e.value.detail
    with pytest.raises(HTTPError, match="at most 2"):
        table.add(_job(tmp_path, 3))
    table.update(a, state="running")
    with pytest.raises(HTTPError):  # running still counts
        table.add(_job(tmp_path, 3))
    table.update(a, state="done")  # finished: room for one more
    table.add(_job(tmp_path, 3))
    table.update(b, state="failed", error={"status": 422, "error": "x", "detail": "y"})
    table.check_room()


def test_status_progress_and_expiry(tmp_path):
    clock = Clock()
    table = JobTable(max_jobs=1, ttl_s=60, clock=clock)
    job = table.add(_job(tmp_path, 1))
    s = table.snapshot(job.id)
    assert s["state"] == "queued" and s["cues_done"] == 0 and s["cues_total"] == 5 and s["progress"] == 0.0
    assert s["started"] is None and "expires_in_s" not in s and "files" not in s
    clock.t += 2
    table.update(job, state="running", stage="speech", cues_done=2, steps_done=10, steps_total=40)
    s = table.snapshot(job.id)
    assert (s["stage"], s["cues_done"], s["progress"]) == ("speech", 2, 0.25) and s["started"] is not None
    clock.t += 3
    table.update(job, state="done", stage="done", files={"video": "dub.mp4"}, summary={"cues": 5})
    s = table.snapshot(job.id)
    assert s["progress"] == 1.0 and s["files"] == {"video": "dub.mp4"} and s["expires_in_s"] == 60.0
    clock.t += 59
    assert table.snapshot(job.id)["expires_in_s"] == 1.0 and job.workdir.is_dir()
    clock.t += 1
    with pytest.raises(HTTPError) as e:  # expired: deleted, and said so
        table.get(job.id)
    assert e.value.status == 410 and "expired 60 s after it finished" in e.value.detail
    assert not job.workdir.exists()
    with pytest.raises(HTTPError) as e:
        table.get("f" * 32)
    assert e.value.status == 404 and "no such job" in e.value.detail


def test_sweep_deletes_only_finished_jobs_past_their_ttl(tmp_path):
    clock = Clock()
    table = JobTable(max_jobs=3, ttl_s=10, clock=clock)
    old, new, running = (table.add(_job(tmp_path, k)) for k in (1, 2, 3))
    table.update(old, state="cancelled")
    clock.t += 5
    table.update(new, state="done")
    table.update(running, state="running")
    clock.t += 6
    assert table.sweep() == [old.id]
    assert not old.workdir.exists() and new.workdir.is_dir() and running.workdir.is_dir()
    clock.t += 100
    assert table.sweep() == [new.id] and table.get(running.id) is running  # a running job never expires
