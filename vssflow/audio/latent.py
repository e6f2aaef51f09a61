"""The latent codec interface, apart from any codec: log-mel (B, T_mel, 64) at 100 Hz <-> latent (B, N, C) at 25 Hz.

:class:`LatentCodec` and the helpers every codec shares (mel padding, the shape check, ``codec.json``). The codecs:
``MelCodec`` and :func:`load_codec` in ``codec.py``, ``AutoencoderKLCodec`` in ``vae.py``; both import this file.

Shape letters: B batch, T mel frames (100 Hz), M = 64 mel bins, N latent frames (25 Hz), C latent channels.
"""

from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path

import torch

from vssflow.audio.mel import LOG_FLOOR
from vssflow.constants import LATENT_HZ, MEL_PER_LATENT, N_MELS
from vssflow.errors import AssetError, FeatureShapeError

__all__ = ["CODEC_JSON", "MEL_SILENCE", "LatentCodec", "check_mel", "pad_mel", "read_codec_json"]

CODEC_JSON = "codec.json"
MEL_SILENCE = math.log(LOG_FLOOR)  # pad value: digital silence in log-mel


def pad_mel(mel: torch.Tensor, multiple: int, value: float = MEL_SILENCE) -> torch.Tensor:
    """Pads (B, T, M) along T with ``value`` (silence) up to a multiple of ``multiple``."""
    extra = (-mel.shape[1]) % multiple
    if extra == 0:
        return mel
    return torch.nn.functional.pad(mel, (0, 0, 0, extra), value=value)  # (B, T + extra, M)


def check_mel(mel: torch.Tensor, n_mels: int) -> None:
    """Raises FeatureShapeError unless ``mel`` is (B, T_mel, n_mels)."""
    if mel.dim() != 3 or mel.shape[-1] != n_mels:
        raise FeatureShapeError(f"mel must have shape (B, T_mel, {n_mels}), got {tuple(mel.shape)}", source="mel")


class LatentCodec(ABC):
    """Maps log-mel (B, T_mel, 64) to a latent sequence (B, N, C) at ``latent_hz`` and back.

    ``encode`` pads T_mel up to a multiple of ``mel_per_latent`` (with silence), so N = ceil(T_mel / 4);
    ``decode`` returns N * mel_per_latent frames (callers trim to the clip length).
    """

    kind: str = ""  # name in codec.json
    latent_dim: int
    latent_hz: int = LATENT_HZ
    mel_per_latent: int = MEL_PER_LATENT
    n_mels: int = N_MELS

    @abstractmethod
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, T_mel, M) log-mel -> (B, N, C) latent."""

    @abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, N, C) latent -> (B, N * mel_per_latent, M) log-mel."""

    @abstractmethod
    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``codec.json`` (+ weights/statistics) into ``directory``; returns it."""

    @abstractmethod
    def to(self, device: str | torch.device) -> LatentCodec:
        """Moves tensors/weights to ``device``; returns self."""

    def latent_frames(self, mel_frames: int) -> int:
        """N for a mel of ``mel_frames`` frames (ceil division)."""
        return -(-int(mel_frames) // self.mel_per_latent)

    def _write_json(self, directory: Path, payload: dict) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        body = {"kind": self.kind, "latent_dim": self.latent_dim, "latent_hz": self.latent_hz, **payload}
        tmp = directory / f".{CODEC_JSON}.tmp"
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, directory / CODEC_JSON)


def read_codec_json(directory: Path) -> dict:
    """The ``codec.json`` a codec saved into ``directory`` (one-line AssetError when it is missing or not JSON)."""
    path = directory / CODEC_JSON
    if not path.is_file():
        raise AssetError(f"{path}: no codec description found; pass a directory written by codec.save()")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AssetError(f"{path}: codec.json is not valid JSON ({err.msg}); re-save the codec") from err
