"""`vssflow generate` as a user runs it: a real subprocess on an embedded (synth) clip, a tiny untrained model.

Checks the plumbing, not the quality: output duration equals the video's, the .mp4 carries the input's video
packets unchanged plus one new audio stream, --stems writes speech/sound stems, bad inputs fail with one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def _vssflow(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"vssflow {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _ffprobe_streams(path: Path) -> list[dict]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_streams", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out)["streams"]


def _video_packet_hashes(path: Path) -> list[str]:
    """MD5 of every packet of the first video stream (stream copy keeps them bit-identical)."""
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "framemd5", "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [line.rsplit(",", 1)[-1].strip() for line in out.splitlines() if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("corpus")
    _vssflow("synth", "--out", str(out), "--clips", "1", "--seed", "3", "--mix", "0,0,1", "--duration", "2.0",
             "--workers", "1")  # fmt: skip
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert row["task"] == "joint"
    row["video"] = str(out / row["video"])
    row["reference_audio"] = str(out / row["reference_audio"])
    return row


def _wake(model) -> None:
    """Give the zero-initialised layers (adaLN-Zero, output head) small random weights, so an untrained model's
    output depends on its conditions (a freshly initialised DiT predicts v = 0 whatever it is given)."""
    import torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny untrained generator for MobileNetV2 features (sem_dim 1280), with a 1.2 s window so the 2 s clip is
    generated in overlapping crossfaded windows."""
    from vssflow.generator import Generator
    from vssflow.model import ModelConfig
    from vssflow.sampling import SamplingConfig

    cfg = ModelConfig(depth=1, width=32, heads=2, cross_dim=32, lip_dim=8, phoneme_dim=8, max_seconds=1.2,
                      latent_dim=32)  # fmt: skip
    gen = Generator(cfg, sampling=SamplingConfig(steps=3, cfg_scale=2.0, window_overlap_s=0.2))
    _wake(gen.model)
    return gen.save_pretrained(tmp_path_factory.mktemp("model") / "tiny", extractors={"encoder": "mobilenetv2"})


def test_generate_mp4_with_stems(corpus, model_dir, tmp_path):
    out = tmp_path / "out.mp4"
    proc = _vssflow(
        "generate", "--model", str(model_dir), "--video", corpus["video"], "--transcript", corpus["transcript"],
        "--reference-voice", corpus["reference_audio"], "--task", "joint", "--steps", "3", "--cfg", "2", "--seed", "7",
        "--stems", "--out", str(out),
    )  # fmt: skip
    assert "sampling" in proc.stderr  # the tqdm bar over solver steps
    src = {s["codec_type"]: s for s in _ffprobe_streams(Path(corpus["video"]))}
    streams = _ffprobe_streams(out)
    kinds = sorted(s["codec_type"] for s in streams)
    assert kinds == ["audio", "video"], kinds
    v = next(s for s in streams if s["codec_type"] == "video")
    a = next(s for s in streams if s["codec_type"] == "audio")
    for key in ("codec_name", "width", "height", "nb_frames", "r_frame_rate", "pix_fmt"):
        assert v[key] == src["video"][key], key
    assert _video_packet_hashes(out) == _video_packet_hashes(Path(corpus["video"]))  # copied, not re-encoded
    assert a["codec_name"] == "aac" and int(a["sample_rate"]) == 16000
    duration = float(src["video"]["duration"])
    assert abs(float(a["duration"]) - duration) < 0.1, (a["duration"], duration)

    # the audio in the mp4 is the generated one, not the input's soundtrack
    from vssflow.media.video import read_audio_track

    new, old = read_audio_track(out), read_audio_track(corpus["video"])
    assert len(new) == len(old) == round(duration * 16000)
    assert np.corrcoef(new, old)[0, 1] < 0.5

    for name in ("speech", "sound"):
        wav, sr = sf.read(tmp_path / f"out.{name}.wav", dtype="float32")
        assert sr == 16000 and len(wav) == round(duration * 16000) and np.isfinite(wav).all() and wav.std() > 0
    speech, _ = sf.read(tmp_path / "out.speech.wav", dtype="float32")
    sound, _ = sf.read(tmp_path / "out.sound.wav", dtype="float32")
    assert not np.allclose(speech, sound)  # different conditions, different audio
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "out.sound.wav", "out.speech.wav"]  # no temps


def test_generate_wav_v2s(corpus, model_dir, tmp_path):
    out = tmp_path / "v2s.wav"
    _vssflow("generate", "--model", str(model_dir), "--video", corpus["video"], "--task", "v2s", "--steps", "2",
             "--seed", "11", "--no-progress", "--out", str(out))  # fmt: skip
    from vssflow.media.video import probe

    wav, sr = sf.read(out, dtype="float32")
    assert sr == 16000 and len(wav) == round(probe(corpus["video"]).duration * 16000) and wav.std() > 0


