"""Put a generated soundtrack on a video: the video stream is copied bit for bit (``-c:v copy``), the audio is new.

ffmpeg does the muxing. The output is written to a temporary name in the target's directory and renamed into
place, so a half-written file is never visible. The audio is encoded as AAC in MP4/MOV (Opus in WebM/MKV) and is as
long as the video: the generator already returns exactly ``video duration * 16000`` samples.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from vssflow.constants import SAMPLE_RATE
from vssflow.errors import AssetError, BadVideoError

__all__ = ["mux_audio", "ffmpeg_exe"]

_AUDIO_CODEC = {".mp4": "aac", ".m4v": "aac", ".mov": "aac", ".mkv": "libopus", ".webm": "libopus"}


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
    """Write ``out``: the video stream of ``video`` copied unchanged plus ``audio`` as its only audio stream.

    Args:
        video: source video (its own audio streams, subtitles and data streams are dropped).
        audio: (L,) float32 waveform at ``sample_rate``, or the path of an audio file.
        out: target file (.mp4, .mov, .m4v, .mkv or .webm); replaced atomically if it exists.
        sample_rate: rate of a waveform given as an array.
        audio_bitrate: bitrate of the encoded audio.

    Returns:
        ``out`` as a Path.

    Raises:
        BadVideoError when ffmpeg cannot read the video or copy its stream into the container of ``out``.
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
        cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(video), "-i", audio_path]
        cmd += ["-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", codec, "-b:a", audio_bitrate]
        if out.suffix.lower() in (".mp4", ".m4v", ".mov"):
            cmd += ["-movflags", "+faststart"]
        cmd += [tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
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
