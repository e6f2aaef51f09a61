"""Speaker embedding of a reference voice: (N,) 16 kHz waveform -> (256,) L2-normalised vector.

Two implementations of :class:`SpeakerEncoder`:

* :class:`ResemblyzerEncoder` (default): the GE2E speaker encoder of Resemblyzer (Wan et al. 2018), with the
  weights file ``resemblyzer/pretrained.pt`` that ships in the ``Resemblyzer`` pip package (sha256 checked). The
  package's own modules need librosa and webrtcvad, so it is never imported: this file re-implements its
  ``preprocess_wav`` + ``embed_utterance`` in torch (40-band power mel, 25 ms / 10 ms; 3-layer LSTM 256 ->
  Linear 256 + ReLU -> L2; 1.6 s partial utterances at 1.3 per second, min coverage 0.75, averaged, renormalised).
  Checked against the upstream ``VoiceEncoder().embed_utterance(preprocess_wav(wav))`` (Resemblyzer 0.1.4 with
  librosa 0.11 and webrtcvad, in a scratch environment): cosine 1.0000, max abs difference 3e-7 on espeak speech.
  The mel pads frames by reflection, as the librosa (< 0.10) the weights were trained with.
* :class:`TrainableSpeakerEncoder` (in ``speaker_trainable.py``, re-exported here, as are the interface
  :class:`SpeakerEncoder` and :func:`check_reference_voice` of ``speaker_base.py``): a small encoder the project
  trains itself (:func:`train_speaker_encoder`), saved as ``config.json`` + ``model.safetensors``.

:func:`load_speaker_encoder` picks one: ``"resemblyzer"`` or a directory written by ``TrainableSpeakerEncoder.save``.
Shape letters: B batch, N samples, T mel frames, F mel bands (40), D embedding (256).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from scipy.ndimage import binary_dilation
from torch import nn

from vssflow.constants import SAMPLE_RATE
from vssflow.errors import AssetError
from vssflow.features.speaker_base import MIN_REFERENCE_SECONDS, SpeakerEncoder, check_reference_voice
from vssflow.features.speaker_trainable import TrainableSpeakerConfig, TrainableSpeakerEncoder, train_speaker_encoder
from vssflow.files import sha256_file

__all__ = [
    "SpeakerEncoder",
    "ResemblyzerEncoder",
    "TrainableSpeakerConfig",
    "TrainableSpeakerEncoder",
    "train_speaker_encoder",
    "load_speaker_encoder",
    "check_reference_voice",
    "resemblyzer_weights_path",
    "RESEMBLYZER_SHA256",
    "MIN_REFERENCE_SECONDS",
]

RESEMBLYZER_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"  # Resemblyzer 0.1.4
_INT16_MAX = 2**15 - 1


# ---------------------------------------------------------------- Resemblyzer (GE2E)


class _ResemblyzerMel(nn.Module):
    """Resemblyzer's ``audio.wav_to_mel_spectrogram``: librosa power mel (Slaney), n_fft 400, hop 160, 40 bands."""

    def __init__(self):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=400,
            hop_length=160,
            n_mels=40,
            power=2.0,
            center=True,
            pad_mode="reflect",
            norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return rearrange(self.mel(wav), "... f t -> ... t f")  # (T, F)


class GE2ENet(nn.Module):
    """Resemblyzer's ``VoiceEncoder`` network: (B, T, 40) power mel -> (B, 256) L2-normalised."""

    def __init__(self, n_mels: int = 40, hidden: int = 256, layers: int = 3, dim: int = 256):
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, layers, batch_first=True)
        self.linear = nn.Linear(hidden, dim)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)  # hidden: (layers, B, H)
        return F.normalize(F.relu(self.linear(hidden[-1])), dim=-1)  # (B, D)


def resemblyzer_weights_path() -> Path:
    """Path of ``pretrained.pt`` inside the installed Resemblyzer package (found without importing it)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            "the Resemblyzer package is not installed; pip install --no-deps Resemblyzer==0.1.4 "
            "(or pass a directory with a trained speaker encoder)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


def _partial_slices(n_samples: int, rate: float, min_coverage: float, n_frames_partial: int = 160) -> list[slice]:
    """Resemblyzer's ``compute_partial_slices``: mel-frame slices of the 1.6 s partial utterances."""
    hop = 160
    n_frames = int(np.ceil((n_samples + 1) / hop))
    frame_step = int(np.round((SAMPLE_RATE / rate) / hop))
    slices = [
        slice(i, i + n_frames_partial)
        for i in range(0, max(1, n_frames - n_frames_partial + frame_step + 1), frame_step)
    ]
    last = slices[-1]
    coverage = (n_samples - last.start * hop) / (n_frames_partial * hop)
    if coverage < min_coverage and len(slices) > 1:
        slices = slices[:-1]
    return slices


