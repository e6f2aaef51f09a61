"""The speech span of a clip: (start, end) seconds where the words are, from timing, voice activity or the user.

Training takes it from the manifest's phoneme/word timing (``span_from_timing``) or, without timing, from the
voice activity of the speech audio (``span_from_voice_activity``); inference from the user (``--speech-span``), a
subtitle cue, the mouth activity of the lip stream (:func:`vssflow.features.lip.speech_span_from_mouth`), or the
whole clip. The model lays the transcript's phonemes over it (``ModelConfig.phoneme_layout``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from vssflow.constants import SAMPLE_RATE
from vssflow.errors import InputError

__all__ = ["parse_span", "clamp_span", "span_from_timing", "span_from_voice_activity"]

Span = tuple[float, float]


def parse_span(value: str | Sequence[float] | None, *, source: str = "--speech-span") -> Span | None:
    """``"START,END"`` (seconds) or a pair -> (start, end); None/"" -> None. One-line InputError otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        parts = [float(x) for x in (value.replace(" ", "").split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        parts = []
    if len(parts) != 2 or not all(math.isfinite(x) for x in parts) or not 0 <= parts[0] < parts[1]:
        raise InputError(f"speech span {value!r}: give START,END in seconds with 0 <= START < END", source=source)
    return parts[0], parts[1]


def clamp_span(span: Span | None, duration: float) -> Span | None:
    """``span`` cut to [0, duration]; None when nothing of it is left (at least 40 ms, one latent frame)."""
    if span is None:
        return None
    start, end = max(0.0, float(span[0])), min(float(duration), float(span[1]))
    return (round(start, 4), round(end, 4)) if end - start >= 0.04 else None


def span_from_timing(labels: Iterable | None, *, offset: float = 0.0) -> Span | None:
    """First start and last end of timed labels (manifest phonemes or words: objects with ``start``/``end``, or
    ``[label, start, end]`` lists), shifted by ``-offset`` (the clip's start in the file)."""
    from vssflow.data.manifest import timed_triples

    times = [(start, end) for _, start, end in timed_triples(labels)]
    if not times:
        return None
    return min(s for s, _ in times) - offset, max(e for _, e in times) - offset


def span_from_voice_activity(
    wav: np.ndarray, *, sample_rate: int = SAMPLE_RATE, range_db: float = 35.0, floor_db: float = -60.0
) -> Span | None:
    """Speech span from the energy of ``wav`` (N,): the first and last 10 ms frame (25 ms window) within
    ``range_db`` of the loudest frame and above ``floor_db`` dBFS. None for silence."""
    x = np.asarray(wav, np.float64).reshape(-1)
    hop, win = sample_rate // 100, sample_rate * 25 // 1000
    if len(x) < win:
        return None
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]  # (F, win)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)  # (F,)
    active = np.flatnonzero((db >= db.max() - range_db) & (db >= floor_db))
    if len(active) == 0:
        return None
    return active[0] * hop / sample_rate, min((active[-1] * hop + win) / sample_rate, len(x) / sample_rate)
