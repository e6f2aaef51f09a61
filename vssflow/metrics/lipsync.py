"""Lip-sync score: correlation and time offset between mouth opening and speech energy.

**An LSE-C / LSE-D substitute, not LSE.** The paper's LSE-C/LSE-D come from a pretrained SyncNet, whose weights are
not available offline. This proxy (reported as ``lipsync_*``, never as LSE) follows the same idea:

* mouth opening per video frame (25 fps): from the mouth crops (:func:`mouth_opening_from_crops`, the vertical
  edge energy of the crop's centre) or any other measure (e.g. the drawn face's known
  opening in the synthetic corpus, or face-mesh lip distances);
* speech energy per video frame: RMS level in dB over 40 ms, floored 40 dB below the loudest frame;
* normalised cross-correlation over lags of +-``max_lag_s``:
  ``lipsync_corr`` the correlation at lag 0 (higher = in sync), ``lipsync_conf`` the peak minus the median over
  lags (LSE-C-like confidence), ``lipsync_offset_s`` the lag of the peak (> 0: audio late; an AV offset, the role
  LSE-D's minimum plays) and its magnitude ``lipsync_offset_abs_s``.
"""

from __future__ import annotations

import numpy as np

from vssflow.constants import LIP_FPS, SAMPLE_RATE


def mouth_opening_from_crops(crops: np.ndarray) -> np.ndarray:
    """(T, S, S) uint8 grayscale mouth crops -> (T,) opening proxy: vertical edge energy of the crop's centre.

    An open mouth adds horizontal edges (upper lip / cavity / teeth / lower lip) that a closed one lacks, whatever
    the lighting, skin tone, or whether the cavity looks darker or brighter than the lips at that scale. On the
    synthetic corpus this tracks the drawn face's known opening with correlation 0.91-0.98 (tests check > 0.8).
    """
    crops = np.asarray(crops, np.float32)
    if crops.ndim != 3:
        raise ValueError(f"mouth crops must be (T, S, S), got {crops.shape}")
    s = crops.shape[1]
    centre = crops[:, s // 4 : s - s // 8, s // 4 : s - s // 4]  # below the corner line (crops are shifted down)
    return np.abs(np.diff(centre, axis=1)).mean(axis=(1, 2))


def speech_energy(wav: np.ndarray, n_frames: int, *, fps: int = LIP_FPS, floor_db: float = 40.0) -> np.ndarray:
    """(n_frames,) RMS level in dB of each video frame's audio, floored ``floor_db`` below the loudest frame."""
    hop = SAMPLE_RATE // fps
    x = np.zeros(n_frames * hop, np.float64)
    w = np.asarray(wav, np.float64).reshape(-1)[: len(x)]
    x[: len(w)] = w
    db = 10 * np.log10(np.mean(x.reshape(n_frames, hop) ** 2, axis=1) + 1e-12)
    return np.maximum(db, db.max() - floor_db)


def _ncc(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Normalised correlation of a[t] with b[t - k] over the overlap (k > 0: b is late)."""
    if k >= 0:
        x, y = a[: len(a) - k], b[k:]
    else:
        x, y = a[-k:], b[: len(b) + k]
    if len(x) < 3 or x.std() < 1e-9 or y.std() < 1e-9:
        return 0.0
    return float(np.mean((x - x.mean()) * (y - y.mean())) / (x.std() * y.std()))


def lipsync_scores(
    opening: np.ndarray, wav: np.ndarray, *, fps: int = LIP_FPS, max_lag_s: float = 0.4
) -> dict[str, float]:
    """Lip-sync proxy scores of speech ``wav`` (N,) 16 kHz against a mouth-opening track ``opening`` (T,) at ``fps``.

    Returns:
        {"lipsync_corr", "lipsync_conf", "lipsync_offset_s", "lipsync_offset_abs_s"} (see module docstring);
        silent audio or a still mouth gives corr 0, conf 0 and the largest offset.
    """
    opening = np.asarray(opening, np.float64).reshape(-1)
    energy = speech_energy(wav, len(opening), fps=fps)
    max_lag = int(round(max_lag_s * fps))
    lags = np.arange(-max_lag, max_lag + 1)
    corr = np.array([_ncc(opening, energy, int(k)) for k in lags])
    if not np.any(corr):
        worst = {"lipsync_offset_s": max_lag_s, "lipsync_offset_abs_s": max_lag_s}
        return {"lipsync_corr": 0.0, "lipsync_conf": 0.0, **worst}
    best = int(np.argmax(corr))
    off = float(lags[best] / fps)
    return {
        "lipsync_corr": float(corr[max_lag]),
        "lipsync_conf": float(corr[best] - np.median(corr)),
        "lipsync_offset_s": off,
        "lipsync_offset_abs_s": abs(off),
    }
