"""The speaker encoder's interface and the check every reference voice passes, apart from any implementation.

:class:`SpeakerEncoder` is what the Resemblyzer encoder (``speaker.py``) and the trainable one
(``speaker_trainable.py``) implement; :func:`check_reference_voice` is what a reference voice must be before
either embeds it (also used by the extraction stages before any model is loaded).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F

from vssflow.constants import SAMPLE_RATE, SPEAKER_DIM
from vssflow.errors import ReferenceVoiceError

__all__ = ["SpeakerEncoder", "check_reference_voice", "MIN_REFERENCE_SECONDS"]

MIN_REFERENCE_SECONDS = 1.0


def check_reference_voice(wav: np.ndarray | torch.Tensor, *, source: str | None = None) -> np.ndarray:
    """Validate a reference voice and return it as (N,) float32 at 16 kHz.

    Raises:
        ReferenceVoiceError: not 1-D, non-finite, shorter than 1 s, or silent.
    """
    wav = np.asarray(wav.detach().cpu() if isinstance(wav, torch.Tensor) else wav, dtype=np.float32)
    if wav.ndim == 2 and 1 in wav.shape:
        wav = wav.reshape(-1)
    if wav.ndim != 1:
        raise ReferenceVoiceError(
            f"reference voice must be a mono waveform (N,), got shape {wav.shape}; mix it down to one channel",
            source=source,
        )
    seconds = len(wav) / SAMPLE_RATE
    if seconds < MIN_REFERENCE_SECONDS:
        raise ReferenceVoiceError(
            f"reference voice is {seconds:.2f} s long, at least {MIN_REFERENCE_SECONDS:g} s of speech is needed; "
            "give a longer recording of the speaker",
            source=source,
        )
    if not np.isfinite(wav).all():
        raise ReferenceVoiceError("reference voice has NaN or infinite samples; re-export it as PCM WAV", source=source)
    if float(np.abs(wav).max()) < 1e-4:
        raise ReferenceVoiceError(
            "reference voice is silent; give a recording in which the speaker talks", source=source
        )
    return wav


class SpeakerEncoder(ABC):
    """Reference voice -> speaker embedding. Subclasses set ``name``, ``version`` and implement ``_embed``."""

    name: str = "speaker"
    version: str = "0"
    dim: int = SPEAKER_DIM

    def embed(self, wav: np.ndarray | torch.Tensor, *, source: str | None = None) -> np.ndarray:
        """Embed one reference voice.

        Args:
            wav: (N,) float waveform at 16 kHz, at least 1 s long.
            source: what the voice belongs to (file, clip id), for error messages.

        Returns:
            (D,) float32 with unit L2 norm.

        Raises:
            ReferenceVoiceError: too short, silent, non-finite or not mono.
        """
        wav = check_reference_voice(wav, source=source)
        with torch.inference_mode():
            e = self._embed(torch.from_numpy(wav)).float().cpu()
        e = F.normalize(e, dim=-1).numpy().astype(np.float32)
        assert e.shape == (self.dim,)
        return e

    def embed_file(self, path: str | os.PathLike) -> np.ndarray:
        """Read an audio file (any rate, resampled to 16 kHz mono) and embed it; see :meth:`embed`."""
        from vssflow.audio.io import read_audio

        return self.embed(read_audio(path), source=str(path))

    def to(self, device: str | torch.device) -> SpeakerEncoder:
        """Move the network to ``device`` (inputs follow it; embeddings always come back as numpy on the CPU)."""
        self.net.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @abstractmethod
    def _embed(self, wav: torch.Tensor) -> torch.Tensor:
        """(N,) float32 CPU tensor -> (D,)."""
