"""Put a generated soundtrack on a video: the video stream is copied bit for bit (``-c:v copy``), the audio is new.

When the input's video stream cannot go into the requested container as it is (e.g. Microsoft Video-1 from an AVI
or MKV into an .mp4), it is re-encoded instead: H.264 for MP4/MOV/MKV, VP9 for WebM. ffmpeg does the muxing.
The output is written to a temporary name in the target's directory and renamed into place, so a half-written
file is never visible. The audio is encoded as AAC in MP4/MOV (Opus in WebM/MKV) and is as long as the video: the
generator already returns exactly ``video duration * 16000`` samples. :func:`check_writable` checks an output path
before the generation that fills it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from vssflow.constants import SAMPLE_RATE
from vssflow.errors import AssetError, BadVideoError, InputError
from vssflow.media.video import PROTOCOLS

__all__ = ["mux_audio", "ffmpeg_exe", "check_writable"]

_AUDIO_CODEC = {".mp4": "aac", ".m4v": "aac", ".mov": "aac", ".mkv": "libopus", ".webm": "libopus"}
# The re-encode when the stream cannot be copied: widely playable, even frame sizes (4:2:0 needs them).
_H264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p"]
_VIDEO_REENCODE = {".mp4": _H264, ".m4v": _H264, ".mov": _H264, ".mkv": _H264,
                   ".webm": ["-c:v", "libvpx-vp9", "-crf", "32", "-b:v", "0", "-pix_fmt", "yuv420p"]}  # fmt: skip
_EVEN = ["-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2"]


def check_writable(out: str | os.PathLike) -> Path:
    """Check, before any work is spent on it, that ``out`` can be written: not a directory, and its nearest
    existing parent is a directory this process can create files in. Nothing is created.

    Raises:
        InputError: naming ``out`` and what is wrong with it.
    """
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out} is a directory; give a file name (e.g. {out / 'out.mp4'})", source=str(out))
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot write {out}: {parent} is a file, not a directory; choose another path",
                         source=str(out))  # fmt: skip
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {out}: no permission to create files in {parent}; choose another path",
                         source=str(out))  # fmt: skip
    return out


def ffmpeg_exe() -> str:
    """Path of ``ffmpeg``; AssetError when it is not installed."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AssetError("ffmpeg is not installed; install it (`apt-get install ffmpeg`) to write video outputs")
    return exe


def mux_audio(
    video: str | os.PathLike,
    audio: np.ndarray | str | os.PathLike,
    out: str | os.PathLike,
    *,
    sample_rate: int = SAMPLE_RATE,
    audio_bitrate: str = "128k",
) -> Path:
    """Write ``out``: the video stream of ``video`` copied unchanged (re-encoded when the container of ``out`` cannot
    hold it) plus ``audio`` as its only audio stream.

    Args:
        video: source video (its own audio streams, subtitles and data streams are dropped).
        audio: (L,) float32 waveform at ``sample_rate``, or the path of an audio file.
        out: target file (.mp4, .mov, .m4v, .mkv or .webm); replaced atomically if it exists.
        sample_rate: rate of a waveform given as an array.
        audio_bitrate: bitrate of the encoded audio.

    Returns:
        ``out`` as a Path.

    Raises:
        BadVideoError when ffmpeg cannot read the video, or neither copy nor re-encode its stream into ``out``.
    """
    import soundfile as sf

    out = Path(out)
    codec = _AUDIO_CODEC.get(out.suffix.lower())
    if codec is None:
        raise ValueError(f"{out}: unsupported video container {out.suffix!r}; use one of {sorted(_AUDIO_CODEC)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    wav_tmp = None
    try:
        if isinstance(audio, np.ndarray):
            fd, wav_tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".wav", dir=out.parent)
            os.close(fd)
            sf.write(wav_tmp, np.clip(np.asarray(audio, np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16")
            audio_path = wav_tmp
        else:
            audio_path = str(audio)
        # an upload opens only local files and pipes (a playlist naming http:// is refused, not followed)
        cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *PROTOCOLS, "-i", str(video)]
        cmd += [*PROTOCOLS, "-i", audio_path]
        cmd += ["-map", "0:v:0", "-map", "1:a:0", "-c:a", codec, "-b:a", audio_bitrate]
        if out.suffix.lower() in (".mp4", ".m4v", ".mov"):
            cmd += ["-movflags", "+faststart"]
        proc = subprocess.run([*cmd, "-c:v", "copy", tmp], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:  # e.g. "codec not currently supported in container": re-encode the video stream
            video_codec = _VIDEO_REENCODE[out.suffix.lower()] + _EVEN
            proc = subprocess.run([*cmd, *video_codec, tmp], capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1][:200]
            raise BadVideoError(
                f"cannot mux the new soundtrack into {out.name} ({last}); write a .wav instead or re-encode the video",
                source=str(video),
            )
        os.replace(tmp, out)
        return out
    finally:
        for p in (tmp, wav_tmp):
            if p is not None and os.path.exists(p):
                os.unlink(p)
