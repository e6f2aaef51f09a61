"""vssflow/commands/dub.py: ``vssflow dub`` as a user runs it (a real process), on a 35 s video the test builds
(``conftest_media.dub_video``) with a tiny untrained model: the files it writes, the muxed video's duration, the
stems, the timing report, and one-line refusals before the model is loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from conftest_media import dub_video  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None,
                                reason="needs ffmpeg and espeak-ng")  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


def _vssflow(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _streams(path: Path) -> dict[str, float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", "-show_streams", str(path)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return {s["codec_type"]: float(s["duration"]) for s in json.loads(out)["streams"]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest_data import make_tiny_serving_model

    root = tmp_path_factory.mktemp("dubcli")
    video = dub_video(root / "video")
    model = make_tiny_serving_model(root / "model")
    voices = root / "speakers.yaml"
    voices.write_text("".join(f"{name}: {path}\n" for name, path in video["refs"].items()))
    return {**video, "model": model, "voices": voices, "root": root}


def test_dub_writes_the_video_stems_and_timing_report(setup):
    out = setup["root"] / "out" / "dubbed.mp4"
    r = _vssflow("dub", "--model", setup["model"], "--video", setup["video"], "--subtitles", setup["srt"],
                 "--voices", setup["voices"], "--stems", "--asr", "none", "--no-progress", "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "vssflow dub: 7 cues (ALICE, BOB) over 35.20 s" in r.stdout
    streams = _streams(out)
    assert set(streams) == {"video", "audio"}
    assert abs(streams["audio"] - streams["video"]) <= 0.05, streams  # the output is as long as the video
    stems = {k: sf.read(out.with_name(f"dubbed.{k}.wav"), dtype="float32") for k in ("speech", "sound", "mix")}
    n = int(round(setup["duration"] * 16000))
    assert all(sr == 16000 and len(w) == n for w, sr in stems.values())
    speech = stems["speech"][0]
    inside = np.zeros(n, bool)
    for start, end, _, _ in setup["cues"]:
        inside[int(round(start * 16000)) : int(round(end * 16000))] = True
    assert not np.any(speech[~inside]) and np.abs(speech[inside]).max() > 1e-3
    np.testing.assert_allclose(stems["mix"][0], speech + stems["sound"][0], atol=2 / 32768)  # 16-bit files
    report = json.loads(out.with_name("dubbed.timing.json").read_text())
    assert [c["asked"] for c in report["cues"]] == [[a, b] for a, b, _, _ in setup["cues"]]
    assert {c["voice"] for c in report["cues"]} == {"speaker ALICE", "speaker BOB"}
    assert report["asr"] is None and report["asr_note"] == "not asked (--asr none)" and report["strict"] is False
    assert all(abs(v) <= 0.15 for c in report["cues"] for v in c["offset_s"].values())


def test_bad_subtitles_are_refused_in_one_line_before_the_model_is_loaded(setup, tmp_path):
    bad = tmp_path / "bad.srt"
    bad.write_text("1\n00:00:05,000 --> 00:00:03,000\nBackwards.\n")
    out = tmp_path / "out.mp4"
    missing_model = tmp_path / "no-model"  # never reached: the subtitles are checked first
    r = _vssflow("dub", "--model", missing_model, "--video", setup["video"], "--subtitles", bad, "--out", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [f"vssflow dub: error: {bad}: cue 1 (line 2): ends (00:00:03,000) before it starts "
                     "(00:00:05,000); fix its times so that END > START"]  # fmt: skip
    overlap = tmp_path / "overlap.srt"
    overlap.write_text("1\n00:00:01,000 --> 00:00:03,000\nOne.\n\n2\n00:00:02,000 --> 00:00:04,000\nTwo.\n")
    r = _vssflow("dub", "--model", missing_model, "--video", setup["video"], "--subtitles", overlap, "--strict",
                 "--out", out)  # fmt: skip
    assert r.returncode == 2 and "cue 2 (line 6): starts at 00:00:02,000, 1.00 s before cue 1 ends" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    speakers = tmp_path / "speakers.yaml"
    speakers.write_text("ALICE: nowhere.wav\n")
    r = _vssflow("dub", "--model", missing_model, "--video", setup["video"], "--subtitles", setup["srt"],
                 "--voices", speakers, "--out", out)  # fmt: skip
    assert r.returncode == 2 and "speaker 'ALICE': recording 'nowhere.wav' not found" in r.stderr
    assert not out.exists() and not list(tmp_path.glob("out*"))
