"""Muxing a soundtrack onto a video (vssflow.media.mux): a stream copy where the container takes it, a re-encode
where it does not, and the output path checked before any work."""

import json
import subprocess

import numpy as np
import pytest

from vssflow.constants import SAMPLE_RATE
from vssflow.errors import InputError
from vssflow.media.mux import check_writable, mux_audio


def _make(path, codec: list[str], seconds: float = 1.5):
    """A real clip from ffmpeg's test pattern: 64x48, 25 fps, no audio."""
    pattern = f"testsrc=size=64x48:rate=25:duration={seconds}"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", pattern, *codec, str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def _streams(path) -> dict[str, dict]:
    cmd = ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,width,height,duration",
           "-show_entries", "format=duration", "-of", "json", str(path)]  # fmt: skip
    probe = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {s["codec_type"]: s for s in probe["streams"]} | {"format": probe["format"]}


def _frames(path) -> np.ndarray:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray", "-"]
    return np.frombuffer(subprocess.run(cmd, check=True, capture_output=True).stdout, np.uint8).reshape(-1, 48, 64)


def _video_md5(path) -> str:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "md5", "-"]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _tone(seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_a_video_stream_mp4_cannot_hold_is_re_encoded_to_h264(tmp_path):
    # Microsoft Video-1 in MKV (old game cut-scenes): MP4 has no place for it, so `-c:v copy` fails.
    src = _make(tmp_path / "cutscene.mkv", ["-c:v", "msvideo1"])
    assert _streams(src)["video"]["codec_name"] == "msvideo1"
    out = mux_audio(src, _tone(), tmp_path / "out" / "cutscene.mp4")
    s = _streams(out)
    assert s["video"]["codec_name"] == "h264" and s["audio"]["codec_name"] == "aac"
    assert (s["video"]["width"], s["video"]["height"]) == (64, 48)
    assert float(s["format"]["duration"]) == pytest.approx(1.5, abs=0.1)
    a, b = _frames(src).astype(np.float32), _frames(out).astype(np.float32)
    assert len(a) == len(b) and np.abs(a - b).mean() < 8.0  # the same pictures, through two lossy codecs
    assert [p.name for p in out.parent.iterdir()] == ["cutscene.mp4"]  # no temporary file left


def test_a_stream_the_container_takes_is_copied_bit_for_bit(tmp_path):
    src = _make(tmp_path / "clip.mp4", ["-c:v", "libx264", "-pix_fmt", "yuv420p"])
    out = mux_audio(src, _tone(), tmp_path / "clip.mkv")
    s = _streams(out)
    assert s["video"]["codec_name"] == "h264" and s["audio"]["codec_name"] == "opus"
    assert _video_md5(out) == _video_md5(src)


def test_the_output_path_is_checked_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a directory"):
        check_writable(tmp_path / "a_file" / "sub" / "out.mp4")
    with pytest.raises(InputError, match="is a directory"):
        check_writable(tmp_path)
    fine = tmp_path / "new" / "deeper" / "out.mp4"
    assert check_writable(fine) == fine and not (tmp_path / "new").exists()  # checked, nothing created
