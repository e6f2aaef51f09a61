"""Temporal alignment of generated sound effects with the known event times of a clip.

* :func:`detect_onsets`: spectral-flux onset detector at 200 frames/s (16 ms STFT, 5 ms hop): positive
  log-magnitude differences summed over frequency, peaks picked above a relative and an absolute threshold.
* :func:`onset_prf`: precision / recall / F1 of detected onsets against the ground-truth event times with a
  tolerance of +-1 video frame (40 ms at 25 fps), one-to-one matching (closest pairs first).
* :func:`chance_onset_f1`: the F1 that the same number of onsets placed uniformly at random in the clip would get
  (Monte Carlo mean); ``onset_prf`` reports it with each clip, and ``onset_f1_over_chance`` = F1 - chance F1, so a
  mean over clips with its interval says whether sound lands on the visual events more often than chance.
* :func:`av_offset`: a DeSync-like audio-visual offset: the lag (within +-``max_lag_s``) that maximises the
  correlation between the audio's onset strength and a smoothed impulse train at the visual event times; its sign
  says whether the audio is late (> 0) or early (< 0).
"""

from __future__ import annotations

import numpy as np
import torch

from vssflow.constants import SAMPLE_RATE

ONSET_FPS = 200  # onset-strength frames per second (5 ms hop)
_N_FFT, _HOP = 256, SAMPLE_RATE // ONSET_FPS


