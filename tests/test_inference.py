"""vssflow/inference.py: from a user's video to conditions, the one front end; the README's "From Python" example.

Real files: a silent 30 s H.264 video made with ffmpeg, a tiny untrained model saved as `vssflow train` would,
MobileNetV2 features. Checks the plumbing, not the quality.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

README = Path(__file__).resolve().parents[1] / "README.md"


def _silent_video(path: Path, seconds: float, size: str = "160x120") -> Path:
    """A video with no audio stream at all (``-an``), 25 fps H.264."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25",
         "-t", str(seconds), "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    probe = ["ffprobe", "-v", "error", "-of", "json", "-show_streams", str(path)]
    streams = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
    assert [s["codec_type"] for s in json.loads(streams)["streams"]] == ["video"]
    return path


def _tiny_model(directory: Path) -> Path:
    """An untrained generator with a 10 s window, its zero-initialised layers woken so its output depends on the
    conditions, saved with the extractor it expects (MobileNetV2, 1280-d)."""
    import torch

    from vssflow.generator import Generator
    from vssflow.model import ModelConfig
    from vssflow.sampling import SamplingConfig

    cfg = ModelConfig(depth=1, width=32, heads=2, cross_dim=32, lip_dim=8, phoneme_dim=8, latent_dim=32)
    gen = Generator(cfg, sampling=SamplingConfig(steps=2, cfg_scale=2.0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in gen.model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return gen.save_pretrained(directory, extractors={"encoder": "mobilenetv2"})


def _readme_example() -> str:
    text = README.read_text()
    after = text[text.index("From Python") :]
    block = re.search(r"```python\n(.*?)```", after, re.S)
    assert block, "README: no python block after 'From Python'"
    return block.group(1)


def test_the_readme_from_python_example_runs_on_a_silent_30_s_video(tmp_path, monkeypatch):
    from vssflow.generator import Generator

    _silent_video(tmp_path / "clip.mp4", 30.0)
    _tiny_model(tmp_path / "models" / "tiny")
    made = []
    real = Generator.generate_for_video

    def record(self, *args, **kwargs):
        made.append(real(self, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(Generator, "generate_for_video", record)
    monkeypatch.chdir(tmp_path)
    example = _readme_example()
    assert "generate_for_video(" in example and "prepare(" in example
    ns: dict = {}
    exec(compile(example, str(README), "exec"), ns)  # exactly the README's code

    assert ns["features"].duration_s == pytest.approx(30.0, abs=0.05)
    assert ns["features"].sem.shape == (300, 1280)  # 10 fps over the whole video: no 10 s limit
    for wav in (made[0], ns["wav"]):
        assert wav.dtype == np.float32 and len(wav) == round(ns["features"].duration_s * 16000)
        assert np.isfinite(wav).all() and wav.std() > 0
    np.testing.assert_array_equal(made[0], ns["wav"])  # one call or two steps: the same conditions, the same audio


def test_the_training_extractor_refuses_what_prepare_takes(tmp_path):
    """Why the README changed: extract_clip (training) needs the target audio and keeps clips within 10 s."""
    from vssflow.errors import ClipTooLongError, NoAudioTrackError
    from vssflow.features.extract import ExtractConfig, decode_clip, row_dict

    long = _silent_video(tmp_path / "long.mp4", 30.0)
    short = _silent_video(tmp_path / "short.mp4", 2.0)
    with pytest.raises(ClipTooLongError):
        decode_clip(row_dict({"clip_id": "long", "video": str(long), "task": "v2s"}), ExtractConfig())
    with pytest.raises(NoAudioTrackError):
        decode_clip(row_dict({"clip_id": "short", "video": str(short), "task": "v2s"}), ExtractConfig())


def test_a_bad_request_fails_before_the_video_is_opened(tmp_path):
    from vssflow.errors import InputError, TranscriptError
    from vssflow.inference import check_request, prepare

    missing = tmp_path / "no-such-video.mp4"
    with pytest.raises(TranscriptError, match="needs a transcript"):
        prepare(missing, task="tts")
    with pytest.raises(InputError, match="task"):
        prepare(missing, task="singing")
    with pytest.raises(InputError, match="START < END"):
        prepare(missing, task="tts", transcript="Hi.", speech_span="2,1")
    with pytest.raises(TranscriptError, match="at most 2000"):
        check_request("tts", "word " * 500)
    request = check_request("tts", "  Hello there.  ", speech_span=" 0.4 , 1.6 ")
    assert (request.task, request.transcript, request.speech_span) == ("tts", "Hello there.", (0.4, 1.6))
    with pytest.raises(ValueError, match="not both"):
        prepare(missing, request=request, task="tts")


def test_prepare_checks_the_request_once_and_cuts_the_span_to_the_video(tmp_path, monkeypatch):
    import vssflow.inference as inference
    from vssflow.errors import InputError
    from vssflow.features.extract import ExtractConfig, Extractors

    video = _silent_video(tmp_path / "face.mp4", 2.0)
    calls = []
    real = inference.check_request
    monkeypatch.setattr(inference, "check_request", lambda *a, **k: calls.append(a) or real(*a, **k))
    extractors = Extractors.load(ExtractConfig(max_seconds=float("inf")), parts=("visual", "mouth", "g2p"))

    f = inference.prepare(video, task="tts", transcript="Hello there.", speech_span="0.5,5", extractors=extractors)
    assert len(calls) == 1
    assert f.speech_span == (0.5, 2.0) and f.meta["speech_span_source"] == "user"
    assert f.phonemes is not None and len(f.phonemes) == len(f.phoneme_durations) > 0
    assert f.sem.shape[0] == 20 and f.sync.shape == (50, 32, 32) and f.lip.shape == (50, 32, 32)

    checked = real("tts", "Hello there.", speech_span="0.5,1.0")
    g = inference.prepare(video, request=checked, extractors=extractors)
    assert len(calls) == 1  # a checked request is not checked again
    assert g.speech_span == (0.5, 1.0)
    with pytest.raises(InputError, match="outside the clip"):
        inference.prepare(video, task="tts", transcript="Hi.", speech_span="3,4", extractors=extractors)
