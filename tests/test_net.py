"""pipelines.net: a free port and a readiness wait that ends when the server process dies."""

import http.server
import signal
import subprocess
import sys
import threading

import pytest

from pipelines.net import free_port, stop_process_group, wait_ready


def test_wait_ready_polls_until_200_and_stops_on_a_dead_process():
    port = free_port()
    assert isinstance(port, int) and 0 < port < 65536

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/readyz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=10)
        with pytest.raises(TimeoutError, match="/health not ready"):
            wait_ready(f"http://127.0.0.1:{port}", timeout=0.3, path="/health", interval=0.1)
    finally:
        server.shutdown()
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(RuntimeError, match="exited with code 3"):
        wait_ready(f"http://127.0.0.1:{free_port()}", dead, timeout=30)


def test_stop_process_group_interrupts_then_kills_a_server_that_ignores_it():
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    stop_process_group(polite, timeout=30)
    assert polite.wait(timeout=5) == -signal.SIGINT  # ended by the interrupt, not killed
    ignore_sigint = "import signal as s, time; s.signal(s.SIGINT, s.SIG_IGN); print(1, flush=True); time.sleep(60)"
    stubborn = subprocess.Popen([sys.executable, "-c", ignore_sigint], start_new_session=True, stdout=subprocess.PIPE)
    stubborn.stdout.readline()  # its SIGINT handler is installed
    stop_process_group(stubborn, timeout=0.5)
    assert stubborn.wait(timeout=5) == -9  # SIGKILL after the timeout
