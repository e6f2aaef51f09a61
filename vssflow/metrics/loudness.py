"""Loudness and clipping, as a listener notices them: is the output as loud as the original, and does it clip?

* ``active_level_db``: RMS level in dBFS (0 dBFS = RMS of a full-scale square wave; a full-scale sine is -3 dBFS)
  of a clip's *active* part: the non-overlapping 20 ms frames whose mean square is within ``ACTIVE_RANGE_DB``
  (35 dB) of the clip's loudest frame, decided on each signal separately. Silence around the sound (padding,
  pauses) therefore does not lower the level, and a quiet background under a loud event does not count. Floored at
  ``FLOOR_DB`` (-100 dBFS) so digital silence gives a finite (very negative) level.
* ``level_db_diff``: active level of the generated audio minus that of the ground truth, in dB (+6: twice as loud in
  amplitude; the goal is within +-2 dB, median over clips). ``level_db_abs`` is its absolute value.
* ``clip_fraction``: share of samples with |x| >= 0.999 (at full scale, i.e. clipped once written as 16-bit PCM;
  the goal is <= 0.1 %).
"""

from __future__ import annotations

import numpy as np

from vssflow.constants import SAMPLE_RATE

FRAME = SAMPLE_RATE // 50  # 20 ms, non-overlapping: a silence boundary touches at most one partial frame
ACTIVE_RANGE_DB = 35.0
FLOOR_DB = -100.0
FULL_SCALE = 0.999


def active_level_db(wav: np.ndarray, *, range_db: float = ACTIVE_RANGE_DB) -> float:
    """RMS level in dBFS of the frames within ``range_db`` of the loudest 20 ms frame of ``wav`` (N,)."""
    x = np.asarray(wav, np.float64).reshape(-1)
    n = max(1, len(x) // FRAME)
    x = np.pad(x, (0, max(0, n * FRAME - len(x))))[: n * FRAME]  # a clip shorter than a frame is one frame
    energy = np.mean(x.reshape(n, FRAME) ** 2, axis=1)  # (T,) mean square per frame
    peak = float(energy.max())
    if peak <= 10 ** (FLOOR_DB / 10):
        return FLOOR_DB
    active = energy[energy >= peak * 10 ** (-range_db / 10)]
    return max(FLOOR_DB, float(10 * np.log10(active.mean())))


def clip_fraction(wav: np.ndarray, *, threshold: float = FULL_SCALE) -> float:
    """Share of the samples of ``wav`` (N,) with |x| >= ``threshold`` (0 for an empty signal)."""
    x = np.asarray(wav).reshape(-1)
    return float(np.mean(np.abs(x) >= threshold)) if len(x) else 0.0


def loudness_metrics(wav: np.ndarray, ref_wav: np.ndarray) -> dict[str, float]:
    """Loudness of ``wav`` against the ground truth ``ref_wav`` (both (N,) at 16 kHz).

    Returns:
        {"level_db_diff": active_level_db(wav) - active_level_db(ref_wav), "level_db_abs": its absolute value,
         "clip_fraction": clip_fraction(wav)}
    """
    diff = active_level_db(wav) - active_level_db(ref_wav)
    return {"level_db_diff": diff, "level_db_abs": abs(diff), "clip_fraction": clip_fraction(wav)}
