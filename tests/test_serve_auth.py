"""The API token (``vssflow serve --api-token-file``), over real HTTP on 127.0.0.1 and in real headless Chromium.

Every ``/v1/*`` route of the OpenAPI page is tried without a token (401 + ``WWW-Authenticate``), with another
token (403) and with the right one; the page, the health checks and the OpenAPI page stay open; the web page asks
for the token once and then generates. (Without a token: the Origin check, tests/test_serve_limits.py.)
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import pytest

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def server(local_ray, tmp_path_factory):
    from conftest_data import make_tiny_serving_model
    from ray import serve

    from pipelines.net import free_port, wait_ready
    from pipelines.serve import Scaling, ServeConfig, start

    root = tmp_path_factory.mktemp("serve-auth")
    token = secrets.token_urlsafe(32)
    token_file = root / "token"
    token_file.write_text(token + "\n")  # as `kubectl create secret --from-file` or an editor leaves it
    video = root / "v.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:d=1",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)], check=True)  # fmt: skip
    model = make_tiny_serving_model(root / "model")
    config = ServeConfig(model=str(model), upload_dir=str(root / "uploads"), api_token_file=str(token_file),
                         generator=Scaling(num_cpus=1), extractor=Scaling(num_cpus=1))  # fmt: skip
    url = start(config, port=free_port(), name="auth")
    try:
        wait_ready(url)
        yield {"url": url, "token": token, "video": str(video)}
    finally:
        serve.shutdown()


def _v1_routes(url: str) -> list[tuple[str, str]]:
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()  # open: it holds nothing
    routes = [(m.upper(), p.replace("{job_id}", "0" * 32).replace("{name}", "out.wav"))
              for p, ops in spec["paths"].items() if p.startswith("/v1/") for m in ops]  # fmt: skip
    assert {("POST", "/v1/generate"), ("POST", "/v1/generate/features"), ("GET", "/v1/stats")} <= set(routes)
    return routes


def test_every_v1_route_needs_the_token_and_the_rest_stays_open(server):
    from conftest_data import features_npz, random_features

    url, token = server["url"], server["token"]
    for method, path in _v1_routes(url):
        r = httpx.request(method, f"{url}{path}", timeout=60)
        assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
        assert r.headers["www-authenticate"].startswith("Bearer") and r.json()["error"] == "unauthorized"
        r = httpx.request(method, f"{url}{path}", headers={"Authorization": "Bearer " + "x" * 43}, timeout=60)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path, r.text[:200])
        assert token not in r.text
        r = httpx.request(method, f"{url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert r.status_code not in (401, 403), (method, path, r.text[:200])  # past the check (then 4xx/200)
    for path in ("/", "/static/app.js", "/healthz", "/readyz", "/openapi.json", "/docs"):
        assert httpx.get(f"{url}{path}", timeout=60).status_code == 200, path
    body = features_npz(random_features(32, 1.0, "v2s", seed=1))
    r = httpx.post(f"{url}/v1/generate/features", files={"features": ("f.npz", body)}, data={"steps": "2"},
                   headers={"Authorization": f"Bearer {token}"}, timeout=300)  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text[:200]
    # a cross-site form post cannot set Authorization: without it, it is refused before its body is read
    r = httpx.post(f"{url}/v1/generate", files={"video": ("v.mp4", b"\0" * 1000)},
                   headers={"Origin": "https://evil.example"}, timeout=60)  # fmt: skip
    assert r.status_code == 401


def test_a_token_file_too_short_or_missing_is_one_line(tmp_path):
    from pipelines.serve.auth import read_token_file
    from vssflow.errors import VssflowError

    (tmp_path / "short").write_text("hunter2\n")
    with pytest.raises(VssflowError, match=r"short: the token has 7 characters, at least 16") as err:
        read_token_file(tmp_path / "short")
    assert "\n" not in str(err.value) and "hunter2" not in str(err.value)
    with pytest.raises(VssflowError, match=r"missing: cannot read it"):
        read_token_file(tmp_path / "missing")


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)), reason="needs chromium")
def test_the_page_asks_for_the_token_once_then_generates(server):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)

    def submit_and_wait(answer_prompt: bool) -> str:
        driver.execute_script("document.body.dataset.state = ''")
        driver.find_element(By.ID, "submit").click()
        if answer_prompt:
            alert = WebDriverWait(driver, 120).until(expected_conditions.alert_is_present())
            assert "API token" in alert.text
            alert.send_keys(server["token"])
            alert.accept()
        WebDriverWait(driver, 240, poll_frequency=0.3).until(
            lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error")
        )
        return driver.find_element(By.ID, "status").text

    try:
        driver.get(server["url"] + "/")
        driver.find_element(By.ID, "video").send_keys(server["video"])
        driver.find_element(By.ID, "steps").send_keys("2")
        status = submit_and_wait(answer_prompt=True)
        assert driver.execute_script("return document.body.dataset.state") == "done", status
        status = submit_and_wait(answer_prompt=False)  # kept for the tab: not asked again
        assert driver.execute_script("return document.body.dataset.state") == "done", status
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # noqa: B018
    finally:
        driver.quit()
