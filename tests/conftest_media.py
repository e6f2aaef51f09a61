"""Helpers that make real video files with ffmpeg for the media tests (imported by test modules, not a conftest)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

VCODEC_ARGS = {
    "h264": ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"],
    "h264_lossless": ["-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv444p"],
    "vp9": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"],
    "vp8": ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"],
    "mjpeg": ["-c:v", "mjpeg", "-q:v", "3"],
}
ACODEC_ARGS = {
    "aac": ["-c:a", "aac", "-b:a", "96k"],
    "opus": ["-c:a", "libopus", "-b:a", "48k"],
    "pcm": ["-c:a", "pcm_s16le"],
    "flac": ["-c:a", "flac"],
    "vorbis": ["-c:a", "libvorbis", "-q:a", "3"],
}


def click_track(duration: float, sr: int, click_s: float, *, tone_hz: float = 440.0) -> np.ndarray:
    """(N,) float32: a quiet sine with a loud 5 ms click at ``click_s``."""
    t = np.arange(int(round(duration * sr))) / sr
    y = 0.05 * np.sin(2 * np.pi * tone_hz * t)
    i = int(round(click_s * sr))
    y[i : i + int(0.005 * sr)] = 0.8
    return y.astype(np.float32)


def make_testsrc(
    path: Path,
    *,
    fps: float = 30,
    duration: float = 2.0,
    size: tuple[int, int] = (120, 160),
    vcodec: str = "h264",
    acodec: str | None = "aac",
    click_s: float = 1.0,
) -> Path:
    """Write ffmpeg's lavfi testsrc (moving pattern) with an optional click track. size is (H, W)."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi"]
    cmd += ["-i", f"testsrc=size={size[1]}x{size[0]}:rate={fps}:duration={duration}"]
    if acodec is not None:
        wav = path.with_suffix(".src.wav")
        sf.write(wav, click_track(duration, 44100, click_s), 44100)
        cmd += ["-i", str(wav)]
    cmd += VCODEC_ARGS[vcodec]
    cmd += ACODEC_ARGS[acodec] if acodec else ["-an"]
    subprocess.run(cmd + [str(path)], check=True)
    return path


def encode_frames(
    path: Path,
    frames: np.ndarray,
    fps: float,
    *,
    vcodec: str = "h264",
    audio: np.ndarray | None = None,
    sr: int = 16000,
    acodec: str = "aac",
    vf: str | None = None,
    vfr: bool = False,
) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames (and optional mono audio) into a video file."""
    t, h, w, _ = frames.shape
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}"]
    cmd += ["-r", str(fps), "-i", "-"]
    if audio is not None:
        wav = path.with_suffix(".src.wav")
        sf.write(wav, audio, sr)
        cmd += ["-i", str(wav)]
    if vf:
        cmd += ["-vf", vf]
    if vfr:
        cmd += ["-fps_mode", "vfr"]
    cmd += VCODEC_ARGS[vcodec]
    cmd += ACODEC_ARGS[acodec] if audio is not None else ["-an"]
    subprocess.run(cmd + [str(path)], input=np.ascontiguousarray(frames, dtype=np.uint8).tobytes(), check=True)
    return path


def synth_corpus(
    out: Path,
    *,
    clips: int,
    seed: int,
    duration: str = "2.0",
    mix: str | None = None,
    extra: tuple[str, ...] = (),
    timeout: float | None = 300,
) -> Path:
    """Write an embedded corpus with the ``vssflow synth`` command, as a user would (one worker); returns the
    manifest path."""
    import sys

    cmd = [sys.executable, "-m", "pipelines.cli", "synth", "--out", str(out), "--clips", str(clips), "--seed",
           str(seed), "--duration", duration, "--workers", "1", *(["--mix", mix] if mix else []), *extra]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
    return Path(out) / "manifest.jsonl"


def dub_video(out: Path, *, clips: int = 14, seed: int = 3, size: int = 128) -> dict:
    """A silent video of >= 30 s to dub, built from clips of the embedded corpus (``vssflow.synth``) laid end to end:
    talking faces of two espeak voices alternating with scenes of sound events, and its subtitles.

    Returns:
        {"video": silent .mp4, "srt": its subtitles (one cue per spoken clip, from the corpus's speech timing,
        ``[ALICE]`` / ``[BOB]`` naming the two voices), "cues": [(start, end, speaker, text)], "events": [seconds
        of each visual sound event], "refs": {"ALICE": wav, "BOB": wav}, "audio": the clips' own soundtrack
        (16 kHz, the ground truth), "duration": seconds}.
    """
    import json

    from vssflow.synth.corpus import CorpusConfig, write_corpus

    out = Path(out)
    corpus = out / "corpus"
    write_corpus(CorpusConfig(out=str(corpus), clips=clips, seed=seed, duration=(2.0, 3.5), mix=(0.5, 0.5, 0.0),
                              real_speech=0.0, n_speakers=2, held_out_voices=0, workers=1, size=size))  # fmt: skip
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()]
    names = {"espeak-00": "ALICE", "espeak-01": "BOB"}
    cues, events, refs, t = [], [], {}, 0.0
    for r in rows:
        if r["task"] == "tts":
            cues.append((round(t + r["speech_start"], 3), round(t + r["speech_end"], 3), names[r["speaker_id"]],
                         r["transcript"]))  # fmt: skip
            refs.setdefault(names[r["speaker_id"]], corpus / r["reference_audio"])
        events += [round(t + e["time"], 3) for e in r["events"]]
        t += r["end"] - r["start"]
    listing = out / "clips.txt"
    listing.write_text("".join(f"file '{corpus / r['video']}'\n" for r in rows))
    video = out / "dub.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-an", "-c:v", "copy", str(video)], check=True)  # fmt: skip
    audio = out / "truth.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-vn", "-ac", "1", "-ar", "16000", str(audio)], check=True)  # fmt: skip

    def stamp(s: float) -> str:
        ms = int(round(s * 1000))
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    srt = out / "dub.srt"
    srt.write_text("\n".join(f"{i}\n{stamp(a)} --> {stamp(b)}\n[{who}] {text}\n"
                             for i, (a, b, who, text) in enumerate(cues, 1)), encoding="utf-8")  # fmt: skip
    assert t >= 30.0 and len(set(c[2] for c in cues)) == 2, (t, cues)
    return {"video": video, "srt": srt, "cues": cues, "events": events, "refs": refs, "audio": audio, "duration": t}
