"""The HTTP front under attack, over real HTTP on 127.0.0.1 (issue 15, "Untrusted input to the HTTP API").

One Serve app for the module with small limits; each test performs the attack (an endless chunked upload, ...)
and checks the refusal, that the replica's memory stayed bounded, and that the service still answers.
"""

from __future__ import annotations

import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

MAX_UPLOAD_MB = 16.0
MAX_DECODED_PIXELS = 2_000_000
MAX_INFLIGHT, MAX_QUEUED = 2, 1
BODY_TIMEOUT_S, REQUEST_TIMEOUT_S = 3.0, 8.0
MAX_STEPS = 1000
APP = "limits"


@pytest.fixture(scope="module")
def server(local_ray, tmp_path_factory):
    from conftest_data import make_tiny_serving_model
    from ray import serve

    from pipelines.net import free_port, wait_ready
    from pipelines.serve import Scaling, ServeConfig, start

    root = tmp_path_factory.mktemp("serve-limits")
    # a DiT slow enough that MAX_STEPS steps take several times REQUEST_TIMEOUT_S (~9 ms a step for 8 s here)
    model = make_tiny_serving_model(root / "model", model_overrides={"depth": 3, "width": 128, "heads": 4})
    config = ServeConfig(
        model=str(model), max_upload_mb=MAX_UPLOAD_MB, max_video_seconds=8.0, max_pixels=200 * 200,
        max_decoded_pixels=MAX_DECODED_PIXELS, max_reference_seconds=30.0, upload_dir=str(root / "uploads"),
        max_inflight=MAX_INFLIGHT, max_queued=MAX_QUEUED, body_timeout_s=BODY_TIMEOUT_S,
        request_timeout_s=REQUEST_TIMEOUT_S, max_steps=MAX_STEPS, generator=Scaling(num_cpus=1),
        extractor=Scaling(num_cpus=1),
    )  # fmt: skip
    url = start(config, port=free_port(), name=APP)
    try:
        wait_ready(url)
        yield {"url": url, "root": root, "model": model}
    finally:
        serve.shutdown()


def _replica_pid(deployment: str) -> int:
    """The process of this module's ``deployment`` replica (Serve names its actors APP#DEPLOYMENT#ID)."""
    import ray

    alive = [a for a in ray._private.state.actors().values()
             if a["State"] == "ALIVE" and f"{APP}#{deployment}#" in (a.get("Name") or "")]  # fmt: skip
    assert len(alive) == 1, [a.get("Name") for a in alive]
    return int(alive[0]["Pid"])


def _peak_rss_reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM, the peak resident set, to the current one


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _chunked_upload(url: str, route: str, field: str, total: int, *, chunk: int = 1 << 20,
                    pause_s: float = 0.005) -> tuple[int, bytes, int]:  # fmt: skip
    """POST a multipart body of one ``total``-byte file part with ``Transfer-Encoding: chunked`` (no
    Content-Length), ``chunk`` bytes every ``pause_s`` (a fast link, not loopback: Serve's proxy reads loopback
    at memory speed) until the server answers or everything is sent. Returns (status, body, bytes sent)."""
    u = urlparse(url)
    boundary = "vssflowboundary7d3f"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"f.npz\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip
    piece = b"\0" * chunk
    sock = socket.create_connection((u.hostname, u.port), timeout=120)
    try:
        sock.sendall(
            f"POST {route} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
        )
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        sent, pending = 0, b""
        while sent < total or pending:
            readable, writable, _ = select.select([sock], [sock], [], 120)
            if readable:  # the server answered (or closed): stop sending
                break
            if writable:
                if not pending:
                    time.sleep(pause_s)
                    pending = b"%x\r\n%s\r\n" % (len(piece), piece)
                    sent += len(piece)
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break
                pending = pending[n:]
        else:
            tail = b"\r\n--%s--\r\n" % boundary.encode()
            sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
        data = b""
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            if not got:
                break
            data += got
        head_bytes, _, body = data.partition(b"\r\n\r\n")
        status = int(head_bytes.split(b" ", 2)[1])
        lengths = [int(h.split(b":")[1]) for h in head_bytes.split(b"\r\n") if h.lower().startswith(b"content-length:")]
        length = lengths[0] if lengths else None
        while length is not None and len(body) < length:
            got = sock.recv(65536)
            if not got:
                break
            body += got
        return status, body, sent
    finally:
        sock.close()


def test_a_chunked_300_mb_upload_is_refused_at_the_limit_with_bounded_memory(server):
    """No Content-Length to check up front: the body is counted as it arrives and the request stops at the limit.
    Before, the file part was spooled whole and then read whole into memory before the 413."""
    pid = _replica_pid("Api")
    _peak_rss_reset(pid)
    before = _peak_rss(pid)
    total = 300 * 1000 * 1000
    status, body, sent = _chunked_upload(server["url"], "/v1/generate/features", "features", total)
    grown = _peak_rss(pid) - before
    print(f"sent {sent / 1e6:.0f} MB, the ingress replica grew by {grown / 1e6:.0f} MB")
    assert status == 413 and b"too_large" in body, (status, body[:300])
    assert sent < total / 2, f"the answer came after {sent / 1e6:.0f} MB of {total / 1e6:.0f} MB"
    assert grown < 4 * MAX_UPLOAD_MB * 1e6, f"the ingress replica grew by {grown / 1e6:.0f} MB"
    time.sleep(0.5)
    assert httpx.get(f"{server['url']}/healthz", timeout=30).json() == {"status": "ok"}


