"""Latent codecs: log-mel (B, T_mel, 64) at 100 Hz <-> latent (B, N, C) at 25 Hz, the grid the DiT works on.

``LatentCodec`` is the interface (``latent.py``, re-exported here); ``MelCodec`` (default) groups four mel frames
into one 256-channel latent frame and normalises each channel with mean/std statistics fitted on data;
``vssflow.audio.vae.AutoencoderKLCodec`` wraps an AudioLDM-style mel VAE. A codec saves itself into a directory
(``codec.json`` + weights/statistics) and ``load_codec(dir)`` rebuilds it from there.

Shape letters: B batch, T mel frames (100 Hz), M = 64 mel bins, N latent frames (25 Hz), C latent channels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from safetensors.torch import load_file, save_file

from vssflow.audio.latent import CODEC_JSON, LatentCodec, check_mel, pad_mel, read_codec_json
from vssflow.constants import MEL_PER_LATENT, N_MELS
from vssflow.errors import AssetError, FeatureShapeError

__all__ = ["CODEC_JSON", "LatentCodec", "MelCodec", "load_codec", "match_global_variance", "pad_mel"]


class MelCodec(LatentCodec):
    """Default codec: four mel frames grouped into one latent frame (25 Hz x 256 channels), then normalised.

    Channel c of the grouped frame n is mel bin c % 64 of mel frame 4n + c // 64; it is normalised with that
    channel's mean and standard deviation, fitted on data with :meth:`fit`. Unfitted, the statistics are the
    identity (mean 0, std 1).

    With ``components=k`` (0 < k < 256) the normalised frame is further projected onto its k principal components
    (fitted with the statistics): a k-channel latent that keeps most of the variance. The projection is a rotation,
    not a whitening, so a squared error in the latent is the same squared error in the normalised mel (the loudness
    component keeps its large variance; whitened, the flow loss would weigh an error in it ~1/200 of what it costs
    in the output, and the output's level drifted by tens of dB). ``whiten=True`` scales each component to unit
    variance instead. A DiT narrower than 256 needs this: its output layer can only reach ``width`` latent directions,
    so with a 256-channel latent the rest of the sample would stay the initial noise (``ModelConfig`` refuses that).
    Decoding inverts every step exactly when k = 256 (or no projection), and up to the discarded components
    otherwise (``explained_variance`` says how much is kept).
    """

    kind = "mel"

    def __init__(
        self,
        *,
        n_mels: int = N_MELS,
        mel_per_latent: int = MEL_PER_LATENT,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        count: int = 0,
        min_std: float = 1e-3,
        components: int = 0,
        basis: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        explained_variance: float = 1.0,
        whiten: bool = False,
        global_variance: dict[str, torch.Tensor] | None = None,
    ):
        self.n_mels = n_mels
        self.mel_per_latent = mel_per_latent
        self.grouped_dim = n_mels * mel_per_latent  # channels of four grouped mel frames (256)
        if not 0 <= int(components) <= self.grouped_dim:
            raise AssetError(f"MelCodec components={components}: expected 0 (none) .. {self.grouped_dim}")
        self.components = int(components)
        self.latent_dim = self.components or self.grouped_dim
        self.min_std = float(min_std)
        self.count = int(count)  # number of latent frames the statistics were fitted on
        self.explained_variance = float(explained_variance)
        self.whiten = bool(whiten)
        # task -> (C,) mean over training clips of each latent channel's variance over the clip's frames
        # (:meth:`fit_global_variance`; empty: unknown, as in codecs saved before it existed)
        self.global_variance = {k: v.detach().float().reshape(-1).clone() for k, v in (global_variance or {}).items()}
        g = self.grouped_dim
        self.mean = torch.zeros(g) if mean is None else mean.detach().float().reshape(-1).clone()
        self.std = torch.ones(g) if std is None else std.detach().float().reshape(-1).clone()
        if self.mean.shape != (g,) or self.std.shape != (g,):
            raise AssetError(f"MelCodec statistics must have {g} channels, got {tuple(self.mean.shape)}")
        # principal directions (G, K) of the normalised frames and each component's standard deviation (K,);
        # unfitted: the first K channels, unscaled
        k = self.latent_dim
        self.basis = torch.eye(g)[:, :k].clone() if basis is None else basis.detach().float().clone()
        self.scale = torch.ones(k) if scale is None else scale.detach().float().reshape(-1).clone()
        if self.basis.shape != (g, k) or self.scale.shape != (k,):
            raise AssetError(f"MelCodec projection must be ({g}, {k}) + ({k},), got {tuple(self.basis.shape)}")

    @classmethod
    def for_latent_dim(cls, latent_dim: int, **options) -> MelCodec:
        """An unfitted codec whose latent has ``latent_dim`` channels: the grouped mel itself (256), else that many
        principal components."""
        return cls(components=0 if latent_dim == N_MELS * MEL_PER_LATENT else latent_dim, **options)

    @property
    def fitted(self) -> bool:
        return self.count > 0

    # -- statistics -------------------------------------------------------------------------------------------
    def fit(self, mels: Iterable[np.ndarray | torch.Tensor]) -> MelCodec:
        """Fits per-channel mean/std from (T, M) log-mels in one streaming pass (Chan/Welford merge, float64).

        Only whole groups of ``mel_per_latent`` frames are used (a clip's trailing remainder is skipped, so the
        silence padding of ``encode`` never biases the statistics). Returns self.
        """
        g = self.grouped_dim
        count, mean, m2 = 0, np.zeros(g), np.zeros(g)
        gram = np.zeros((g, g))  # sum of outer products about the running mean (Chan's merge, for the components)
        for mel in mels:
            arr = mel.detach().cpu().numpy() if isinstance(mel, torch.Tensor) else np.asarray(mel)
            if arr.ndim != 2 or arr.shape[1] != self.n_mels:
                raise FeatureShapeError(f"mel must have shape (T_mel, {self.n_mels}), got {arr.shape}", source="mel")
            usable = arr.shape[0] - arr.shape[0] % self.mel_per_latent
            if usable == 0:
                continue
            x = rearrange(arr[:usable].astype(np.float64), "(n g) m -> n (g m)", g=self.mel_per_latent)  # (N, C)
            n_b, mean_b = x.shape[0], x.mean(axis=0)
            xc = x - mean_b
            m2_b = (xc**2).sum(axis=0)
            total = count + n_b
            delta = mean_b - mean
            if self.components:
                gram = gram + xc.T @ xc + np.outer(delta, delta) * (count * n_b / total)
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta**2 * (count * n_b / total)
            count = total
        if count == 0:
            raise FeatureShapeError("MelCodec.fit got no mel with at least 4 frames; give it real clips", source="mel")
        std = np.maximum(np.sqrt(m2 / count), self.min_std)
        self.mean = torch.from_numpy(mean).float()
        self.std = torch.from_numpy(std).float()
        self.count = count
        if self.components:
            corr = gram / count / np.outer(std, std)  # covariance of the normalised frames (G, G)
            eig, vec = np.linalg.eigh(corr)  # ascending
            order = np.argsort(eig)[::-1][: self.components]
            lam = np.maximum(eig[order], 1e-8)
            vec = vec[:, order]  # (G, K)
            vec = vec * np.sign(vec[np.abs(vec).argmax(axis=0), np.arange(vec.shape[1])])  # a fixed sign per axis
            self.basis = torch.from_numpy(vec).float()  # (G, K)
            self.scale = torch.from_numpy(np.sqrt(lam) if self.whiten else np.ones_like(lam)).float()  # (K,)
            self.explained_variance = float(lam.sum() / max(np.trace(corr), 1e-12))
        return self

    def fit_global_variance(self, clips: Iterable[tuple[str, np.ndarray | torch.Tensor]]) -> MelCodec:
        """The global variance (GV) of natural latents per task, from (task, (T, M) log-mel) pairs of the training
        split: for each latent channel, its variance over a clip's frames, averaged over the task's clips. The
        target of :func:`match_global_variance`. Call after :meth:`fit`; returns self."""
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for task, mel in clips:
            m = torch.as_tensor(np.asarray(mel, np.float32))
            usable = m.shape[0] - m.shape[0] % self.mel_per_latent  # whole latent frames only, no padding
            if usable < 2 * self.mel_per_latent:
                continue
            z = self.encode(m[None, :usable])[0].double()  # (N, C)
            sums[task] = sums.get(task, 0) + z.var(dim=0, unbiased=False)
            counts[task] = counts.get(task, 0) + 1
        self.global_variance = {t: (sums[t] / counts[t]).float() for t in sorted(sums)}
        return self

    # -- codec ------------------------------------------------------------------------------------------------
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, T_mel, M) -> (B, ceil(T_mel / 4), 4 * M) normalised latent."""
        check_mel(mel, self.n_mels)
        mel = pad_mel(mel.float(), self.mel_per_latent)  # (B, 4N, M)
        z = rearrange(mel, "b (n g) m -> b n (g m)", g=self.mel_per_latent)  # (B, N, G)
        z = (z - self.mean.to(z.device)) / self.std.to(z.device)
        if self.components:
            z = (z @ self.basis.to(z.device)) / self.scale.to(z.device)  # (B, N, K)
        return z

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, 4N, M) log-mel."""
        if latent.dim() != 3 or latent.shape[-1] != self.latent_dim:
            raise FeatureShapeError(
                f"latent must have shape (B, N, {self.latent_dim}), got {tuple(latent.shape)}", source="latent"
            )
        z = latent.float()
        if self.components:
            z = (z * self.scale.to(z.device)) @ self.basis.to(z.device).T  # (B, N, G)
        z = z * self.std.to(z.device) + self.mean.to(z.device)  # (B, N, G)
        return rearrange(z, "b n (g m) -> b (n g) m", g=self.mel_per_latent)  # (B, 4N, M)

    def to(self, device: str | torch.device) -> MelCodec:
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self.basis, self.scale = self.basis.to(device), self.scale.to(device)
        return self

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / ".mel_codec_stats.safetensors.tmp"
        tensors = {"mean": self.mean.cpu().contiguous(), "std": self.std.cpu().contiguous()}
        if self.components:
            tensors.update(basis=self.basis.cpu().contiguous(), scale=self.scale.cpu().contiguous())
        tensors.update({f"gv.{t}": v.cpu().contiguous() for t, v in self.global_variance.items()})
        save_file(tensors, str(tmp))
        os.replace(tmp, directory / "mel_codec_stats.safetensors")
        self._write_json(
            directory,
            {
                "n_mels": self.n_mels,
                "mel_per_latent": self.mel_per_latent,
                "count": self.count,
                "min_std": self.min_std,
                "components": self.components,
                "explained_variance": self.explained_variance,
                "whiten": self.whiten,
                "stats": "mel_codec_stats.safetensors",
            },
        )
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> MelCodec:
        directory = Path(directory)
        meta = read_codec_json(directory)
        stats_path = directory / meta.get("stats", "mel_codec_stats.safetensors")
        if not stats_path.is_file():
            raise AssetError(f"{stats_path}: MelCodec statistics missing; re-save the model or refit the codec")
        stats = load_file(str(stats_path))
        return cls(
            n_mels=int(meta["n_mels"]),
            mel_per_latent=int(meta["mel_per_latent"]),
            mean=stats["mean"],
            std=stats["std"],
            count=int(meta.get("count", 0)),
            min_std=float(meta.get("min_std", 1e-3)),
            components=int(meta.get("components", 0)),  # codecs saved before the projection existed: none
            basis=stats.get("basis"),
            scale=stats.get("scale"),
            explained_variance=float(meta.get("explained_variance", 1.0)),
            whiten=bool(meta.get("whiten", False)),
            global_variance={k[3:]: v for k, v in stats.items() if k.startswith("gv.")},
        )


def match_global_variance(z: torch.Tensor, target: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """Global-variance compensation of one generated clip's latent (the GV post-filter of statistical speech
    synthesis, Toda & Tokuda 2007): each channel's deviations from the clip's mean are scaled so its variance over
    the clip's frames reaches the natural ``target`` variance, by a factor in [1, ``max_ratio``] (never smoothed).

    Why: a model that regresses toward the conditional mean over-smooths, and a smooth log-mel renders quieter than
    the ground truth with the same mean log-mel (the mean of exp(x) exceeds exp of the mean). On the demo's model the
    decoded prior mean matched the ground truth's mean log-mel in the active frames (-0.001 nats, TTS) and was
    3.8 dB quieter; matching the GV (ratio <= 2) brought it to -1.9 dB.

    Args:
        z: (N, C) latent frames of one clip (no padding). target: (C,). max_ratio: >= 1 (1: unchanged).
    """
    if max_ratio <= 1.0 or z.shape[0] < 2:
        return z
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False)
    ratio = (target.to(z) / var.clamp_min(1e-8)).sqrt().clamp(1.0, max_ratio)
    return mean + (z - mean) * ratio


def load_codec(directory: str | os.PathLike, **options) -> LatentCodec:
    """Rebuilds a codec saved with ``codec.save(directory)``.

    ``directory`` may also be a plain diffusers ``AutoencoderKL`` directory (config.json + weights, e.g. the
    ``vae/`` folder of an AudioLDM checkpoint); ``options`` then go to :class:`AutoencoderKLCodec`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise AssetError(f"{directory}: codec directory not found; check the path")
    if not (directory / CODEC_JSON).is_file() and (directory / "config.json").is_file():
        from vssflow.audio.vae import AutoencoderKLCodec

        return AutoencoderKLCodec.from_vae_dir(directory, **options)
    meta = read_codec_json(directory)
    kind = meta.get("kind")
    if kind == MelCodec.kind:
        return MelCodec.load(directory)
    if kind == "autoencoder_kl":
        from vssflow.audio.vae import AutoencoderKLCodec

        return AutoencoderKLCodec.load(directory, **options)
    raise AssetError(f"{directory / CODEC_JSON}: unknown codec kind {kind!r}; expected 'mel' or 'autoencoder_kl'")
