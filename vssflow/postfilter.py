"""After the flow: what happens to a sample between the solver and the listener.

Global-variance compensation of the sampled latents toward the codec's natural variance for the clip's task, as
the compensated latent or only as its loudness (:func:`postfilter`, ``SamplingConfig.gv_max_ratio`` and
``gv_mode``); the active level of a log-mel that the loudness is measured by (:func:`mel_level_db`); and the last
guard against clipping of the waveform (:func:`peak_guard`).

Shape legend: B batch, N latent frames (25 Hz), C latent channels, T mel frames, M mel bins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from vssflow.audio.codec import LatentCodec, match_global_variance
from vssflow.sampling import SamplingConfig


def postfilter(
    x1: torch.Tensor, n_frames: torch.Tensor, tasks: Sequence[str], *, codec: LatentCodec, sampling: SamplingConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-variance compensation of sampled latents (B, N, C), per clip toward the codec's GV of its task
    (``sampling.gv_max_ratio``, ``sampling.gv_mode``). Returns (latents, gain (B,)): the gain, in natural-log
    magnitude, is what :meth:`vssflow.generator.Generator.decode` adds to each clip's log-mel ("level" mode: the
    loudness the compensated spectrum would have; "latent" mode returns the compensated latents and gain 0). Clips
    of a task without a GV, or ratio 1, are unchanged."""
    gain = torch.zeros(x1.shape[0], device=x1.device)
    gv = getattr(codec, "global_variance", {})
    if sampling.gv_max_ratio <= 1.0 or not gv:
        return x1, gain
    x1 = x1.clone()
    for i, task in enumerate(tasks):
        if task not in gv:
            continue
        ni = int(n_frames[i])
        matched = match_global_variance(x1[i, :ni], gv[task], sampling.gv_max_ratio)
        if sampling.gv_mode == "latent":
            x1[i, :ni] = matched
        else:
            louder = mel_level_db(codec.decode(matched[None])) - mel_level_db(codec.decode(x1[None, i, :ni]))
            gain[i] = louder * math.log(10.0) / 20.0
    return x1, gain


def mel_level_db(log_mel: torch.Tensor, *, floor_db: float = 35.0) -> float:
    """Active level of a (..., T, M) log-magnitude mel in dB: the mean power of the frames within ``floor_db`` of
    the loudest, as the level metric measures the waveform (power summed over the mel bins)."""
    power = torch.exp(2.0 * log_mel.detach().float()).sum(dim=-1).reshape(-1)  # (T,)
    db = 10.0 * torch.log10(power + 1e-12)
    return float(10.0 * torch.log10(power[db >= db.max() - floor_db].mean() + 1e-12))


PEAK_LIMIT = 0.98  # -0.2 dBFS


def peak_guard(wav: np.ndarray, limit: float = PEAK_LIMIT) -> np.ndarray:
    """The last guard against clipping: a clip whose peak exceeds ``limit`` is scaled down as a whole (no
    distortion, no change to a clip within range). Not the level fix (that is guidance rescaling and the codec):
    ``evaluate``'s level difference is measured on what the model makes, and a model that needs this is too loud."""
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    return wav * np.float32(limit / peak) if peak > limit else wav