def _normalize_volume(wav: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
    """Resemblyzer's ``normalize_volume(increase_only=True)``: raise quiet audio to ``target_dbfs`` RMS."""
    rms = np.sqrt(np.mean((wav.astype(np.float64) * _INT16_MAX) ** 2))
    change = target_dbfs - 20 * np.log10(max(rms, 1e-9) / _INT16_MAX)
    return wav if change < 0 else (wav * 10 ** (change / 20)).astype(np.float32)


def _voice_flags_webrtc(pcm: bytes, n_windows: int, window: int) -> np.ndarray | None:
    try:  # the C extension alone: the webrtcvad.py wrapper needs pkg_resources
        import _webrtcvad
    except ImportError:
        return None
    vad = _webrtcvad.create()
    _webrtcvad.init(vad)
    _webrtcvad.set_mode(vad, 3)
    flags = [
        _webrtcvad.process(vad, SAMPLE_RATE, pcm[i * window * 2 : (i + 1) * window * 2], window)
        for i in range(n_windows)
    ]
    return np.array(flags, dtype=bool)


def _trim_long_silences(wav: np.ndarray) -> tuple[np.ndarray, str]:
    """Resemblyzer's ``trim_long_silences``: drop silences longer than ~0.2 s (webrtcvad mode 3, 30 ms windows).

    Without the webrtcvad C extension an energy detector stands in (frames above -40 dB of the loudest frame).
    """
    window = 30 * SAMPLE_RATE // 1000
    wav = wav[: len(wav) - len(wav) % window]
    n = len(wav) // window
    pcm = np.round(wav * _INT16_MAX).clip(-_INT16_MAX - 1, _INT16_MAX).astype("<i2").tobytes()
    flags = _voice_flags_webrtc(pcm, n, window)
    vad = "webrtcvad"
    if flags is None:
        energy = 10 * np.log10(np.mean(wav.reshape(n, window).astype(np.float64) ** 2, axis=1) + 1e-12)
        flags, vad = energy > energy.max() - 40.0, "energy"
    width = 8  # moving average over 8 windows, as Resemblyzer
    padded = np.concatenate([np.zeros((width - 1) // 2), flags.astype(float), np.zeros(width // 2)])
    smooth = np.convolve(padded, np.ones(width) / width, mode="valid")
    mask = binary_dilation(np.round(smooth).astype(bool), np.ones(7))
    return wav[np.repeat(mask, window)], vad


class ResemblyzerEncoder(SpeakerEncoder):
    """Resemblyzer's pretrained GE2E encoder, re-implemented in torch (see the module docstring).

    Args:
        weights: path of ``pretrained.pt``; default the one in the installed Resemblyzer package.
        check_sha256: refuse a weights file whose sha256 is not :data:`RESEMBLYZER_SHA256`.
        preprocess: apply Resemblyzer's ``preprocess_wav`` (volume to -30 dBFS, long silences trimmed).
        rate, min_coverage: partial-utterance settings of ``embed_utterance``.
    """

    name = "resemblyzer-ge2e"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        check_sha256: bool = True,
        preprocess: bool = True,
        rate: float = 1.3,
        min_coverage: float = 0.75,
    ):
        path = Path(weights) if weights is not None else resemblyzer_weights_path()
        if not path.is_file():
            raise AssetError(
                f"{path}: Resemblyzer weights file is missing; reinstall with pip install --no-deps --force-reinstall "
                "Resemblyzer==0.1.4"
            )
        self.sha256 = sha256_file(path)
        if check_sha256 and self.sha256 != RESEMBLYZER_SHA256:
            raise AssetError(
                f"{path}: sha256 {self.sha256[:12]}... is not Resemblyzer 0.1.4's {RESEMBLYZER_SHA256[:12]}...; "
                "reinstall with pip install --no-deps --force-reinstall Resemblyzer==0.1.4"
            )
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in checkpoint["model_state"].items() if k.startswith(("lstm.", "linear."))}
            self.net = GE2ENet()
            self.net.load_state_dict(state, strict=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is an asset problem
            raise AssetError(f"{path}: cannot load Resemblyzer weights ({e}); reinstall Resemblyzer==0.1.4") from e
        self.net.eval()
        self.mel = _ResemblyzerMel()
        self.preprocess = preprocess
        self.rate = rate
        self.min_coverage = min_coverage
        self.vad = "none"
        if preprocess:
            self.vad = "webrtcvad" if importlib.util.find_spec("_webrtcvad") is not None else "energy"
        self.version = f"resemblyzer-0.1.4+sha256:{self.sha256[:12]};vad={self.vad}"

    def _embed(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav.numpy()
        if self.preprocess:
            x = _normalize_volume(x)
            trimmed, _ = _trim_long_silences(x)
            x = trimmed if len(trimmed) >= SAMPLE_RATE // 2 else x  # all "silence": keep the recording as it is
        slices = _partial_slices(len(x), self.rate, self.min_coverage)
        needed = slices[-1].stop * 160
        if needed >= len(x):
            x = np.pad(x, (0, needed - len(x)))
        mel = self.mel(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))  # (T, F)
        mels = torch.stack([mel[s] for s in slices]).to(self.device)  # (B, 160, F)
        partials = self.net(mels)  # (B, D)
        return F.normalize(partials.mean(0), dim=-1)  # (D,)


def load_speaker_encoder(spec: str | os.PathLike = "resemblyzer") -> SpeakerEncoder:
    """``"resemblyzer"`` (default) -> :class:`ResemblyzerEncoder`; a directory -> :class:`TrainableSpeakerEncoder`."""
    if str(spec) == "resemblyzer":
        return ResemblyzerEncoder()
    path = Path(spec)
    if path.is_dir():
        return TrainableSpeakerEncoder.load(path)
    if path.suffix == ".pt" and path.is_file():
        return ResemblyzerEncoder(path)
    raise AssetError(
        f"{spec}: unknown speaker encoder; use 'resemblyzer' or a directory written by TrainableSpeakerEncoder.save"
    )
