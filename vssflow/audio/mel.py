"""Log-mel spectrogram exactly as the paper (AudioLDM-16k settings).

n_fft 1024, window 1024 (periodic Hann), hop 160 (100 frames/s), 64 mel bins over 0-8 kHz with the Slaney mel
scale and Slaney (area) normalisation (= librosa's default ``htk=False, norm="slaney"``, which AudioLDM's
``librosa_mel_fn`` uses), magnitude STFT (power 1), natural ``log(clamp(x, 1e-5))``.
Framing: the signal is reflect-padded by n_fft/2 on both sides (centre framing), which gives N // 160 + 1 frames;
the last one is trimmed so a clip of d seconds has exactly d * 100 frames (AudioLDM pads/trims to this length too).

Peak normalisation: AudioLDM/VSSFlow scale every waveform to a peak of 0.5 before the mel. That is an option here
(``MelConfig.peak_normalize=0.5``) and OFF by default: our default codec is the mel itself, so normalising would
throw away each clip's loudness (a whisper and a crash would get the same level) and generated audio could never be
quiet or loud on purpose. Turn it on when using a pretrained AudioLDM VAE/HiFi-GAN, which were trained on peak-0.5
audio.

Shape letters: B batch, N samples, T mel frames, F = n_fft // 2 + 1 frequency bins, M = 64 mel bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vssflow.constants import F_MAX, F_MIN, HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE, WIN_LENGTH

__all__ = ["LOG_FLOOR", "MelConfig", "MelSpectrogram", "log_mel", "mel_filterbank", "num_mel_frames"]

LOG_FLOOR = 1e-5  # magnitude floor before the log; log(LOG_FLOOR) is the value of digital silence


@dataclass(frozen=True)
class MelConfig:
    """Mel settings; defaults are the paper's (AudioLDM-16k)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    win_length: int = WIN_LENGTH
    hop_length: int = HOP_LENGTH
    n_mels: int = N_MELS
    f_min: float = F_MIN
    f_max: float = F_MAX
    log_floor: float = LOG_FLOOR
    peak_normalize: float | None = None  # e.g. 0.5 as in AudioLDM; None keeps the clip's loudness

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def silence(self) -> float:
        """Log-mel value of digital silence (the clamp floor)."""
        return float(np.log(self.log_floor))


def num_mel_frames(n_samples: int, hop_length: int = HOP_LENGTH) -> int:
    """Mel frames for ``n_samples`` samples: ``n_samples // hop`` (1.0 s at 16 kHz -> 100)."""
    return int(n_samples) // int(hop_length)


_F_SP = 200.0 / 3  # Slaney mel scale: linear (1 mel = 200/3 Hz) below 1 kHz, logarithmic above
_MIN_LOG_HZ = 1000.0
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    return hz / _F_SP if hz < _MIN_LOG_HZ else _MIN_LOG_HZ / _F_SP + math.log(hz / _MIN_LOG_HZ) / _LOGSTEP


def _mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    log_part = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mels - _MIN_LOG_HZ / _F_SP))
    return torch.where(mels >= _MIN_LOG_HZ / _F_SP, log_part, _F_SP * mels)


def mel_filterbank(config: MelConfig = MelConfig()) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filterbank (librosa's default), shape (F, M) float32.

    torchaudio's ``melscale_fbanks(norm="slaney", mel_scale="slaney")`` computed the same way in plain torch (a test
    checks they agree), so that generation does not import torchaudio: a GPU machine's own PyTorch may have none
    that matches it."""
    all_freqs = torch.linspace(0, config.sample_rate // 2, config.n_freqs)  # (F,)
    m_pts = torch.linspace(_hz_to_mel(config.f_min), _hz_to_mel(config.f_max), config.n_mels + 2)
    f_pts = _mel_to_hz(m_pts)  # (M + 2,) the triangles' edges and centres in Hz
    f_diff = f_pts[1:] - f_pts[:-1]  # (M + 1,)
    slopes = f_pts[None, :] - all_freqs[:, None]  # (F, M + 2)
    down = -slopes[:, :-2] / f_diff[:-1]  # (F, M)
    up = slopes[:, 2:] / f_diff[1:]  # (F, M)
    fb = torch.clamp(torch.minimum(down, up), min=0.0)
    enorm = 2.0 / (f_pts[2 : config.n_mels + 2] - f_pts[: config.n_mels])  # Slaney norm: constant energy per band
    return (fb * enorm[None, :]).float()


class MelSpectrogram(nn.Module):
    """Waveform -> log-mel, for torch (B, N) / (N,) tensors and numpy (N,) / (B, N) arrays.

    Returns (B, T, M) for batched input and (T, M) for a single waveform, with T = N // hop; numpy in, numpy out.
    """

    def __init__(self, config: MelConfig = MelConfig()):
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_length, periodic=True), persistent=False)
        self.register_buffer("fbank", mel_filterbank(config), persistent=False)  # (F, M)

    def magnitude(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, T, F) STFT magnitude, T = N // hop."""
        cfg = self.config
        n_frames = num_mel_frames(wav.shape[-1], cfg.hop_length)
        if n_frames == 0:
            return wav.new_zeros(wav.shape[0], 0, cfg.n_freqs)
        pad = cfg.n_fft // 2
        # reflect needs more samples than the pad; very short inputs are zero-padded instead
        mode = "reflect" if wav.shape[-1] > pad else "constant"
        padded = F.pad(wav[:, None, :], (pad, pad), mode=mode)[:, 0]  # (B, N + n_fft)
        spec = torch.stft(
            padded,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window,
            center=False,
            return_complex=True,
        )  # (B, F, N // hop + 1)
        return spec.abs()[..., :n_frames].transpose(1, 2)  # (B, T, F)

    def forward(self, wav: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Args: wav (B, N) or (N,) float in [-1, 1]. Returns: log-mel (B, T, M) or (T, M)."""
        is_numpy = isinstance(wav, np.ndarray)
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)) if is_numpy else wav
        x = x.to(self.window.device, torch.float32)
        single = x.dim() == 1
        if single:
            x = x[None]
        if x.dim() != 2:
            raise ValueError(f"MelSpectrogram expects a (B, N) or (N,) waveform, got shape {tuple(x.shape)}")
        if self.config.peak_normalize is not None:
            x = x - x.mean(dim=-1, keepdim=True)  # AudioLDM removes the DC offset first
            x = x / (x.abs().amax(dim=-1, keepdim=True) + 1e-8) * self.config.peak_normalize
        mel = self.magnitude(x) @ self.fbank  # (B, T, M)
        log_mel = torch.log(torch.clamp(mel, min=self.config.log_floor))
        if single:
            log_mel = log_mel[0]
        return log_mel.cpu().numpy() if is_numpy else log_mel


_DEFAULT: dict[MelConfig, MelSpectrogram] = {}


def log_mel(wav: torch.Tensor | np.ndarray, config: MelConfig = MelConfig()) -> torch.Tensor | np.ndarray:
    """Functional form of :class:`MelSpectrogram` (the module is cached per config, on CPU)."""
    if config not in _DEFAULT:
        _DEFAULT[config] = MelSpectrogram(config)
    module = _DEFAULT[config]
    if isinstance(wav, torch.Tensor) and wav.device != module.window.device:
        return MelSpectrogram(config).to(wav.device)(wav)
    return module(wav)
