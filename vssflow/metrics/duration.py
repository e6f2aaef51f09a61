"""Duration metrics: the length of the generated audio, and of the speech in it, against the ground truth.

``speech_span`` is the time from the first to the last active 10 ms frame (energy within ``gate_db`` of the
loudest frame and above an absolute floor), so a model that talks too slowly, too fast, or not at all is caught;
a constant shift leaves it (almost) unchanged.
"""

from __future__ import annotations

import numpy as np

from vssflow.constants import HOP_LENGTH, SAMPLE_RATE

ABS_FLOOR_DB = -55.0  # dBFS RMS below which a frame is silent whatever the clip's loudness


def frame_db(wav: np.ndarray, hop: int = HOP_LENGTH) -> np.ndarray:
    """(T,) RMS level in dBFS of consecutive ``hop``-sample frames."""
    wav = np.asarray(wav, np.float64).reshape(-1)
    n = len(wav) // hop
    if n == 0:
        return np.full(1, -120.0)
    rms = np.sqrt(np.mean(wav[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    return 20 * np.log10(rms + 1e-12)


def speech_span(wav: np.ndarray, *, gate_db: float = 35.0) -> float:
    """Seconds from the first to the last active frame of ``wav`` (0 when nothing is active)."""
    db = frame_db(wav)
    active = np.flatnonzero((db > db.max() - gate_db) & (db > ABS_FLOOR_DB))
    if not len(active):
        return 0.0
    return float((active[-1] - active[0] + 1) * HOP_LENGTH / SAMPLE_RATE)


def duration_error(wav: np.ndarray, ref_wav: np.ndarray, *, expected_s: float | None = None) -> dict[str, float]:
    """Absolute errors in seconds.

    Returns:
        {"duration_err_s": | len(wav) - expected |  (expected: len(ref_wav), or ``expected_s``),
         "speech_span_err_s": | speech_span(wav) - speech_span(ref_wav) |}
    """
    expected = len(ref_wav) / SAMPLE_RATE if expected_s is None else expected_s
    return {
        "duration_err_s": abs(len(wav) / SAMPLE_RATE - expected),
        "speech_span_err_s": abs(speech_span(wav) - speech_span(ref_wav)),
    }
