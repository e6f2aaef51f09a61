"""Long clips: the windows of the model's length that cover a clip, and the features inside each window.

:meth:`vssflow.generator.Generator.generate` cuts a clip longer than the model window into overlapping windows
(:func:`window_starts`) and generates each from its part of the features (:func:`slice_features`); batch generation,
evaluation and dubbing cut clips out of longer features the same way.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from vssflow.constants import LIP_FPS, MEL_FPS, SEM_FPS, SYNC_FPS
from vssflow.types import ClipFeatures


def window_starts(duration: float, window: float, overlap: float) -> list[float]:
    """Start times of windows of ``window`` seconds overlapping by ``overlap`` that cover ``duration``."""
    if duration <= window:
        return [0.0]
    hop = window - overlap
    n = math.ceil((duration - window) / hop) + 1
    starts = [min(k * hop, duration - window) for k in range(n)]
    return sorted(set(round(s, 6) for s in starts))


def slice_features(clip: ClipFeatures, start: float, end: float, *, layout: str = "clip") -> ClipFeatures:
    """The features of ``clip`` between ``start`` and ``end`` seconds.

    Phonemes are cut where the model lays them (``layout``, :attr:`ModelConfig.phoneme_layout`): "clip" in proportion
    to time over the whole clip; "span"/"duration" by where each phoneme falls in the speech span (uniformly, or by
    its duration), keeping the part of the span inside the window and, with durations, the covered share of the
    phonemes cut at the window's edges. ``speech_span`` becomes the part of the span inside the window (None when
    the span lies outside it), in seconds from ``start``.
    """

    def rows(a: np.ndarray | None, fps: int) -> np.ndarray | None:
        if a is None:
            return None
        i, j = int(round(start * fps)), int(round(end * fps))
        return a[i : max(j, i + 1)]

    phonemes, durations, span = clip.phonemes, clip.phoneme_durations, clip.speech_span
    if span is not None:
        a, b = max(float(span[0]), start), min(float(span[1]), end)
        span = (a - start, b - start) if b - a > 1e-6 else None
    if phonemes is not None and len(phonemes):
        p = len(phonemes)
        if durations is not None and len(durations) != p:
            durations = None
        if layout == "clip":
            i = int(math.floor(p * start / clip.duration_s))
            j = int(math.ceil(p * end / clip.duration_s))
            phonemes, durations = phonemes[i:j], None if durations is None else durations[i:j]
        else:
            s0, s1 = clip.speech_span or (0.0, clip.duration_s)
            w = np.ones(p) if layout == "span" or durations is None else np.asarray(durations, np.float64)
            w = w if w.sum() > 0 else np.ones(p)
            edges = s0 + (s1 - s0) * np.concatenate([[0.0], np.cumsum(w) / w.sum()])  # (P + 1,) seconds
            inside = np.flatnonzero((edges[1:] > start) & (edges[:-1] < end))
            if span is None or not len(inside):  # no speech in this window: generated without phonemes
                phonemes, durations = phonemes[:0], None
            else:
                i, j = int(inside[0]), int(inside[-1]) + 1
                if durations is not None:  # the covered share of each phoneme, in seconds
                    covered = np.minimum(edges[i + 1 : j + 1], end) - np.maximum(edges[i:j], start)
                    durations = np.clip(covered, 0.0, None).astype(np.float32)
                phonemes = phonemes[i:j]
        if not len(phonemes):
            phonemes = durations = None
    return replace(
        clip,
        duration_s=end - start,
        sem=rows(clip.sem, SEM_FPS),
        lip=rows(clip.lip, LIP_FPS),
        sync=rows(clip.sync, SYNC_FPS),
        mel=rows(clip.mel, MEL_FPS),
        phonemes=phonemes,
        phoneme_durations=durations,
        speech_span=span,
        meta={**clip.meta, "window": [start, end]},
    )