# ---- decompression bombs ------------------------------------------------------------------------------------------
def _video(path: Path, size: str, seconds: float, *, faststart: bool = False) -> bytes:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25:d={seconds}",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]  # fmt: skip
    subprocess.run([*cmd, *(["-movflags", "+faststart"] if faststart else []), str(path)], check=True)
    return path.read_bytes()


def _post(url: str, route: str, files: dict, data: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}{route}", files=files, data=data or {}, timeout=300)


def test_an_npz_bomb_is_refused_before_it_is_unpacked(server):
    """400 MB of zeros in a ~0.4 MB .npz: refused (413) from its .npy headers; the replica never unpacks it."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_features_file import _npz_bomb

    bomb = _npz_bomb((100_000, 1000))
    pid = _replica_pid("Api")
    _peak_rss_reset(pid)
    before = _peak_rss(pid)
    r = _post(server["url"], "/v1/generate/features", {"features": ("f.npz", bomb)})
    grown = _peak_rss(pid) - before
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
    assert "unpacks to 400.0 MB" in r.json()["detail"]
    assert grown < 4 * MAX_UPLOAD_MB * 1e6, f"the ingress replica grew by {grown / 1e6:.0f} MB"


def test_a_long_reference_voice_is_refused_before_it_is_decoded(server, tmp_path):
    """An hour of FLAC silence (~0.5 MB, 690 MB decoded at 48 kHz): 413 from its header, the extractor replica
    does not decode it. Before, it was decoded whole (and then refused as silent, 422)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_audio import _flac

    hour = _flac(tmp_path / "hour.flac", 3600).read_bytes()
    video = _video(tmp_path / "v.mp4", "64x64", 1.0)
    pid = _replica_pid("FeatureExtractor")
    _peak_rss_reset(pid)
    before = _peak_rss(pid)
    files = {"video": ("v.mp4", video), "reference_voice": ("ref.flac", hour)}
    r = _post(server["url"], "/v1/generate", files, {"task": "tts", "transcript": "hello there", "steps": "2"})
    grown = _peak_rss(pid) - before
    assert r.status_code == 413 and r.json()["error"] == "reference_too_long", r.text
    assert r.json()["detail"].startswith("ref.flac: audio is 3600.00 s long; at most 30 s"), r.text
    assert grown < 100e6, f"the extractor replica grew by {grown / 1e6:.0f} MB"


