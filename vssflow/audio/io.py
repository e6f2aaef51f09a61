"""Audio files in and out: soundfile for decoding/encoding, torchaudio only to resample.

Every bad input raises one of our :mod:`vssflow.errors` types with a one-line message that names the file and
says what to do. Writing is atomic: the wav goes to a temporary name in the target directory and is renamed into
place, so a reader never sees a half-written file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from vssflow.constants import SAMPLE_RATE
from vssflow.errors import ClipTooLongError, EmptyFileError, InputError, MissingFileError, SampleRateError
from vssflow.files import atomic_open

__all__ = ["audio_duration", "read_audio", "write_audio"]


def _info(path: Path) -> sf._SoundFileInfo:
    """Checks existence / emptiness / readability and returns soundfile's header info."""
    if not path.exists():
        raise MissingFileError("audio file not found; check the path", source=str(path))
    if path.is_dir():
        raise InputError("is a directory, not an audio file; pass a .wav/.flac/.ogg/.mp3 file", source=str(path))
    if path.stat().st_size == 0:
        raise EmptyFileError("audio file is empty (0 bytes); re-export or re-download it", source=str(path))
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            f"not a readable audio file ({detail}); convert it to 16 kHz WAV, e.g. ffmpeg -i IN -ar 16000 OUT.wav",
            source=str(path),
        ) from err
    if info.frames <= 0:
        raise EmptyFileError("audio file contains no samples; re-export it with sound in it", source=str(path))
    return info


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds of an audio file, read from its header (no decoding)."""
    info = _info(Path(path))
    return info.frames / info.samplerate


def read_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int = SAMPLE_RATE,
    mono: bool = True,
    max_seconds: float | None = None,
    require_rate: bool = False,
) -> np.ndarray:
    """Reads an audio file as float32 in [-1, 1] at ``sample_rate``.

    Args:
        path: any format libsndfile reads (wav, flac, ogg, mp3).
        sample_rate: output rate; the file is resampled (torchaudio sinc resampler) when its rate differs.
        mono: average the channels into one.
        max_seconds: if given, a longer file raises :class:`ClipTooLongError` (checked before decoding).
        require_rate: if True, a file whose rate is not ``sample_rate`` raises :class:`SampleRateError`
            instead of being resampled (for inputs that must already be at the model rate).

    Returns:
        (N,) float32 when ``mono``; otherwise (C, N) float32.

    Raises:
        MissingFileError, EmptyFileError, SampleRateError, ClipTooLongError, InputError (unreadable / non-finite).
    """
    path = Path(path)
    info = _info(path)
    duration = info.frames / info.samplerate
    if info.frames >= _UNKNOWN_FRAMES:  # libsndfile cannot read a file that does not declare its length
        raise InputError(
            "audio file does not declare its length (written to a pipe?); re-export it to a file, "
            "e.g. ffmpeg -i IN -ar 16000 OUT.wav",
            source=str(path),
        )
    if max_seconds is not None and duration > max_seconds + 1e-6:
        raise _too_long(f"{duration:.2f} s long", max_seconds, path)
    if require_rate and info.samplerate != sample_rate:
        raise SampleRateError(
            f"sample rate is {info.samplerate} Hz but {sample_rate} Hz is required; "
            f"resample it (e.g. ffmpeg -i IN -ar {sample_rate} OUT.wav)",
            source=str(path),
        )
    try:
        # With a maximum, never decode more than it (plus one frame to tell), whatever the header said: a small
        # FLAC of silence decodes to hours.
        limit = -1 if max_seconds is None else int(np.ceil(max_seconds * info.samplerate)) + 1
        data, file_rate = sf.read(str(path), frames=limit, dtype="float32", always_2d=True)  # (N, C)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise InputError(
            f"audio file is truncated or corrupt ({err}); re-export it, e.g. ffmpeg -i IN -ar 16000 OUT.wav",
            source=str(path),
        ) from err
    if data.shape[0] == 0:
        raise EmptyFileError("audio file contains no samples; re-export it with sound in it", source=str(path))
    if limit > 0 and data.shape[0] / file_rate > max_seconds + 1e-6:
        raise _too_long(f"longer than {max_seconds:g} s", max_seconds, path)
    if not np.isfinite(data).all():
        raise InputError("audio contains NaN or infinite samples; re-export it as PCM WAV", source=str(path))
    wav = data.T  # (C, N)
    if mono:
        wav = wav.mean(axis=0, keepdims=True)  # (1, N)
    if file_rate != sample_rate:
        import torchaudio.functional as AF  # only here: generation and training never resample (no torchaudio)

        wav = AF.resample(torch.from_numpy(np.ascontiguousarray(wav)), int(file_rate), int(sample_rate)).numpy()
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    return wav[0] if mono else wav


_UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's frame count of a file that does not declare its length


def _too_long(what: str, max_seconds: float, path: Path) -> ClipTooLongError:
    return ClipTooLongError(
        f"audio is {what}; at most {max_seconds:g} s is accepted: trim it "
        f"(e.g. ffmpeg -i IN -t {max_seconds:g} OUT.wav)",
        source=str(path),
    )


def write_audio(path: str | os.PathLike, wav: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> Path:
    """Writes a 16-bit PCM wav atomically (temporary name in the same directory, then ``os.replace``).

    Args:
        path: destination (parent directories are created).
        wav: (N,) mono or (C, N) float samples; values outside [-1, 1] are clipped.
        sample_rate: rate stored in the header.

    Returns:
        The destination path.
    """
    path = Path(path)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to("cpu", torch.float32).numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim not in (1, 2):
        raise ValueError(f"write_audio expects (N,) or (C, N) samples, got shape {wav.shape}")
    if not np.isfinite(wav).all():
        raise ValueError(f"refusing to write {path}: waveform contains NaN or infinite samples")
    data = np.clip(wav if wav.ndim == 1 else wav.T, -1.0, 1.0)  # soundfile wants (N, C)
    with atomic_open(path, "wb") as handle:
        sf.write(handle, data, int(sample_rate), format="WAV", subtype="PCM_16")
    return path