def test_generate_bad_inputs_fail_with_one_line(corpus, model_dir, tmp_path, capsys):
    from pipelines.cli import main

    junk = tmp_path / "notavideo.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    cases = [
        (["--video", str(junk), "--task", "v2s"], "notavideo.mp4"),
        (["--video", corpus["video"], "--task", "tts"], "transcript"),
        (["--video", str(tmp_path / "missing.mp4")], "missing.mp4"),
        (["--video", corpus["video"], "--task", "v2s", "--steps", "-3"], "steps"),
        (["--video", corpus["video"], "--task", "v2s", "--cfg", "1e9"], "cfg"),
        (["--video", corpus["video"], "--transcript", "Hi.", "--speech-span", "1.5,0.5"], "speech span"),
        (["--video", corpus["video"], "--transcript", "Hi.", "--speech-span", "soon"], "--speech-span"),
        (["--video", corpus["video"], "--transcript", "Hi.", "--speech-span", "5,6"], "outside the clip"),
    ]
    for extra, needle in cases:
        out = tmp_path / "bad.wav"
        code = main(["generate", "--model", str(model_dir), *extra, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        lines = [ln for ln in err.splitlines() if ln.startswith("vssflow generate: error")]
        assert len(lines) == 1 and needle in lines[0], err
        assert not out.exists()


def test_an_output_that_cannot_be_written_fails_before_anything_runs(tmp_path, capsys):
    # Neither the model nor the video exists: the output's own error comes first, before any of them is opened.
    from pipelines.cli import main

    (tmp_path / "a_file").write_text("x")
    argv = ["generate", "--model", str(tmp_path / "no_model"), "--video", str(tmp_path / "no_video.mp4"),
            "--task", "v2s", "--out", str(tmp_path / "a_file" / "out.mp4")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "a_file is a file, not a directory" in err and "no_video" not in err and "no_model" not in err


def test_speech_span_reaches_the_model(corpus, model_dir, tmp_path, monkeypatch, capsys):
    """--speech-span, else the mouth activity of the video: the span the model's collate() puts into the condition
    batch of every window (a spy that wraps the real collate), and a different span gives different audio."""
    import vssflow.generator
    from pipelines.cli import main

    seen: list[np.ndarray] = []
    real = vssflow.generator.collate

    def spy(clips, cfg, **kw):
        batch = real(clips, cfg, **kw)
        seen.append(batch.speech_span.numpy().copy())  # (B, 2) latent frames
        return batch

    monkeypatch.setattr(vssflow.generator, "collate", spy)

    def generate(*extra: str) -> tuple[np.ndarray, str]:
        seen.clear()
        out = tmp_path / "speech.wav"
        code = main(["generate", "--model", str(model_dir), "--video", corpus["video"], "--transcript",
                     corpus["transcript"], "--task", "joint", "--steps", "2", "--seed", "7", "--no-progress", *extra,
                     "--out", str(out)])  # fmt: skip
        printed = capsys.readouterr().out
        assert code == 0, printed
        return sf.read(out, dtype="float32")[0], printed

    wav_user, printed = generate("--speech-span", "0.5,1.5")
    assert "phonemes over 0.50-1.50 s (user)" in printed
    # the 2 s clip is generated in two 1.2 s windows, [0, 1.2) and [0.8, 2.0): the span cut to each, at 25 Hz
    assert len(seen) == 2, seen
    np.testing.assert_allclose(seen[0], [[12.5, 30.0]])
    np.testing.assert_allclose(seen[1], [[0.0, 17.5]])

    wav_mouth, printed = generate()  # no span: where the mouth moves
    line = next(ln for ln in printed.splitlines() if "phonemes over" in ln)
    assert line.endswith("(mouth)"), line
    start, end = (float(x) for x in line.split("phonemes over ")[1].split(" s")[0].split("-"))
    truth = (corpus["phonemes"][0][1], corpus["phonemes"][-1][2])
    assert abs(start - truth[0]) <= 0.15 and abs(end - truth[1]) <= 0.15, (start, end, truth)
    np.testing.assert_allclose(seen[0][0], [start * 25, min(end, 1.2) * 25], atol=1e-3)
    assert not np.array_equal(wav_user, wav_mouth)  # same seed, another span: other audio


def test_generate_from_the_mlflow_registry(corpus, model_dir, tmp_path, capsys):
    """--model models:/NAME/VERSION: the registered copy of the model directory is downloaded and used."""
    pytest.importorskip("mlflow")
    from pipelines.cli import main
    from pipelines.mlflow_utils import create_run, default_tracking_uri, log_and_register_model

    uri = default_tracking_uri(tmp_path / "runs")
    run_id = create_run(uri, run_name="tiny")
    model_uri = log_and_register_model(model_dir, run_id=run_id, tracking_uri=uri, registered_name="tiny-gen")
    assert model_uri == "models:/tiny-gen/1"
    out = tmp_path / "reg.wav"
    code = main(["generate", "--model", model_uri, "--mlflow-uri", uri, "--video", corpus["video"], "--task", "v2s",
                 "--steps", "1", "--no-progress", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    from vssflow.media.video import probe

    assert sf.info(out).frames == round(probe(corpus["video"]).duration * 16000)


def test_the_request_is_checked_once(corpus, model_dir, tmp_path, monkeypatch, capsys):
    """check_request runs once per `vssflow generate`, before the model is loaded; prepare() does not check again."""
    import vssflow.generator
    import vssflow.inference
    from pipelines.cli import main

    order: list[str] = []
    check, load = vssflow.inference.check_request, vssflow.generator.Generator.from_pretrained.__func__
    monkeypatch.setattr(vssflow.inference, "check_request", lambda *a, **k: order.append("check") or check(*a, **k))
    monkeypatch.setattr(vssflow.generator.Generator, "from_pretrained",
                        classmethod(lambda cls, *a, **k: order.append("load") or load(cls, *a, **k)))  # fmt: skip
    out = tmp_path / "once.wav"
    code = main(["generate", "--model", str(model_dir), "--video", corpus["video"], "--transcript",
                 corpus["transcript"], "--steps", "1", "--no-progress", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert order == ["check", "load"]
