"""POST /v1/dub and GET /v1/jobs/{id} through Ray Serve over real HTTP on 127.0.0.1 (pipelines/serve/dub.py,
dub_routes.py), with a tiny untrained model and the 35 s two-speaker video of test_dub (``conftest_media.dub_video``).

* a dub is a job: the POST answers 202 with the job queued and nothing done, the status shows its progress (cues
  done / total) while it runs, and when done the files: the muxed video as long as the input, the timing report,
  the stems, the speech placed within 0.15 s of each cue and silent outside cues (measured on the downloaded stem);
* bounded: a second job while the one admitted runs is a 503 with Retry-After, a video over the dubbing limit a 413,
  a finished job expires (410, its directory deleted);
* voices as voice.NAME parts and as a YAML mapping of uploaded recordings; cancelling;
* bad input is a 4xx with one line naming the upload (bad subtitles: the cue) and nothing left on disk.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest_media import VCODEC_ARGS, dub_video, make_testsrc

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None,
                                reason="needs ffmpeg and espeak-ng")  # fmt: skip
TOLERANCE_S = 0.15
TTL_S = 20.0


def _cut(src: Path, out: Path, *, start: float = 0.0, duration: float) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", str(start), "-t", str(duration), "-i", str(src),
                    "-an", *VCODEC_ARGS["h264"], str(out)], check=True)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def server(local_ray, tmp_path_factory):
    from conftest_data import make_tiny_serving_model
    from ray import serve

    from pipelines.net import free_port, wait_ready
    from pipelines.serve import Scaling, ServeConfig, start
    from pipelines.serve.config import DubService

    root = tmp_path_factory.mktemp("serve_dub")
    video = dub_video(root / "video")
    short = _cut(video["video"], root / "short.mp4", duration=4.0)
    long = make_testsrc(root / "long.mp4", fps=5, duration=41.0, size=(64, 64), acodec=None)  # over the limit
    model = make_tiny_serving_model(root / "model")
    jobs = root / "jobs"
    config = ServeConfig(
        model=str(model), max_upload_mb=20.0, max_pixels=200 * 200, upload_dir=str(root / "uploads"),
        generator=Scaling(num_cpus=0.5), extractor=Scaling(num_cpus=0.5),
        dub=DubService(max_jobs=1, max_video_seconds=40.0, result_ttl_s=TTL_S, batch=2, jobs_dir=str(jobs),
                       worker=Scaling(num_cpus=1, max_ongoing_requests=64)),
    )  # fmt: skip
    url = start(config, port=free_port())
    try:
        wait_ready(url)
        yield {**video, "url": url, "short": short, "long": long, "jobs": jobs, "root": root}
    finally:
        serve.shutdown()


def _post(url: str, video: Path, subtitles: bytes, *, name: str = "film.srt", speakers: dict | None = None,
          files: list | None = None, **fields) -> httpx.Response:  # fmt: skip
    parts = [("video", (video.name, video.read_bytes(), "video/mp4")),
             ("subtitles", (name, subtitles, "application/x-subrip"))]  # fmt: skip
    for who, path in (speakers or {}).items():
        parts.append((f"voice.{who}", (Path(path).name, Path(path).read_bytes(), "audio/wav")))
    parts += files or []
    return httpx.post(f"{url}/v1/dub", files=parts, data={k: str(v) for k, v in fields.items()}, timeout=120)


def _wait(url: str, job_id: str, *, until=("done", "failed", "cancelled"), timeout: float = 900) -> list[dict]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30)
        assert r.status_code == 200, r.text
        seen.append(r.json())
        if seen[-1]["state"] in until:
            return seen
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} still {seen[-1]['state']} after {timeout} s: {seen[-1]}")


def _srt(*cues: tuple[float, float, str]) -> bytes:
    from vssflow.text.subtitles import format_time

    return "\n".join(f"{i}\n{format_time(a)} --> {format_time(b)}\n{text}\n"
                     for i, (a, b, text) in enumerate(cues, 1)).encode()  # fmt: skip


def _audio_of(mp4: bytes, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "out.mp4"
    path.write_bytes(mp4)
    wav = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "wav", "-ac", "1", "-ar", "16000",
                          "-"], capture_output=True, check=True).stdout  # fmt: skip
    return sf.read(io.BytesIO(wav), dtype="float32")[0]


def test_a_dub_is_a_job_with_progress_and_its_result(server, tmp_path):
    from vssflow.features.span import span_from_voice_activity
    from vssflow.media.video import probe

    url, cues = server["url"], server["cues"]
    r = _post(url, server["video"], server["srt"].read_bytes(), speakers=server["refs"], stems="true", seed=7)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "queued" and job["cues_done"] == 0 and job["cues_total"] == len(cues)  # answered at once
    assert r.headers["location"] == job["status_url"] == f"/v1/jobs/{job['id']}"
    assert job["speakers"] == ["ALICE", "BOB"] and job["voices"] == ["ALICE", "BOB"] and job["seed"] == 7

    busy = _post(url, server["short"], _srt((0.5, 1.5, "hello")))  # bounded: one unfinished job at a time here
    assert busy.status_code == 503 and busy.json()["error"] == "too_many_jobs", busy.text
    assert int(busy.headers["retry-after"]) >= 1

    seen = _wait(url, job["id"])
    done = seen[-1]
    assert done["state"] == "done", done
    assert any(s["state"] in ("queued", "running") and s["cues_done"] < len(cues) for s in seen)  # polled while busy
    for a, b in zip(seen, seen[1:], strict=False):  # progress only goes forward
        assert b["cues_done"] >= a["cues_done"] and b["progress"] >= a["progress"]
    assert done["cues_done"] == len(cues) and done["progress"] == 1.0 and 0 < done["expires_in_s"] <= TTL_S
    assert set(done["urls"]) == {"video", "report", "speech", "sound", "mix"} and done["summary"]["silent_cues"] == 0

    files = {k: httpx.get(url + u, timeout=60) for k, u in done["urls"].items()}
    assert all(f.status_code == 200 for f in files.values()), {k: f.status_code for k, f in files.items()}
    assert files["video"].headers["content-type"] == "video/mp4"
    n = int(round(probe(server["video"]).duration * 16000))
    audio = _audio_of(files["video"].content, tmp_path)
    assert abs(len(audio) - n) <= 0.05 * 16000, (len(audio), n)  # the muxed video's sound is as long as the video
    speech, sr = sf.read(io.BytesIO(files["speech"].content), dtype="float32")
    assert sr == 16000 and len(speech) == n
    inside = np.zeros(n, bool)
    for k, (start, end, _, _) in enumerate(cues):  # measured on the downloaded stem, between the neighbours' midpoints
        inside[int(round(start * 16000)) : int(round(end * 16000))] = True
        lo = 0.0 if k == 0 else (cues[k - 1][1] + start) / 2
        hi = n / 16000 if k + 1 == len(cues) else (end + cues[k + 1][0]) / 2
        span = span_from_voice_activity(speech[int(lo * 16000) : int(hi * 16000)])
        assert span is not None, cues[k]
        t0 = int(lo * 16000) / 16000
        assert abs(t0 + span[0] - start) <= TOLERANCE_S and abs(t0 + span[1] - end) <= TOLERANCE_S, (cues[k], span)
    assert not np.any(speech[~inside]), "speech outside the cues"
    report = files["report"].json()
    assert [c["asked"] for c in report["cues"]] == [[a, b] for a, b, _, _ in cues]
    assert [c["voice"] for c in report["cues"]] == [f"speaker {who}" for _, _, who, _ in cues]
    assert report["video"] == "dub.mp4" and report["sampling"]["seed"] == 7
    assert str(server["root"]) not in files["report"].text  # no server path reaches the client
    missing = httpx.get(f"{url}/v1/jobs/{job['id']}/files/other.wav")
    assert missing.status_code == 404 and "no file 'other.wav'" in missing.json()["detail"]
    assert not (server["jobs"] / job["id"] / "in").exists()  # the uploads are gone, the results stay until expiry


def test_voices_as_a_yaml_mapping_of_uploaded_recordings(server):
    from vssflow.media.video import probe

    refs = server["refs"]
    recordings = [("recordings", (f"take-{who.lower()}.wav", Path(p).read_bytes(), "audio/wav")) for who, p in
                  refs.items()]  # fmt: skip
    yaml = "".join(f"{who}: take-{who.lower()}.wav\n" for who in refs)
    subs = _srt((0.4, 1.6, "[ALICE] the red ball"), (2.0, 3.4, "[BOB] open the door"), (3.5, 3.9, "[CAROL] hi"))
    r = _post(server["url"], server["short"], subs, files=recordings, voices=yaml, sound="off", output="wav")
    assert r.status_code == 202, r.text
    done = _wait(server["url"], r.json()["id"])[-1]
    assert done["state"] == "done" and done["voices"] == ["ALICE", "BOB"], done
    report = httpx.get(server["url"] + done["urls"]["report"]).json()
    assert [c["voice"] for c in report["cues"]] == ["speaker ALICE", "speaker BOB", "default voice"]
    assert any("CAROL" in f for f in report["fixes"])  # a speaker without a voice is said, not hidden
    wav, sr = sf.read(io.BytesIO(httpx.get(server["url"] + done["urls"]["video"]).content), dtype="float32")
    assert sr == 16000 and len(wav) == round(probe(server["short"]).duration * 16000)
    assert set(done["urls"]) == {"video", "report"}


def _refused(r: httpx.Response, status: int, reason: str, *needles: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == reason, body
    detail = body["detail"]
    assert "\n" not in detail and "/tmp" not in detail, detail  # one line, no server path
    for needle in needles:
        assert needle in detail, detail
    return detail


def test_bad_input_is_refused_at_once_in_one_line(server, tmp_path):
    url, short = server["url"], server["short"]
    before = set(server["jobs"].iterdir())
    d = _refused(_post(url, short, _srt((0.5, 1.5, "one")) + b"\n2\n00:00:03,000 --> 00:00:02,000\ntwo\n",
                       name="film.srt"), 422, "bad_subtitles", "film.srt: cue 2 (line 6): ends")  # fmt: skip
    assert "before it starts" in d
    _refused(_post(url, short, "1\n00:00:00,500 --> 00:00:01,500\nna\xefve\n".encode("latin-1"), name="l.srt"),
             422, "bad_subtitles", "l.srt: cue 1, line 3: not UTF-8", "iconv -f latin1 -t utf-8 l.srt")  # fmt: skip
    overlap = _srt((0.5, 2.0, "[ALICE] one"), (1.5, 3.0, "[BOB] two"))
    _refused(_post(url, short, overlap, strict="true"), 422, "bad_subtitles", "film.srt: cue 2 (line 6)",
             "before cue 1 ends")  # fmt: skip
    _refused(_post(url, short, _srt((3.0, 6.0, "late")), strict="true"), 422, "bad_subtitles", "film.srt: cue 1",
             "after the video's end")  # fmt: skip
    _refused(_post(url, server["long"], _srt((0.5, 1.5, "one"))), 413, "video_too_long", "long.mp4", "at most 40 s")
    junk = tmp_path / "holiday.mp4"
    junk.write_bytes(b"not a video" * 100)
    _refused(_post(url, junk, _srt((0.5, 1.5, "one"))), 422, "bad_video", "holiday.mp4")
    silent = tmp_path / "quiet.wav"
    sf.write(silent, np.zeros(32000, np.float32), 16000)
    _refused(_post(url, short, _srt((0.5, 1.5, "[ALICE] one")), speakers={"ALICE": silent}), 422,
             "bad_reference_voice", "voice ALICE (quiet.wav)")  # fmt: skip
    _refused(_post(url, short, _srt((0.5, 1.5, "one")), voices="ALICE: missing.wav\n"), 422, "bad_voices",
             "speaker 'ALICE': recording 'missing.wav' was not uploaded")  # fmt: skip
    _refused(_post(url, short, _srt((0.5, 1.5, "one")), steps=100_000), 422, "bad_field", "steps")
    _refused(_post(url, short, _srt((0.5, 1.5, "one")), task="tts"), 422, "unknown_field", "task")
    r = httpx.post(f"{url}/v1/dub", files=[("video", ("a.mp4", short.read_bytes(), "video/mp4"))], timeout=60)
    _refused(r, 422, "missing_file", "subtitles")
    assert set(server["jobs"].iterdir()) == before  # nothing refused was kept


def test_unknown_cancelled_and_expired_jobs(server):
    url = server["url"]
    assert httpx.get(f"{url}/v1/jobs/{'0' * 32}").status_code == 404
    assert httpx.get(f"{url}/v1/jobs/..%2F..%2Fetc").status_code == 404
    r = _post(url, server["video"], server["srt"].read_bytes())  # the long one: cancelled while queued or running
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    c = httpx.delete(f"{url}/v1/jobs/{job_id}")
    assert c.status_code == 200 and c.json()["state"] in ("queued", "running", "cancelled"), c.text
    seen = _wait(url, job_id, timeout=300)
    assert seen[-1]["state"] == "cancelled" and seen[-1]["cues_done"] < seen[-1]["cues_total"], seen[-1]
    assert "urls" not in seen[-1]
    time.sleep(seen[-1]["expires_in_s"])
    deadline = time.monotonic() + 60
    while (server["jobs"] / job_id).exists() and time.monotonic() < deadline:  # the expiry thread deletes it,
        time.sleep(0.2)  # with no request asking
    assert not (server["jobs"] / job_id).exists()
    gone = httpx.get(f"{url}/v1/jobs/{job_id}")
    assert gone.status_code == 410 and "expired" in gone.json()["detail"], gone.text
    assert httpx.get(f"{url}/v1/jobs/{job_id}/files/dub.mp4").status_code == 410


def test_openapi_documents_the_dub_routes(server):
    spec = httpx.get(server["url"] + "/openapi.json").json()
    body = spec["paths"]["/v1/dub"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"video", "subtitles", "reference_voice", "recordings", "voices", "sound", "strict", "stems"} <= set(
        body["properties"]
    )
    assert {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/files/{name}"} <= set(spec["paths"])
    assert "delete" in spec["paths"]["/v1/jobs/{job_id}"]
