"""The HTTP front under attack, over real HTTP on 127.0.0.1 (issue 15, "Untrusted input to the HTTP API").

One Serve app for the module with small limits; each test performs the attack (an endless chunked upload, ...)
and checks the refusal, that the replica's memory stayed bounded, and that the service still answers.
"""

from __future__ import annotations

import select
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

MAX_UPLOAD_MB = 16.0
APP = "limits"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import ray
    from conftest_data import make_tiny_serving_model
    from ray import serve

    from pipelines.net import free_port, wait_ready
    from pipelines.serve import Scaling, ServeConfig, start

    root = tmp_path_factory.mktemp("serve-limits")
    model = make_tiny_serving_model(root / "model")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    config = ServeConfig(
        model=str(model), max_upload_mb=MAX_UPLOAD_MB, max_video_seconds=8.0, max_pixels=200 * 200,
        upload_dir=str(root / "uploads"), generator=Scaling(num_cpus=1), extractor=Scaling(num_cpus=1),
    )  # fmt: skip
    url = start(config, port=free_port(), name=APP)
    try:
        wait_ready(url)
        yield {"url": url, "root": root, "model": model}
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()


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
