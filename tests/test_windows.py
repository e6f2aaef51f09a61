"""Long clips: the windows that cover a clip, and the features inside each (where the model lays the phonemes)."""

import numpy as np
import pytest

from vssflow.types import ClipFeatures
from vssflow.windows import slice_features, window_starts


def _tts_clip(duration: float, seed: int = 0) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    n10, n25 = int(round(duration * 10)), int(round(duration * 25))
    return ClipFeatures(
        duration_s=duration,
        task="tts",
        sem=rng.standard_normal((n10, 32)).astype(np.float32),
        lip=rng.integers(0, 255, (n25, 32, 32), dtype=np.uint8),
        phonemes=rng.integers(2, 60, 12),
    )


def test_window_starts_cover_the_clip_with_the_overlap():
    assert window_starts(3.0, 4.0, 1.0) == [0.0]
    assert window_starts(9.3, 4.0, 1.0) == [0.0, 3.0, 5.3]  # the last one ends at the end
    assert window_starts(7.0, 4.0, 1.0) == [0.0, 3.0]


def test_slice_features_cuts_every_stream_at_its_rate():
    part = slice_features(_tts_clip(4.0), 1.0, 3.0)
    assert part.duration_s == 2.0 and part.sem.shape[0] == 20 and part.lip.shape[0] == 50
    assert 5 <= len(part.phonemes) <= 7  # 12 phonemes spread over 4 s: about half of them
    assert part.meta["window"] == [1.0, 3.0]


def test_slice_features_cuts_the_speech_span_and_phoneme_durations():
    """Windows of a long clip (and clips cut from a video) keep the phonemes that fall inside them, where the model
    lays them: over the speech span, by duration."""
    clip = _tts_clip(6.0)
    clip.speech_span = (1.0, 5.0)
    clip.phoneme_durations = np.array([1, 1, 2, 0, 1, 1, 2, 0, 1, 1, 1, 1], np.float32)  # 12 phonemes, total 12
    # boundaries over the span: phoneme k covers 1 + 4 * cumsum / 12 seconds; a window of [2, 4) s
    part = slice_features(clip, 2.0, 4.0, layout="duration")
    assert part.speech_span == (0.0, 2.0)  # the part of the span inside the window, from its start
    edges = 1.0 + 4.0 * np.concatenate([[0], np.cumsum(clip.phoneme_durations)]) / 12
    inside = [k for k in range(12) if edges[k + 1] > 2.0 and edges[k] < 4.0]
    np.testing.assert_array_equal(part.phonemes, clip.phonemes[inside[0] : inside[-1] + 1])
    assert part.phoneme_durations.sum() == pytest.approx(2.0)  # seconds covered: the whole window is speech
    # a window before the speech has no phonemes (and no span); one over its start keeps the start
    early = slice_features(clip, 0.0, 0.9, layout="duration")
    assert early.phonemes is None and early.speech_span is None and early.phoneme_durations is None
    head = slice_features(clip, 0.0, 2.0, layout="span")
    assert head.speech_span == (1.0, 2.0) and len(head.phonemes) == 3  # uniform: 12 phonemes over 4 s, 1 s of it
    # "clip" layout: phonemes by time over the whole clip, durations cut with them
    whole = slice_features(clip, 3.0, 6.0, layout="clip")
    assert len(whole.phonemes) == len(whole.phoneme_durations) == 6 and whole.speech_span == (0.0, 2.0)
