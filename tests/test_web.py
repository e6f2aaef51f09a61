"""The web page at ``/`` in real headless Chromium (Debian's chromium + chromedriver, driven by selenium).

Upload a video, a transcript and a reference voice, choose the task, submit; the page shows progress, then plays
the result (the browser decodes the returned audio: its duration equals the video's) next to the input video and
offers a download. A bad upload shows the server's one-line reason. With a subtitle file the page dubs the video
through the job API (POST /v1/dub, then GET /v1/jobs/{id} polled): it shows the cues done, then plays the dubbed
video and offers it, the timing report and the stems; bad subtitles show the server's line naming the cue. A
screenshot is saved in the test's output directory and its path printed.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest_media import synth_corpus

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
selenium = pytest.importorskip("selenium")
pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER) and shutil.which("ffmpeg")),
    reason="needs Debian chromium + chromium-driver and ffmpeg",
)


@pytest.fixture(scope="module")
def server(local_ray, tmp_path_factory):
    from conftest_data import make_tiny_serving_model
    from ray import serve

    from pipelines.net import free_port, wait_ready
    from pipelines.serve import Scaling, ServeConfig, start
    from pipelines.serve.config import DubService

    root = tmp_path_factory.mktemp("web")
    corpus = root / "corpus"
    clip = json.loads(synth_corpus(corpus, clips=1, seed=8, mix="0,0,1").read_text().splitlines()[0])
    model = make_tiny_serving_model(root / "model")
    config = ServeConfig(model=str(model), upload_dir=str(root / "uploads"), generator=Scaling(num_cpus=1),
                         extractor=Scaling(num_cpus=1), dub=DubService(worker=Scaling(num_cpus=0)))  # fmt: skip
    url = start(config, port=free_port())
    try:
        wait_ready(url)
        yield {"url": url, "video": str(corpus / clip["video"]), "ref": str(corpus / clip["reference_audio"]),
               "transcript": clip["transcript"], "root": root}  # fmt: skip
    finally:
        serve.shutdown()


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--mute-audio",
                 "--window-size=1200,1000"):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


_RECORD_STATUS = """
window.__statuses = [];
new MutationObserver(() => window.__statuses.push(document.getElementById('status').textContent))
  .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});