def onset_strength(wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spectral flux and frame level of ``wav`` (N,) 16 kHz.

    Returns:
        flux (T,) >= 0 (sum over frequency of positive log-magnitude increases), level (T,) frame RMS in dBFS;
        frame t is at t / ONSET_FPS seconds.
    """
    x = torch.from_numpy(np.asarray(wav, np.float32).reshape(-1))
    if len(x) < _N_FFT:
        x = torch.nn.functional.pad(x, (0, _N_FFT - len(x)))
    spec = torch.stft(x, _N_FFT, _HOP, window=torch.hann_window(_N_FFT), center=True, return_complex=True).abs()
    logmag = torch.log(spec + 1e-4)  # (F, T)
    diff = torch.clamp(logmag[:, 1:] - logmag[:, :-1], min=0).sum(0)
    flux = torch.cat([torch.zeros(1), diff]).numpy()
    frames = torch.nn.functional.pad(x, (_N_FFT // 2, _N_FFT // 2)).unfold(0, _N_FFT, _HOP)  # (T, N_FFT)
    level = 10 * torch.log10(frames.pow(2).mean(1) + 1e-12).numpy()[: len(flux)]
    return flux.astype(np.float64), level.astype(np.float64)


def detect_onsets(
    wav: np.ndarray, *, rel_threshold: float = 0.25, floor_db: float = -45.0, min_gap_s: float = 0.06
) -> np.ndarray:
    """Onset times (seconds) of ``wav`` (N,) 16 kHz.

    A frame is an onset when its flux is the maximum within +-``min_gap_s``, at least ``rel_threshold`` of the
    clip's largest flux, and the level just after it (max over the next 30 ms) is above ``floor_db`` dBFS.
    """
    flux, level = onset_strength(wav)
    if flux.max() <= 0:
        return np.zeros(0)
    w = max(1, int(round(min_gap_s * ONSET_FPS)))
    padded = np.pad(flux, w, constant_values=-np.inf)
    local_max = np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1).max(1)  # (T,)
    after = np.lib.stride_tricks.sliding_window_view(np.pad(level, (0, 6), mode="edge"), 7).max(1)
    peaks = np.flatnonzero((flux >= local_max) & (flux >= rel_threshold * flux.max()) & (after > floor_db))
    return peaks / ONSET_FPS


def match_events(detected: np.ndarray, truth: np.ndarray, tolerance: float) -> int:
    """Number of one-to-one pairs (closest first) with |detected - truth| <= tolerance."""
    if not len(detected) or not len(truth):
        return 0
    d = np.abs(np.asarray(detected)[:, None] - np.asarray(truth)[None, :])
    pairs = sorted(zip(*np.nonzero(d <= tolerance), strict=True), key=lambda ij: d[ij])
    used_d, used_t, n = set(), set(), 0
    for i, j in pairs:
        if i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
            n += 1
    return n


def _f1(hits: int, n_det: int, n_truth: int) -> tuple[float, float, float]:
    p = hits / n_det if n_det else 0.0
    r = hits / n_truth if n_truth else float("nan")
    f1 = 2 * p * r / (p + r) if (p + r) > 0 else 0.0
    return p, r, f1


def chance_onset_f1(
    n_detected: int, event_times, duration_s: float, *, fps: float = 25.0, draws: int = 200, seed: int = 0
) -> float:
    """Expected onset F1 of ``n_detected`` onsets drawn uniformly at random over [0, ``duration_s``) against
    ``event_times``, with the tolerance of :func:`onset_prf` (Monte Carlo mean over ``draws``, fixed ``seed``).

    This is the chance level of a generator that makes the right *number* of sounds at the wrong times.
    """
    truth = np.asarray(sorted(float(t) for t in event_times))
    if n_detected <= 0 or not len(truth) or duration_s <= 0:
        return 0.0
    rng = np.random.default_rng(seed)
    f1s = [
        _f1(match_events(rng.uniform(0.0, duration_s, n_detected), truth, 1.0 / fps), n_detected, len(truth))[2]
        for _ in range(draws)
    ]
    return float(np.mean(f1s))


def onset_prf(wav: np.ndarray, event_times, *, fps: float = 25.0, **detect_kw) -> dict[str, float]:
    """Onset precision / recall / F1 of ``wav`` against ``event_times`` (seconds), tolerance +-1 frame at ``fps``.

    Returns:
        {"onset_precision", "onset_recall", "onset_f1", "onsets_detected", "onset_f1_chance",
        "onset_f1_over_chance"}; precision is 0 when nothing is detected (and F1 0), recall is NaN for a clip
        without events. ``onset_f1_chance`` is :func:`chance_onset_f1` for the number of detected onsets.
    """
    truth = np.asarray(sorted(float(t) for t in event_times))
    det = detect_onsets(wav, **detect_kw)
    p, r, f1 = _f1(match_events(det, truth, 1.0 / fps), len(det), len(truth))
    chance = chance_onset_f1(len(det), truth, len(np.asarray(wav).reshape(-1)) / SAMPLE_RATE, fps=fps)
    return {"onset_precision": p, "onset_recall": r, "onset_f1": f1, "onsets_detected": float(len(det)),
            "onset_f1_chance": chance, "onset_f1_over_chance": f1 - chance}  # fmt: skip


def av_offset(wav: np.ndarray, event_times, *, max_lag_s: float = 0.5, sigma_s: float = 0.01) -> dict[str, float]:
    """DeSync-like offset of the audio relative to the visual events.

    Returns:
        {"av_offset_s": lag in seconds (> 0: audio late), "av_offset_abs_s": its magnitude,
         "av_sync_conf": peak correlation minus the median over lags (0 when the audio has no onsets)}.
    """
    flux, level = onset_strength(wav)
    flux = np.where(level > -60.0, flux, 0.0)
    t = np.arange(len(flux)) / ONSET_FPS
    train = np.zeros(len(flux))
    for e in event_times:
        train += np.exp(-0.5 * ((t - float(e)) / sigma_s) ** 2)
    max_lag = int(round(max_lag_s * ONSET_FPS))
    if flux.max() <= 0 or train.max() <= 0:
        return {"av_offset_s": 0.0, "av_offset_abs_s": max_lag_s, "av_sync_conf": 0.0}
    f = (flux - flux.mean()) / (flux.std() + 1e-9)
    g = (train - train.mean()) / (train.std() + 1e-9)
    lags = np.arange(-max_lag, max_lag + 1)
    corr = np.array([np.mean(f[max(0, k) : len(f) + min(0, k)] * g[max(0, -k) : len(g) - max(0, k)]) for k in lags])
    best = int(np.argmax(corr))
    off = float(lags[best] / ONSET_FPS)
    return {"av_offset_s": off, "av_offset_abs_s": abs(off), "av_sync_conf": float(corr[best] - np.median(corr))}
