"""Waveform from log-mel: Griffin-Lim (default, no weights) or a HiFi-GAN (``transformers.SpeechT5HifiGan``).

Griffin-Lim first turns the mel into a linear STFT magnitude (a non-negative fit by default, or the filterbank's
pseudo-inverse: :mod:`vssflow.audio.mel_inversion`), then starts from a phase estimated from that magnitude and
refines it with a few fast Griffin-Lim iterations (:mod:`vssflow.audio.phase`).

Both take natural-log mel (B, T, 64) at 100 Hz, exactly what :class:`vssflow.audio.mel.MelSpectrogram` produces,
and return (B, T * 160) samples at 16 kHz. AudioLDM's HiFi-GAN (the ``vocoder/`` folder of an AudioLDM checkpoint,
``model_in_dim=64, upsampling 5*4*2*2*2 = 160, normalize_before=false``) is fed this natural-log mel directly, as
AudioLDM's pipeline does; if a checkpoint sets ``normalize_before`` the model applies its own stored mean/scale.
AudioLDM vocoders were trained on peak-0.5 audio (see ``MelConfig.peak_normalize``).

Shape letters: B batch, T mel frames, M = 64 mel bins, F = n_fft // 2 + 1 STFT bins.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vssflow.audio.mel import MelConfig, mel_filterbank
from vssflow.audio.mel_inversion import INVERSIONS, MelInverter
from vssflow.audio.phase import fast_griffin_lim, pghi_phase
from vssflow.errors import AssetError, FeatureShapeError

__all__ = ["GriffinLimConfig", "GriffinLimVocoder", "HiFiGanVocoder", "Vocoder", "load_vocoder"]


class Vocoder(ABC):
    """log-mel (B, T, M) or (T, M) -> waveform (B, T * hop) or (T * hop,), float32 at ``sample_rate``."""

    sample_rate: int
    hop_length: int
    n_mels: int

    @abstractmethod
    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, T, M) -> (B, T * hop)."""

    def to(self, device: str | torch.device) -> Vocoder:
        return self

    def __call__(self, mel: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        is_numpy = isinstance(mel, np.ndarray)
        x = torch.from_numpy(np.asarray(mel, dtype=np.float32)) if is_numpy else mel.float()
        single = x.dim() == 2
        if single:
            x = x[None]
        if x.dim() != 3 or x.shape[-1] != self.n_mels:
            raise FeatureShapeError(f"mel must have shape (B, T, {self.n_mels}), got {tuple(x.shape)}", source="mel")
        with torch.no_grad():
            wav = self.vocode(x) if x.shape[1] > 0 else x.new_zeros(x.shape[0], 0)  # (B, T * hop)
        wav = wav[0] if single else wav
        return wav.cpu().numpy() if is_numpy else wav


@dataclass(frozen=True)
class GriffinLimConfig:
    """Griffin-Lim settings. ``n_iter`` trades quality for speed (generation cost includes this decode).

    Attributes:
        n_iter: STFT/iSTFT refinement pairs; the decode cost is about proportional to it.
        momentum: fast Griffin-Lim momentum (0 = plain Griffin-Lim).
        init: starting phase, "pghi" (phase-gradient estimate, see :mod:`vssflow.audio.phase`) or "zeros".
            From the "pghi" start 16 iterations (momentum 0.9) reconstruct real speech better (spectral
            convergence, mel distance) than the previous default, 32 iterations from "zeros" with momentum 0.99
            (``GriffinLimConfig(n_iter=32, momentum=0.99, init="zeros")``, equal to ``torchaudio``'s
            ``griffinlim``), at ~40 % of its cost.
        mel: the mel settings the input was computed with.
        inversion: mel -> linear magnitude, "nnls" (non-negative fit by multiplicative updates) or "pinv" (the
            filterbank's pseudo-inverse clamped at 0, the default before issue 13). See
            :mod:`vssflow.audio.mel_inversion` and the measured table in ``docs/performance.md``.
        inversion_iter: multiplicative updates of "nnls" (each costs ~0.5 ms per 2 s clip on one CPU core).
    """

    n_iter: int = 16
    momentum: float = 0.9
    init: str = "pghi"
    mel: MelConfig = MelConfig()
    inversion: str = "nnls"
    inversion_iter: int = 20

    def __post_init__(self) -> None:
        if self.init not in ("pghi", "zeros"):
            raise ValueError(f"GriffinLimConfig.init={self.init!r}; expected 'pghi' or 'zeros'")
        if self.inversion not in INVERSIONS:
            raise ValueError(f"GriffinLimConfig.inversion={self.inversion!r}; expected one of {INVERSIONS}")
        if self.inversion_iter < 0:
            raise ValueError(f"GriffinLimConfig.inversion_iter={self.inversion_iter}; expected >= 0")


class GriffinLimVocoder(Vocoder):
    """exp(log-mel) -> linear magnitude (``config.inversion``) -> phase reconstruction.

    Deterministic, needs no weights. The mel inversion is one matmul ("pinv") or ``inversion_iter`` pairs of
    small matmuls ("nnls", ~20 % of the decode); the rest of the cost is ``n_iter`` STFT/iSTFT pairs over the whole
    batch at once (plus, with the "pghi" start, one pass over the frames).
    """

    def __init__(self, config: GriffinLimConfig = GriffinLimConfig()):
        self.config = config
        mel = config.mel
        self.sample_rate, self.hop_length, self.n_mels = mel.sample_rate, mel.hop_length, mel.n_mels
        self.window = torch.hann_window(mel.win_length, periodic=True)
        self.inverter = MelInverter(mel_filterbank(mel), method=config.inversion, n_iter=config.inversion_iter)

    def to(self, device: str | torch.device) -> GriffinLimVocoder:
        self.window, self.inverter = self.window.to(device), self.inverter.to(device)
        return self

    def magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, T, M) -> the STFT magnitude (B, F, T + 1) that Griffin-Lim reconstructs."""
        magnitude = self.inverter(torch.exp(mel.to(self.window.device)))  # (B, T, F)
        # the mel has N // hop frames (the last centre frame was trimmed); repeat the last one back so that
        # centre-framed Griffin-Lim yields exactly T * hop samples
        return torch.cat([magnitude, magnitude[:, -1:]], dim=1).transpose(1, 2)  # (B, F, T + 1)

    def reconstruct(self, magnitude: torch.Tensor) -> torch.Tensor:
        """STFT magnitude (B, F, T + 1) -> waveform (B, T * hop) by the configured phase reconstruction."""
        cfg = self.config.mel
        stft = dict(n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length)
        if self.config.init == "pghi":
            phase = pghi_phase(magnitude, **stft)
        else:
            phase = torch.zeros_like(magnitude)
        return fast_griffin_lim(
            magnitude, phase, **stft, window=self.window, n_iter=self.config.n_iter,
            momentum=self.config.momentum, length=(magnitude.shape[-1] - 1) * cfg.hop_length,
        )  # fmt: skip  # (B, T * hop)

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(self.magnitude(mel))


class HiFiGanVocoder(Vocoder):
    """Frozen ``transformers.SpeechT5HifiGan`` loaded from a local directory (e.g. AudioLDM's ``vocoder/``)."""

    def __init__(self, model, *, mel: MelConfig = MelConfig()):
        cfg = model.config
        upsample = int(np.prod(cfg.upsample_rates))
        if cfg.model_in_dim != mel.n_mels:
            raise AssetError(f"HiFi-GAN takes {cfg.model_in_dim} mel bins but vssflow uses {mel.n_mels}")
        if upsample != mel.hop_length or int(cfg.sampling_rate) != mel.sample_rate:
            raise AssetError(
                f"HiFi-GAN upsamples by {upsample} at {cfg.sampling_rate} Hz; vssflow needs "
                f"{mel.hop_length} at {mel.sample_rate} Hz (an AudioLDM 16 kHz vocoder)"
            )
        self.model = model.eval().requires_grad_(False)
        self.sample_rate, self.hop_length, self.n_mels = mel.sample_rate, mel.hop_length, mel.n_mels

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, mel: MelConfig = MelConfig()) -> HiFiGanVocoder:
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise AssetError(f"{directory}: no HiFi-GAN config.json here; pass the vocoder folder of the checkpoint")
        from transformers import SpeechT5HifiGan

        try:
            model = SpeechT5HifiGan.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as err:
            raise AssetError(f"{directory}: cannot load SpeechT5HifiGan ({str(err).splitlines()[0]})") from err
        return cls(model.float(), mel=mel)

    def to(self, device: str | torch.device) -> HiFiGanVocoder:
        self.model.to(device)
        return self

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        wav = self.model(mel.to(self.model.device))  # (B, T * 160 + k), AudioLDM's kernels add 32 samples
        length = mel.shape[1] * self.hop_length
        if wav.shape[-1] < length:
            wav = torch.nn.functional.pad(wav, (0, length - wav.shape[-1]))
        return wav[:, :length]  # (B, T * 160), trimmed as AudioLDM trims to the original length


def load_vocoder(spec: str | os.PathLike | None = None, **options) -> Vocoder:
    """``None`` or ``"griffinlim"`` -> :class:`GriffinLimVocoder`; a directory -> :class:`HiFiGanVocoder`.

    ``options`` go to the chosen class (``config=GriffinLimConfig(...)`` or ``mel=MelConfig(...)``).
    """
    if spec is None or str(spec).lower() in ("griffinlim", "griffin-lim", "griffin_lim"):
        return GriffinLimVocoder(**options)
    path = Path(spec)
    if not path.is_dir():
        raise AssetError(f"{spec}: vocoder must be 'griffinlim' or a SpeechT5HifiGan directory; check the path")
    return HiFiGanVocoder.from_pretrained(path, **options)