def test_a_video_whose_decoding_is_too_big_is_refused_from_its_header_before_decord_opens_it(server, tmp_path):
    """The per-frame cap bounds only a frame: a wide or long video within it can still decode to gigabytes (a
    5760x360 minute is 9 GB). Its total decoded pixels are capped, and the header (ffprobe) is checked before
    decord opens the file."""
    wide = _video(tmp_path / "wide.mp4", "320x96", 4.0)  # 30720 px a frame (under 40000), 3.1 M px decoded
    r = _post(server["url"], "/v1/generate", {"video": ("wide.mp4", wide)}, {"task": "v2s", "steps": "2"})
    assert r.status_code == 413 and r.json()["error"] == "too_many_pixels", r.text
    assert "320x96 for 4.0 s" in r.json()["detail"]
    # a long video cut after its header: ffprobe reads the length from the header and the request is refused as
    # too long; decord, had it opened the file, would have found it truncated (422)
    long = _video(tmp_path / "long.mp4", "64x64", 12.0, faststart=True)
    r = _post(server["url"], "/v1/generate", {"video": ("long.mp4", long[: len(long) // 3])}, {"task": "v2s"})
    assert r.status_code == 413 and r.json()["error"] == "video_too_long", r.text
    ok = _post(server["url"], "/v1/generate", {"video": ("v.mp4", _video(tmp_path / "ok.mp4", "64x64", 1.0))},
               {"task": "v2s", "steps": "2"})  # fmt: skip
    assert ok.status_code == 200, ok.text


# ---- slow clients and timeouts ------------------------------------------------------------------------------------
def _trickle(url: str, result: list, i: int, *, seconds: float = 30.0) -> None:
    """A client that announces 5000 body bytes and sends one every 0.5 s (slowloris); stores the status it gets."""
    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=60)
    try:
        sock.sendall(f"POST /v1/generate/features HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Length: 5000\r\n"
                     "Content-Type: multipart/form-data; boundary=b0undary\r\n\r\n--b0undary\r\n".encode())  # fmt: skip
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([sock], [], [], 0.5)[0]:
                break
            sock.sendall(b"x")
        result[i] = int(sock.recv(65536).split(b" ", 2)[1])
    except OSError as e:
        result[i] = repr(e)
    finally:
        sock.close()


def test_slow_uploads_hold_no_work_slot_and_end_at_the_body_deadline(server):
    """Twice as many trickling uploads as work slots: before, each held a slot from its first byte and everyone
    else got 503; now a slot is taken once the body is read, so a normal request is served meanwhile, and the
    trickling ones end with 408 at the body deadline."""
    import threading

    from conftest_data import features_npz, random_features

    n = 2 * (MAX_INFLIGHT + MAX_QUEUED)
    results: list = [None] * n
    threads = [threading.Thread(target=_trickle, args=(server["url"], results, i)) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # every trickler is connected and sending
    body = features_npz(random_features(32, 1.0, "v2s", seed=1))
    r = _post(server["url"], "/v1/generate/features", {"features": ("f.npz", body)}, {"steps": "2"})
    assert r.status_code == 200, r.text
    assert all(results[i] is None for i in range(n)), results  # still trickling while it was served
    for t in threads:
        t.join()
    assert results == [408] * n, results


def test_a_generation_past_its_deadline_is_cancelled_and_answered_504(server):
    """MAX_INFLIGHT + MAX_QUEUED + 1 generations that take longer than the request timeout: the last gets 503 at
    once (the queue is full), the others 504 at their deadline, and the generator stopped working on them (its
    abandoned groups ran a fraction of their steps); the service answers normally afterwards."""
    import asyncio

    from conftest_data import features_npz, random_features

    url = server["url"]
    before = httpx.get(f"{url}/v1/stats", timeout=30).json()["generator"]["abandoned"]
    body = features_npz(random_features(32, 8.0, "v2s", seed=2))
    n = MAX_INFLIGHT + MAX_QUEUED + 1

    async def go():
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*(
                client.post(f"{url}/v1/generate/features", files={"features": ("f.npz", body)},
                            data={"steps": str(MAX_STEPS), "seed": str(i)})
                for i in range(n)
            ))  # fmt: skip

    responses = asyncio.run(go())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [503] + [504] * (n - 1), [(r.status_code, r.text[:200]) for r in responses]
    for r in responses:
        assert r.json()["error"] == ("overloaded" if r.status_code == 503 else "timeout"), r.text
    # the generator stops at its next solver step past the deadline: a moment after the 504s (a bound, not a speed)
    wait_until = time.monotonic() + 120
    while (stats := httpx.get(f"{url}/v1/stats", timeout=30).json()["generator"])["abandoned"] <= before:
        assert time.monotonic() < wait_until, f"the generator never gave up the abandoned generations: {stats}"
        time.sleep(0.5)
    assert all(f < 1 for f in stats["abandoned_at"]), stats
    small = features_npz(random_features(32, 1.0, "v2s", seed=3))
    assert _post(url, "/v1/generate/features", {"features": ("f.npz", small)}, {"steps": "2"}).status_code == 200


# ---- no token: cross-site posts; non-finite input ----------------------------------------------------------------
def test_without_a_token_a_cross_site_post_is_refused_and_a_same_site_one_served(server):
    """A page on another site can make its visitor's browser post a form here (no CORS preflight for a form):
    refused from its Origin (or Sec-Fetch-Site) before the body is read. No Origin (curl, SDKs): served."""
    from conftest_data import features_npz, random_features

    url = server["url"]
    body = features_npz(random_features(32, 1.0, "v2s", seed=1))
    host = urlparse(url).netloc
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": f"http://{host}.evil.example"}):  # fmt: skip
        r = httpx.post(f"{url}/v1/generate/features", files={"features": ("f.npz", body)}, data={"steps": "2"},
                       headers=headers, timeout=60)  # fmt: skip
        assert r.status_code == 403 and r.json()["error"] == "cross_origin", (headers, r.text)
    for headers in ({}, {"Origin": url, "Sec-Fetch-Site": "same-origin"}):
        r = httpx.post(f"{url}/v1/generate/features", files={"features": ("f.npz", body)}, data={"steps": "2"},
                       headers=headers, timeout=300)  # fmt: skip
        assert r.status_code == 200, (headers, r.text[:200])
    assert httpx.get(f"{url}/v1/stats", headers={"Origin": "https://evil.example"}, timeout=30).status_code == 200


def test_non_finite_features_are_422_never_a_nan_wav(server):
    import numpy as np
    from conftest_data import features_npz, random_features

    for name, value in [("sem", np.nan), ("sem", np.inf), ("speaker", -np.inf), ("phoneme_durations", np.nan)]:
        f = random_features(32, 1.0, "tts", seed=4)
        if name == "phoneme_durations":
            f.phoneme_durations = np.ones(len(f.phonemes), np.float32)
        getattr(f, name).reshape(-1)[0] = value
        r = _post(server["url"], "/v1/generate/features", {"features": ("f.npz", features_npz(f))}, {"steps": "2"})
        assert r.status_code == 422 and r.json()["error"] == "bad_features", (name, value, r.text[:200])
        assert f"{name} has NaN or infinite values" in r.json()["detail"]
