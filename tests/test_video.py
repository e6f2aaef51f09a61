"""vssflow.media.video on real files written by ffmpeg: containers, frame rates, VFR, audio alignment, bad input."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from conftest_media import encode_frames, make_testsrc, needs_ffmpeg

from vssflow.errors import (
    BadVideoError,
    ClipTooLongError,
    EmptyFileError,
    InputError,
    MissingFileError,
    NoAudioTrackError,
)
from vssflow.media.video import probe, read_audio_track, read_frames

pytestmark = needs_ffmpeg

CLICK_S = 1.0
# (file name, source fps, video codec, audio codec)
CONTAINERS = [
    ("h264_aac_30.mp4", 30, "h264", "aac"),
    ("vp9_opus_24.webm", 24, "vp9", "opus"),
    ("vp8_vorbis_25.webm", 25, "vp8", "vorbis"),
    ("mjpeg_pcm_25.avi", 25, "mjpeg", "pcm"),
    ("h264_flac_30.mkv", 30, "h264", "flac"),
    ("h264_aac_2997.mp4", 30000 / 1001, "h264", "aac"),
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    out = {}
    for name, fps, vc, ac in CONTAINERS:
        fps_arg = "30000/1001" if abs(fps - 29.97) < 0.01 else fps
        out[name] = make_testsrc(d / name, fps=fps_arg, duration=2.0, vcodec=vc, acodec=ac, click_s=CLICK_S)
    out["noaudio.mp4"] = make_testsrc(d / "noaudio.mp4", acodec=None)
    return out


@pytest.mark.parametrize("name,src_fps,vc,ac", CONTAINERS)
def test_probe_and_frames_any_container(videos, name, src_fps, vc, ac):
    info = probe(videos[name])
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert info.fps == pytest.approx(src_fps, rel=0.01)
    assert info.n_frames == pytest.approx(2.0 * src_fps, abs=1)
    assert (info.height, info.width) == (120, 160)
    assert info.has_audio and not info.variable_frame_rate

    for fps in (10, 25):
        frames = read_frames(videos[name], fps, info=info)
        assert frames.dtype == np.uint8 and frames.shape == (round(info.duration * fps), 120, 160, 3)
        # testsrc moves: consecutive sampled frames differ, and the picture is not blank
        changed = np.abs(frames[1:].astype(int) - frames[:-1]).mean(axis=(1, 2, 3)) > 0.05
        assert changed.mean() > 0.9
        assert frames.std() > 20
    small = read_frames(videos[name], 10, size=(32, 48))
    assert small.shape == (20, 32, 48, 3)


@pytest.mark.parametrize("name,src_fps,vc,ac", CONTAINERS)
def test_audio_track_is_aligned_and_trimmed(videos, name, src_fps, vc, ac):
    info = probe(videos[name])
    wav = read_audio_track(videos[name], 16000, info=info)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) == round(info.duration * 16000)
    onset = np.argmax(np.abs(wav) > 0.4) / 16000
    # the click is at 1.0 s in the source; decoded within 3 ms (no codec priming/pre-skip offset left)
    assert onset == pytest.approx(CLICK_S, abs=0.003), name
    # the quiet 440 Hz tone is there before the click
    seg = wav[1600:9600]
    spec = np.abs(np.fft.rfft(seg))
    assert np.fft.rfftfreq(len(seg), 1 / 16000)[spec.argmax()] == pytest.approx(440, abs=5)


def test_variable_frame_rate_picks_frame_on_screen(tmp_path):
    # 30 frames whose grey level encodes their index; timestamps (in 1/30 s): 0..9, then every 3, then every 2
    n = 30
    frames = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None] * 8, 64 * 64 * 3).reshape(n, 64, 64, 3)
    pts = np.array([i if i < 10 else 10 + (i - 10) * 3 if i < 20 else 40 + (i - 20) * 2 for i in range(n)]) / 30
    expr = "if(lt(N,10),N,if(lt(N,20),10+(N-10)*3,40+(N-20)*2))"
    path = encode_frames(tmp_path / "vfr.mp4", frames, 30, vcodec="h264_lossless", vf=f"setpts='{expr}'", vfr=True)
    info = probe(path)
    assert info.variable_frame_rate and info.n_frames == n
    out = read_frames(path, 25, info=info)
    assert len(out) == round(info.duration * 25)
    got = np.round(out[:, 0, 0, 0] / 8).astype(int)
    centres = (np.arange(len(out)) + 0.5) / 25
    expected = np.searchsorted(pts, centres + 1e-9, side="right") - 1
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("ext,vc,ac", [("mp4", "h264", "aac"), ("mkv", "h264", "flac"), ("webm", "vp8", "opus")])
def test_audio_longer_than_video_is_not_truncation(tmp_path, ext, vc, ac):
    frames = np.zeros((50, 64, 64, 3), np.uint8)  # 2 s at 25 fps
    frames[:, :, :32] = 200
    audio = np.sin(2 * np.pi * 300 * np.arange(3 * 16000) / 16000).astype(np.float32) * 0.3  # 3 s
    path = encode_frames(tmp_path / f"long_audio.{ext}", frames, 25, vcodec=vc, audio=audio, acodec=ac)
    info = probe(path)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert len(read_audio_track(path, info=info)) == round(info.duration * 16000)


def test_no_audio_track(videos):
    info = probe(videos["noaudio.mp4"])
    assert not info.has_audio
    assert read_frames(videos["noaudio.mp4"], 10, info=info).shape[0] == 20
    with pytest.raises(NoAudioTrackError, match="noaudio.mp4.*no audio track"):
        read_audio_track(videos["noaudio.mp4"])


def test_bad_files(videos, tmp_path):
    with pytest.raises(MissingFileError, match="nope.mp4"):
        probe(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(EmptyFileError, match="empty.mp4"):
        read_frames(tmp_path / "empty.mp4", 25)
    (tmp_path / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    with pytest.raises(BadVideoError, match="text.mp4"):
        probe(tmp_path / "text.mp4")
    for name in ("h264_aac_30.mp4", "vp9_opus_24.webm", "mjpeg_pcm_25.avi", "h264_flac_30.mkv"):
        data = videos[name].read_bytes()
        cut = tmp_path / f"half_{name}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(BadVideoError, match=f"half_{name}") as exc:
            read_frames(cut, 25)
        assert "\n" not in str(exc.value)
    # an mp4 with its index first (faststart) cut in half: opens, then fails while reading frames
    fast = tmp_path / "fast.mp4"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(videos["h264_aac_30.mp4"]), "-c", "copy"]
    subprocess.run([*cmd, "-movflags", "+faststart", str(fast)], check=True)
    (tmp_path / "half_fast.mp4").write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    with pytest.raises(BadVideoError, match="half_fast.mp4"):
        read_frames(tmp_path / "half_fast.mp4", 25)
    with pytest.raises(ClipTooLongError, match="longer than the maximum 1 s"):
        read_audio_track(videos["h264_aac_30.mp4"], max_seconds=1.0)
    # every one of these is an InputError (batch jobs quarantine the row)
    assert issubclass(ClipTooLongError, InputError) and issubclass(BadVideoError, InputError)


@needs_ffmpeg
def test_the_declared_size_is_read_with_ffprobe_and_a_hanging_ffprobe_is_a_one_line_timeout(tmp_path, monkeypatch):
    """Limits on uploads are checked on the header (ffprobe) before decord opens a file; an ffprobe that hangs
    (a hostile file, a loaded host) ends in ProbeTimeoutError (HTTP 504), not subprocess.TimeoutExpired (a 500)."""
    import os
    import shutil

    from vssflow.errors import ProbeTimeoutError
    from vssflow.media.video import declared_video

    video = tmp_path / "wide.mp4"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x96:rate=25:d=2",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)]  # fmt: skip
    subprocess.run(cmd, check=True)
    d = declared_video(video)
    assert (d.width, d.height) == (320, 96) and d.duration == pytest.approx(2.0, abs=0.05)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ffprobe").write_text("#!/bin/sh\nexec sleep 30\n")
    (fake / "ffprobe").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("ffprobe") == str(fake / "ffprobe")
    with pytest.raises(ProbeTimeoutError) as err:
        declared_video(video, timeout_s=0.5)
    assert str(err.value).startswith(f"{video}: reading the video's header took over 0.5 s")
    assert "\n" not in str(err.value) and err.value.reason == "probe_timeout"
