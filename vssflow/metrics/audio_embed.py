"""Distribution metrics on a pluggable audio embedding: Fréchet distance (FD) and KL divergence.

Which embedding is used is always part of the metric's name in reports:

* ``FD-WhisperBase`` (default): the Whisper-base encoder (CTranslate2 weights from the pip packages, see
  :mod:`vssflow.metrics.asr`), 512-d frames at 50 frames/s mean-pooled over the clip. A speech model, so weaker
  on sound-effect semantics than PANNs/PaSST/VGGish; this is **not** FAD-VGGish and must never be called so.
* any local network, e.g. PANNs, PaSST or VGGish exported by the user to TorchScript (``torch.jit.save``) as a
  module mapping a (B, N) 16 kHz waveform batch to (B, D) embeddings, or to a tuple (embeddings, class logits):
  ``load_audio_embedding("torchscript:/path/model.pt", name="PANNs-CNN14")``. No such weights ship offline.

KL: the paper's KL compares the class posteriors of a pretrained tagger on real vs generated audio, clip by clip.
:func:`kl_paired` does that on any posteriors; the evaluation uses the corpus sound-class classifier of
:mod:`vssflow.metrics.classifier` (a local tagger's ``probs`` can be passed in instead).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vssflow.errors import AssetError


class AudioEmbedding(ABC):
    """Waveforms -> clip embeddings. ``name`` goes into metric names ("FD-<name>")."""

    name: str = "embedding"
    dim: int = 0

    @abstractmethod
    def embed(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """List of (N_i,) float 16 kHz waveforms -> (B, D) float64 clip embeddings."""

    def probs(self, wavs: Sequence[np.ndarray]) -> np.ndarray | None:
        """(B, K) class posteriors when the network is a tagger, else None."""
        return None


class WhisperBaseEmbedding(AudioEmbedding):
    """Whisper-base encoder frames, mean-pooled over each clip's own length (zero padding excluded)."""

    name = "WhisperBase"
    dim = 512

    def __init__(self, asr=None, *, threads: int = 1):
        from vssflow.metrics.asr import WhisperASR

        self.asr = asr if asr is not None else WhisperASR(threads=threads)

    def embed(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        frames = self.asr.encode(list(wavs))
        return np.stack([f.mean(0) for f in frames]).astype(np.float64)


class TorchScriptEmbedding(AudioEmbedding):
    """A user's local network (PANNs, PaSST, VGGish, ...) exported to TorchScript; see the module docstring."""

    def __init__(self, path: str | os.PathLike, *, name: str | None = None):
        import torch

        path = Path(path)
        if not path.is_file():
            raise AssetError(f"{path}: no TorchScript file; export your PANNs/PaSST/VGGish with torch.jit.save")
        self.module = torch.jit.load(str(path), map_location="cpu").eval()
        self.name = name or path.stem
        self._torch = torch

    def _run(self, wavs: Sequence[np.ndarray]):
        torch = self._torch
        n = max(len(w) for w in wavs)
        batch = np.zeros((len(wavs), n), np.float32)
        for i, w in enumerate(wavs):
            batch[i, : len(w)] = w
        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch))
        return out if isinstance(out, tuple) else (out, None)

    def embed(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        emb, _ = self._run(wavs)
        self.dim = int(emb.shape[-1])
        return emb.double().numpy()

    def probs(self, wavs: Sequence[np.ndarray]) -> np.ndarray | None:
        _, logits = self._run(wavs)
        return None if logits is None else self._torch.softmax(logits.double(), -1).numpy()


def load_audio_embedding(spec: str = "whisper-base", *, name: str | None = None, asr=None) -> AudioEmbedding:
    """``"whisper-base"`` (default) or ``"torchscript:/path/to/model.pt"`` (a local PANNs/PaSST/VGGish export)."""
    if spec in ("whisper-base", "whisper"):
        return WhisperBaseEmbedding(asr)
    if spec.startswith("torchscript:"):
        return TorchScriptEmbedding(spec.split(":", 1)[1], name=name)
    raise AssetError(f"unknown audio embedding {spec!r}; use 'whisper-base' or 'torchscript:/path/model.pt'")


def frechet_distance(real: np.ndarray, gen: np.ndarray, *, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to (N, D) real and (M, D) generated embeddings.

    ``|mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))``; with fewer clips than dimensions the covariances are
    singular, so ``eps`` is added to their diagonals (as in the reference FAD/FID code). Needs N, M >= 2.
    """
    real, gen = np.asarray(real, np.float64), np.asarray(gen, np.float64)
    if len(real) < 2 or len(gen) < 2:
        raise ValueError("frechet_distance: need at least 2 real and 2 generated embeddings")
    mu1, mu2 = real.mean(0), gen.mean(0)
    s1, s2 = np.atleast_2d(np.cov(real, rowvar=False)), np.atleast_2d(np.cov(gen, rowvar=False))  # (D, D), D = 1 too
    off = np.eye(len(mu1)) * eps
    # tr((S1 S2)^(1/2)) = sum of sqrt(eig(S1^(1/2) S2 S1^(1/2))): a symmetric PSD matrix, so eigh gives real,
    # non-negative eigenvalues (up to rounding) without the non-symmetric sqrtm (its ``disp`` goes in SciPy 1.18).
    w1, v1 = np.linalg.eigh(s1 + off)
    root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T  # S1^(1/2)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ (s2 + off) @ root1), 0.0, None)).sum()
    return float(max(0.0, ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean))


def kl_paired(p_real: np.ndarray, p_gen: np.ndarray, *, eps: float = 1e-6) -> np.ndarray:
    """Per-clip KL(p_real || p_gen) of (B, K) class posteriors (rows renormalised; eps avoids log 0): (B,)."""
    p = np.clip(np.asarray(p_real, np.float64), eps, None)
    q = np.clip(np.asarray(p_gen, np.float64), eps, None)
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    return (p * (np.log(p) - np.log(q))).sum(1)
