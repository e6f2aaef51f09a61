"""Video decoding with decord: stream facts, frames at a target rate, and the audio track.

Frames are sampled by *timestamp*, so any source frame rate (24, 25, 29.97, 30, 60 fps) and variable frame rate
give the same grid: output frame ``k`` of a ``fps``-rate stream is the source frame on screen at the centre of its
interval, ``t_k = (k + 0.5) / fps``. ``T = round(duration * fps)`` frames cover the clip.

The audio track is decoded by decord's ``AudioReader`` (16 kHz mono) where decord gets the timing right (AAC in
MP4/MOV, PCM, MP3) and by an ``ffmpeg`` subprocess otherwise: decord ignores Opus pre-skip (webm audio would start
~7 ms late) and reads Matroska/WebM/Ogg less reliably. Either way the track is trimmed or zero-padded to the
video's duration (AAC adds encoder padding at the end).

Container facts that decord does not expose (declared duration, audio codec) come from ``ffprobe`` when it is on
``PATH``; they are used to detect truncated streamable files (webm/mkv/avi decode up to the cut without error).

Every failure a user can cause raises a :mod:`vssflow.errors` type with a one-line message naming the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vssflow.constants import SAMPLE_RATE
from vssflow.errors import (
    BadVideoError,
    ClipTooLongError,
    EmptyFileError,
    MissingFileError,
    NoAudioTrackError,
    ProbeTimeoutError,
    VssflowError,
)

# Containers/codecs whose audio we decode with ffmpeg rather than decord (see module docstring).
_FFMPEG_AUDIO_CONTAINERS = {".webm", ".mkv", ".mka", ".ogg", ".ogv", ".opus"}
_FFMPEG_AUDIO_CODECS = {"opus", "vorbis", "flac"}
# A streamable file whose decodable video ends this much before the declared duration is called truncated.
_TRUNCATION_TOLERANCE_S = 0.25

_FIX_BAD = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4`, or drop it from the manifest"


@dataclass(frozen=True)
class VideoInfo:
    """Facts about one video file.

    Attributes:
        path: the file.
        duration: seconds covered by the video stream (end time of its last frame).
        fps: average frame rate of the source (frames / duration for variable frame rate).
        n_frames: number of decodable video frames.
        width, height: frame size in pixels.
        has_audio: whether the file has an audio stream.
        audio_codec: the audio codec name when known (ffprobe), else None.
        variable_frame_rate: True when frame intervals differ (beyond timestamp rounding).
    """

    path: str
    duration: float
    fps: float
    n_frames: int
    width: int
    height: int
    has_audio: bool
    audio_codec: str | None = None
    variable_frame_rate: bool = False


# ----------------------------------------------------------------------------------------------------------- helpers


def _check_file(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.exists():
        raise MissingFileError(
            "video file not found; check the path (manifest paths resolve against the manifest's directory)",
            source=str(p),
        )
    if not p.is_file():
        raise BadVideoError("is not a regular file; give the path of a video file", source=str(p))
    if p.stat().st_size == 0:
        raise EmptyFileError("video file is empty (0 bytes); re-export or re-download it", source=str(p))
    return str(p)


# ffprobe/ffmpeg on a user's file open only local files and pipes: a playlist or concat file naming http://,
# tcp:// or another file's protocol is refused instead of followed (server-side request forgery).
PROTOCOLS = ["-protocol_whitelist", "file,pipe"]


def _ffprobe(path: str, *, timeout_s: float = 60.0) -> dict | None:
    """Container facts from ffprobe, or None when ffprobe is not installed.

    Raises:
        BadVideoError if it fails, ProbeTimeoutError if it takes longer than ``timeout_s``.
    """
    exe = shutil.which("ffprobe")
    if exe is None:
        return None
    cmd = [exe, "-v", "error", *PROTOCOLS, "-of", "json", "-show_entries"]
    entries = "format=duration:stream=codec_type,codec_name,nb_frames,r_frame_rate,duration,width,height"
    cmd += [entries + ":stream_tags=DURATION", path]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise ProbeTimeoutError(f"reading the video's header took over {timeout_s:g} s; {_FIX_BAD}", source=path) from e
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unreadable"])[-1].replace(path, "").strip(": ")
        raise BadVideoError(f"not a readable video ({last}); {_FIX_BAD}", source=path)
    return json.loads(proc.stdout or "{}")


def _declared_duration(meta: dict) -> float | None:
    """Duration the container header claims for its video stream (None if it claims nothing).

    Uses the video stream's own duration, frame count / frame rate or Matroska ``DURATION`` tag; the format
    duration (which also covers a longer audio track) only when the stream declares nothing.
    """
    cands = []
    for s in meta.get("streams", []):
        if s.get("codec_type") != "video":
            continue
        if s.get("duration") not in (None, "N/A"):
            cands.append(float(s["duration"]))
        num, _, den = str(s.get("r_frame_rate", "0/0")).partition("/")
        if s.get("nb_frames") not in (None, "N/A") and den and float(den) > 0 and float(num) > 0:
            cands.append(int(s["nb_frames"]) / (float(num) / float(den)))
        tag = (s.get("tags") or {}).get("DURATION")
        if tag:
            try:
                h, m, sec = tag.split(":")
                cands.append(int(h) * 3600 + int(m) * 60 + float(sec))
            except ValueError:
                pass
    if cands:
        return max(cands)
    fmt_dur = meta.get("format", {}).get("duration")
    return float(fmt_dur) if fmt_dur not in (None, "N/A") else None


def _native():
    """Scope in which decord returns its own NDArrays, whatever bridge (e.g. torch) another module has set."""
    from decord.bridge import _BridgeScope

    return _BridgeScope("native")


def _open_video(path: str, *, width: int = -1, height: int = -1):
    import decord

    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    except Exception as e:  # decord raises RuntimeError / DECORDError with long C++ traces
        raise BadVideoError(
            f"cannot open as video (not a video, truncated or unsupported codec: {_short(e)}); {_FIX_BAD}",
            source=path,
        ) from e


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    msg = msg.split("] ")[-1]  # drop decord's "[time] " prefix
    msg = re.sub(r"^\S+\.(?:cc|cpp|h):\d+:\s*(?:Error:\s*)?", "", msg)  # and its "src/file.cc:123: Error:"
    return msg[:120]


def _timestamps(vr, path: str) -> np.ndarray:
    """(N, 2) float64 [start, end) seconds of every source frame."""
    n = len(vr)
    if n == 0:
        raise BadVideoError(f"has no decodable video frames; {_FIX_BAD}", source=path)
    try:
        ts = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
    except Exception as e:
        raise BadVideoError(f"frame timestamps unreadable ({_short(e)}); {_FIX_BAD}", source=path) from e
    return ts


def _check_length(duration: float, max_seconds: float | None, path: str) -> None:
    if max_seconds is not None and duration > max_seconds + 1e-6:
        raise ClipTooLongError(
            f"video is {duration:.2f} s, longer than the maximum {max_seconds:g} s; cut it into shorter clips "
            "(manifest start/end) or raise the configured maximum",
            source=path,
        )


# ------------------------------------------------------------------------------------------------------------ public


@dataclass(frozen=True)
class DeclaredVideo:
    """What a video's header says (ffprobe), before any frame is decoded: a claim, checked again by :func:`probe`.

    Attributes:
        width, height: frame size of the first video stream.
        duration: seconds (None when the container does not say: a streamed WebM).
    """

    width: int
    height: int
    duration: float | None


def declared_video(path: str | os.PathLike, *, timeout_s: float = 60.0) -> DeclaredVideo:
    """Read a video's declared frame size and duration with ffprobe, without opening it with decord.

    For limits on untrusted uploads: a frame size or length over a limit is refused before anything is decoded.

    Raises:
        MissingFileError, EmptyFileError, BadVideoError (unreadable, no video stream), ProbeTimeoutError;
        VssflowError when ffprobe is not installed.
    """
    path = _check_file(path)
    meta = _ffprobe(path, timeout_s=timeout_s)
    if meta is None:
        raise VssflowError("ffprobe is not installed; install ffmpeg (`apt-get install ffmpeg`)")
    video = [s for s in meta.get("streams", []) if s.get("codec_type") == "video" and s.get("width")]
    if not video:
        raise BadVideoError(f"has no video stream; {_FIX_BAD}", source=path)
    return DeclaredVideo(int(video[0]["width"]), int(video[0]["height"]), _declared_duration(meta))


def probe(path: str | os.PathLike, *, max_seconds: float | None = None) -> VideoInfo:
    """Open a video, check it is complete and return its facts.

    Args:
        path: video file (mp4, webm, avi, mkv, mov, ...).
        max_seconds: if given, raise ClipTooLongError for longer videos.

    Returns:
        VideoInfo.

    Raises:
        MissingFileError, EmptyFileError, BadVideoError (not a video, truncated, no frames), ClipTooLongError.
    """
    path = _check_file(path)
    meta = _ffprobe(path)
    vr = _open_video(path)
    ts = _timestamps(vr, path)
    n = len(ts)
    duration = float(ts[-1, 1])
    if meta is not None:
        declared = _declared_duration(meta)
        if declared is not None and duration < declared - _TRUNCATION_TOLERANCE_S:
            raise BadVideoError(
                f"video is truncated (frames stop at {duration:.2f} s of a declared {declared:.2f} s); "
                "re-download or re-export the file",
                source=path,
            )
        audio = [s for s in meta.get("streams", []) if s.get("codec_type") == "audio"]
        has_audio = bool(audio)
        audio_codec = audio[0].get("codec_name") if audio else None
    else:
        has_audio, audio_codec = _decord_has_audio(path), None
    _check_length(duration, max_seconds, path)
    with _native():
        h, w = vr[0].shape[:2]
    intervals = np.diff(ts[:, 0]) if n > 1 else np.zeros(0)
    # container timestamps are rounded (1 ms in Matroska), so only real changes of the interval count as VFR
    vfr = bool(intervals.size and (intervals.max() - intervals.min()) > max(2.5e-3, 0.1 * np.median(intervals)))
    fps = n / duration if vfr else float(vr.get_avg_fps())
    return VideoInfo(path, duration, fps, n, int(w), int(h), has_audio, audio_codec, vfr)


def frame_indices(timestamps: np.ndarray, fps: float, duration: float) -> np.ndarray:
    """Source frame index on screen at the centre of each output interval.

    Args:
        timestamps: (N, 2) [start, end) seconds of the source frames (sorted by start).
        fps: output rate.
        duration: seconds to cover.

    Returns:
        (T,) int64 indices into the source frames, T = max(1, round(duration * fps)).
    """
    t_out = max(1, int(round(duration * fps)))
    centres = (np.arange(t_out) + 0.5) / fps  # (T,)
    # a frame that starts exactly at a centre is on screen there; 0.1 ms absorbs float32 timestamp rounding
    idx = np.searchsorted(timestamps[:, 0], centres + 1e-4, side="right") - 1
    return np.clip(idx, 0, len(timestamps) - 1).astype(np.int64)


def read_frames(
    path: str | os.PathLike,
    fps: float,
    *,
    size: int | tuple[int, int] | None = None,
    max_seconds: float | None = None,
    info: VideoInfo | None = None,
) -> np.ndarray:
    """Decode a video at ``fps`` frames per second, whatever its source rate.

    Args:
        path: video file.
        fps: output frame rate (e.g. SEM_FPS=10, LIP_FPS=25).
        size: resize every frame to ``(height, width)`` (or ``size x size``) while decoding; None keeps the source.
        max_seconds: if given, raise ClipTooLongError for longer videos.
        info: a VideoInfo from :func:`probe` of the same file (skips probing again).

    Returns:
        (T, H, W, 3) uint8 RGB, T = round(duration * fps).
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    info = info or probe(path, max_seconds=max_seconds)
    _check_length(info.duration, max_seconds, info.path)
    hw = None if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    try:
        frames, inverse = _decode(info, fps, hw)
    except _ResizeUnsupported:
        # decord's scaler rejects some output widths (e.g. 16, 48); decode at source size and resize here
        frames, inverse = _decode(info, fps, None)
        frames = _resize(frames, hw)
    return np.ascontiguousarray(frames[inverse])  # (T, H, W, 3)


