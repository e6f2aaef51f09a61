"""The speaker encoder the project trains itself (the fallback when Resemblyzer's weights are not wanted).

A small log-mel -> conv -> LSTM -> stats-pooling -> 256 encoder, trained by :func:`train_speaker_encoder` as an
additive-margin cosine-softmax speaker classifier on (wav, speaker id) pairs; saved as ``config.json`` +
``model.safetensors``. Shape letters: B batch, N samples, T mel frames, F mel bands, C channels, H hidden,
D embedding (256), S speakers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import nn

from vssflow.constants import SAMPLE_RATE, SPEAKER_DIM
from vssflow.errors import AssetError
from vssflow.features.speaker_base import SpeakerEncoder, check_reference_voice

__all__ = ["TrainableSpeakerConfig", "TrainableSpeakerEncoder", "train_speaker_encoder"]


@dataclass(frozen=True)
class TrainableSpeakerConfig:
    """Size and training settings of :class:`TrainableSpeakerEncoder` (defaults: tiny, trains on CPU)."""

    n_mels: int = 40
    channels: int = 64
    hidden: int = 64
    dim: int = SPEAKER_DIM
    crop_seconds: float = 1.6  # training crops
    batch_size: int = 16
    lr: float = 2e-3
    scale: float = 10.0  # cosine-softmax temperature
    margin: float = 0.1  # additive margin on the true class


class _TrainableNet(nn.Module):
    """(B, N) wav -> (B, D): log-mel (utterance mean removed) -> 2 conv -> LSTM -> mean+std pooling -> Linear."""

    def __init__(self, cfg: TrainableSpeakerConfig):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=cfg.n_mels, norm="slaney", mel_scale="slaney"
        )
        self.convs = nn.Sequential(
            nn.Conv1d(cfg.n_mels, cfg.channels, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(cfg.channels, cfg.channels, 5, padding=4, dilation=2),
            nn.ReLU(),
        )
        self.lstm = nn.LSTM(cfg.channels, cfg.hidden, batch_first=True)
        self.proj = nn.Linear(2 * cfg.hidden, cfg.dim)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = torch.log(self.mel(wav) + 1e-6)  # (B, F, T)
        x = x - x.mean(dim=-1, keepdim=True)  # cepstral mean normalisation: robust to loudness and channel
        x = self.convs(x)  # (B, C, T)
        x, _ = self.lstm(rearrange(x, "b c t -> b t c"))  # (B, T, H)
        stats = torch.cat([x.mean(1), x.std(1)], dim=-1)  # (B, 2H)
        return F.normalize(self.proj(stats), dim=-1)  # (B, D)


class TrainableSpeakerEncoder(SpeakerEncoder):
    """A small speaker encoder trained by the project (:func:`train_speaker_encoder`); save/load a directory."""

    name = "trainable-speaker"

    def __init__(self, config: TrainableSpeakerConfig = TrainableSpeakerConfig(), *, seed: int = 0):
        self.config = config
        self.dim = config.dim
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
            torch.manual_seed(seed)
            self.net = _TrainableNet(config)
        self.net.eval()
        self.steps_trained = 0

    @property
    def version(self) -> str:  # type: ignore[override]
        digest = hashlib.sha256()
        for k, v in sorted(self.net.state_dict().items()):
            digest.update(k.encode())
            digest.update(v.detach().cpu().numpy().tobytes())
        return f"trainable-1+{digest.hexdigest()[:12]}"

    def _embed(self, wav: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        return self.net(_normalize_peak(wav)[None].to(self.device))[0]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (each file atomically)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / ".model.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(tmp))
        os.replace(tmp, d / "model.safetensors")
        meta = {"kind": self.name, "config": asdict(self.config), "steps_trained": self.steps_trained}
        tmp = d / ".config.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, d / "config.json")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TrainableSpeakerEncoder:
        """Load an encoder written by :meth:`save`."""
        from safetensors.torch import load_file

        d = Path(directory)
        try:
            meta = json.loads((d / "config.json").read_text())
            state = load_file(str(d / "model.safetensors"))
        except (OSError, ValueError) as e:
            raise AssetError(
                f"{d}: not a trained speaker encoder directory ({e}); use 'resemblyzer' or a directory written by "
                "TrainableSpeakerEncoder.save"
            ) from e
        enc = cls(TrainableSpeakerConfig(**meta["config"]))
        enc.net.load_state_dict(state, strict=True)
        enc.steps_trained = int(meta.get("steps_trained", 0))
        return enc


def _normalize_peak(wav: torch.Tensor) -> torch.Tensor:
    return wav / wav.abs().amax(dim=-1, keepdim=True).clamp_min(1e-4) * 0.5


def train_speaker_encoder(
    wavs: Sequence[np.ndarray],
    speaker_ids: Sequence[str | int],
    *,
    steps: int,
    config: TrainableSpeakerConfig = TrainableSpeakerConfig(),
    encoder: TrainableSpeakerEncoder | None = None,
    seed: int = 0,
) -> tuple[TrainableSpeakerEncoder, list[float]]:
    """Train a :class:`TrainableSpeakerEncoder` as an additive-margin cosine-softmax speaker classifier.

    Args:
        wavs: (N_i,) float32 16 kHz utterances (each at least 1 s).
        speaker_ids: one label per utterance; at least two distinct speakers.
        steps: optimiser steps; each draws ``config.batch_size`` random crops of ``config.crop_seconds``.
        encoder: continue training this encoder (default: a new one from ``config``).
        seed: seeds the crops, the batches and a new encoder's initialisation.

    Returns:
        The trained encoder and the loss of every step.
    """
    if len(wavs) != len(speaker_ids) or len(set(speaker_ids)) < 2:
        raise ValueError("train_speaker_encoder needs one speaker id per wav and at least two speakers")
    wavs = [check_reference_voice(w, source=f"utterance {i}") for i, w in enumerate(wavs)]
    labels = {s: i for i, s in enumerate(sorted(set(speaker_ids), key=str))}
    y_all = torch.tensor([labels[s] for s in speaker_ids])
    enc = encoder or TrainableSpeakerEncoder(config, seed=seed)
    cfg = enc.config
    gen = torch.Generator().manual_seed(seed)
    head = nn.Parameter(torch.randn(len(labels), cfg.dim, generator=gen) * 0.1)
    opt = torch.optim.AdamW([*enc.net.parameters(), head], lr=cfg.lr, weight_decay=1e-4)
    crop = int(cfg.crop_seconds * SAMPLE_RATE)
    losses = []
    enc.net.train()
    for _ in range(steps):
        idx = torch.randint(len(wavs), (cfg.batch_size,), generator=gen)
        batch = []
        for i in idx.tolist():
            w = torch.from_numpy(wavs[i])
            if len(w) < crop:
                w = F.pad(w, (0, crop - len(w)))
            start = int(torch.randint(len(w) - crop + 1, (1,), generator=gen))
            batch.append(w[start : start + crop])
        x = _normalize_peak(torch.stack(batch))  # (B, N)
        emb = enc.net(x)  # (B, D)
        cos = emb @ F.normalize(head, dim=-1).T  # (B, S)
        y = y_all[idx]
        logits = cfg.scale * (cos - cfg.margin * F.one_hot(y, len(labels)))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc.net.parameters(), 5.0)
        opt.step()
        losses.append(float(loss.detach()))
        enc.steps_trained += 1
    enc.net.eval()
    assert all(math.isfinite(v) for v in losses)
    return enc, losses