"""


def _wait_state(driver, timeout: float = 240.0) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.3).until(
        lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error")
    )
    return driver.execute_script("return document.body.dataset.state")


def test_page_generates_plays_and_downloads(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from vssflow.media.video import probe

    browser.get(server["url"] + "/")
    assert "vssflow" in browser.title
    browser.find_element(By.ID, "video").send_keys(server["video"])
    Select(browser.find_element(By.ID, "task")).select_by_value("joint")
    browser.find_element(By.ID, "transcript").send_keys(server["transcript"])
    browser.find_element(By.ID, "reference_voice").send_keys(server["ref"])
    browser.find_element(By.ID, "speech_span").send_keys("0.3,1.2")
    browser.find_element(By.ID, "steps").send_keys("3")
    browser.find_element(By.ID, "seed").send_keys("9")
    browser.execute_script(_RECORD_STATUS)
    browser.find_element(By.ID, "submit").click()
    state = _wait_state(browser)
    status = browser.find_element(By.ID, "status").text
    assert state == "done", status
    statuses = browser.execute_script("return window.__statuses")
    assert any(s.startswith(("Uploading", "Generating")) for s in statuses), statuses  # progress was shown

    # the browser decodes the result: an audio of the video's duration, playable next to the input video
    duration = probe(server["video"]).duration
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.getElementById('result-audio').readyState") >= 1
    )  # noqa: E501
    audio_s = browser.execute_script("return document.getElementById('result-audio').duration")
    assert abs(audio_s - duration) < 0.05, (audio_s, duration)
    assert browser.execute_script("return document.getElementById('input-video').src").startswith("blob:")
    assert not browser.find_element(By.ID, "result-audio").get_attribute("hidden")
    link = browser.find_element(By.ID, "download")
    assert link.is_displayed() and link.get_attribute("download").endswith(".wav")
    size = browser.execute_async_script(
        "const done = arguments[0]; fetch(document.getElementById('download').href)"
        ".then(r => r.arrayBuffer()).then(b => done(b.byteLength));"
    )
    assert size == 44 + round(duration * 16000) * 2  # 16-bit mono WAV of exactly the video's length
    meta = browser.find_element(By.ID, "meta").text
    assert "seed 9" in meta and "speech 0.300–1.200 s (user)" in meta, meta  # the span the model got

    shot = tmp_path / "web_page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot}")


def test_page_shows_the_reason_of_a_bad_upload(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    junk = tmp_path / "holiday.mp4"
    junk.write_bytes(b"not a video at all" * 64)
    browser.get(server["url"] + "/")
    browser.find_element(By.ID, "video").send_keys(str(junk))
    Select(browser.find_element(By.ID, "task")).select_by_value("v2s")
    browser.find_element(By.ID, "submit").click()
    assert _wait_state(browser, 120) == "error"
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("HTTP 422") and "holiday.mp4" in status, status
    # a malformed speech span: the server's one-line reason, before the video is looked at
    browser.find_element(By.ID, "video").send_keys(server["video"])
    Select(browser.find_element(By.ID, "task")).select_by_value("tts")
    browser.find_element(By.ID, "transcript").send_keys(server["transcript"])
    browser.find_element(By.ID, "speech_span").send_keys("1.2,0.3")
    browser.find_element(By.ID, "submit").click()
    assert _wait_state(browser, 120) == "error"
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("HTTP 422") and "speech_span" in status, status
    shot = tmp_path / "web_page_error.png"
    browser.save_screenshot(str(shot))
    print(f"\nscreenshot: {shot}")


_SRT = "1\n00:00:00,200 --> 00:00:00,900\n[ALICE] hello there\n\n2\n00:00:01,000 --> 00:00:01,800\nthe red ball\n"


def test_page_dubs_a_video_from_its_subtitles(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from vssflow.media.video import probe

    subs = tmp_path / "clip.srt"
    subs.write_text(_SRT)
    alice = tmp_path / "alice.wav"  # the voice of speaker ALICE: a recording named after her
    shutil.copy(server["ref"], alice)
    browser.get(server["url"] + "/")
    browser.find_element(By.ID, "video").send_keys(server["video"])
    browser.find_element(By.ID, "subtitles").send_keys(str(subs))
    for id_ in ("transcript", "speech_span", "task"):  # the cues say what is said and when
        assert not browser.find_element(By.ID, id_).is_enabled(), id_
    assert browser.find_element(By.ID, "submit").text == "Dub"
    browser.find_element(By.ID, "voices").send_keys(str(alice))
    browser.find_element(By.ID, "stems").click()
    Select(browser.find_element(By.ID, "output")).select_by_value("mp4")
    browser.find_element(By.ID, "steps").send_keys("3")
    browser.find_element(By.ID, "seed").send_keys("5")
    browser.execute_script(_RECORD_STATUS)
    browser.find_element(By.ID, "submit").click()
    state = _wait_state(browser)
    status = browser.find_element(By.ID, "status").text
    assert state == "done" and status.startswith("Done: dubbed 2 cues"), status
    statuses = browser.execute_script("return window.__statuses")
    assert any(s.startswith(("Queued: job", "Dubbing: cue")) for s in statuses), statuses  # the job was polled

    duration = probe(server["video"]).duration
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.getElementById('result-video').readyState") >= 1
    )
    video_s = browser.execute_script("return document.getElementById('result-video').duration")
    assert abs(video_s - duration) < 0.1, (video_s, duration)  # the browser plays the dubbed video
    link = browser.find_element(By.ID, "download")
    assert link.is_displayed() and link.get_attribute("download").endswith(".mp4")
    assert "/v1/jobs/" in link.get_attribute("href")
    fetch = (
        "const done = arguments[1]; fetch(arguments[0]).then(r => r.arrayBuffer().then(b => "
        "done([r.headers.get('content-type'), b.byteLength, new TextDecoder().decode(b)])));"
    )
    kind, size, _ = browser.execute_async_script(fetch, link.get_attribute("href"))
    assert kind == "video/mp4" and size > 1000
    _, _, report = browser.execute_async_script(fetch, browser.find_element(By.ID, "report").get_attribute("href"))
    report = json.loads(report)
    assert [c["voice"] for c in report["cues"]] == ["speaker alice", "default voice"], report["cues"]
    assert [c["asked"] for c in report["cues"]] == [[0.2, 0.9], [1.0, 1.8]]
    _, size, _ = browser.execute_async_script(fetch, browser.find_element(By.ID, "stem-speech").get_attribute("href"))
    assert size == 44 + round(duration * 16000) * 2  # 16-bit mono WAV of the video's length
    meta = browser.find_element(By.ID, "meta").text
    assert "seed 5" in meta and "2 cues" in meta, meta
    shot = tmp_path / "web_page_dub.png"
    browser.save_screenshot(str(shot))
    print(f"\nscreenshot: {shot}")

    # bad subtitles: the server's one line, naming the file and the cue, before any job starts
    subs.write_text(_SRT + "\n3\n00:00:01,900 --> 00:00:01,500\nbackwards\n")
    browser.find_element(By.ID, "subtitles").send_keys(str(subs))
    browser.find_element(By.ID, "submit").click()
    assert _wait_state(browser, 120) == "error"
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("HTTP 422: clip.srt: cue 3 (line 10): ends"), status
