"""Local network helpers for the services we start (Serve, MLflow) in the demo, benches and tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

__all__ = ["free_port", "stop_process_group", "wait_ready"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(
    url: str,
    proc: subprocess.Popen | None = None,
    *,
    timeout: float = 300.0,
    path: str = "/readyz",
    interval: float = 0.5,
) -> None:
    """Poll ``url + path`` until it answers 200.

    Args:
        proc: the server's process, if we started one: its exit ends the wait at once.
        timeout: seconds; a bound for a busy machine, not a speed check.

    Raises:
        RuntimeError: ``proc`` exited first. TimeoutError: no 200 within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=10) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):  # refused, reset, 503 (HTTPError), timeout
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}{path} not ready after {timeout:.0f} s")
        time.sleep(interval)


def stop_process_group(proc: subprocess.Popen, *, timeout: float = 60.0) -> None:
    """Stop a server started with ``start_new_session=True``: SIGINT to its process group (a clean shutdown),
    SIGKILL if it has not exited within ``timeout`` seconds."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