class _ResizeUnsupported(Exception):
    pass


def _decode(info: VideoInfo, fps: float, hw: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Decode each needed source frame once: (U, H, W, 3) uint8 and the (T,) index of each output frame in it."""
    vr = _open_video(info.path) if hw is None else _open_video(info.path, width=int(hw[1]), height=int(hw[0]))
    ts = _timestamps(vr, info.path)
    idx = frame_indices(ts, fps, info.duration)
    uniq, inverse = np.unique(idx, return_inverse=True)
    try:
        with _native():
            frames = vr.get_batch(uniq.tolist()).asnumpy()  # (U, H, W, 3)
    except Exception as e:
        if hw is not None and "size must exactly match" in str(e):
            raise _ResizeUnsupported from e
        msg = f"decoding failed ({_short(e)}); the file is probably damaged; {_FIX_BAD}"
        raise BadVideoError(msg, source=info.path) from e
    return frames, inverse


def _resize(frames: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(U, H, W, 3) uint8 -> (U, h, w, 3) uint8, bilinear with antialiasing."""
    from PIL import Image

    h, w = hw
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames])


def read_audio_track(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    *,
    max_seconds: float | None = None,
    info: VideoInfo | None = None,
) -> np.ndarray:
    """Decode a video's audio track as mono float32 at ``sample_rate``, aligned to and as long as the video.

    Args:
        path: video file with an audio stream.
        sample_rate: output rate in Hz (16 kHz for the model).
        max_seconds: if given, raise ClipTooLongError for longer videos.
        info: a VideoInfo from :func:`probe` of the same file.

    Returns:
        (N,) float32 in [-1, 1], N = round(video duration * sample_rate).

    Raises:
        NoAudioTrackError when the file has no audio stream; the errors of :func:`probe`.
    """
    info = info or probe(path, max_seconds=max_seconds)
    _check_length(info.duration, max_seconds, info.path)
    if not info.has_audio:
        raise NoAudioTrackError(
            "video has no audio track; give the audio separately (manifest `audio` column) or use it for "
            "generation only",
            source=info.path,
        )
    use_ffmpeg = Path(info.path).suffix.lower() in _FFMPEG_AUDIO_CONTAINERS or info.audio_codec in _FFMPEG_AUDIO_CODECS
    wav = None
    if not use_ffmpeg:
        wav = _decord_audio(info.path, sample_rate)
    if wav is None:
        wav = _ffmpeg_audio(info.path, sample_rate)
    n = int(round(info.duration * sample_rate))
    if len(wav) >= n:
        return np.ascontiguousarray(wav[:n])
    return np.pad(wav, (0, n - len(wav)))


def _decord_has_audio(path: str) -> bool:
    return _decord_audio(path, SAMPLE_RATE) is not None


def _decord_audio(path: str, sample_rate: int) -> np.ndarray | None:
    """Mono float32 audio via decord, or None when decord cannot read it (the caller falls back to ffmpeg)."""
    import decord

    try:
        ar = decord.AudioReader(path, ctx=decord.cpu(0), sample_rate=sample_rate, mono=True)
        with _native():
            return np.asarray(ar[:].asnumpy(), dtype=np.float32).reshape(-1)
    except Exception:
        return None


def _ffmpeg_audio(path: str, sample_rate: int) -> np.ndarray:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise BadVideoError(
            "decord cannot read this audio track and ffmpeg is not installed; install ffmpeg "
            "(`apt-get install ffmpeg`) or re-encode the audio as AAC in an mp4",
            source=path,
        )
    cmd = [exe, "-nostdin", "-v", "error", *PROTOCOLS, "-i", path, "-map", "0:a:0", "-vn", "-ac", "1"]
    cmd += ["-ar", str(sample_rate)]
    cmd += ["-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["unknown error"])[-1]
        raise BadVideoError(f"audio track unreadable ({last[:120]}); {_FIX_BAD}", source=path)
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)
