"""The speech span of a clip (vssflow/features/span.py): parsed from the user, cut to the clip, found from timing and
from voice activity."""

import numpy as np
import pytest

from vssflow.constants import SAMPLE_RATE
from vssflow.data.manifest import TimedLabel
from vssflow.errors import InputError
from vssflow.features.span import clamp_span, parse_span, span_from_timing, span_from_voice_activity


def test_parse_span_reads_start_end_and_refuses_anything_else_in_one_line():
    assert parse_span("0.4,1.6") == (0.4, 1.6) and parse_span(" 0.4 , 1.6 ") == (0.4, 1.6)
    assert parse_span([0, 2]) == (0.0, 2.0)
    assert parse_span(None) is None and parse_span("  ") is None
    for bad in ("1.6,0.4", "1,1", "-0.5,1", "a,b", "1", "1,2,3", "nan,2", "0,inf", [1.0]):
        with pytest.raises(InputError) as e:
            parse_span(bad, source="speech_span")
        msg = str(e.value)
        assert msg.startswith("speech_span: speech span") and "START,END" in msg and "\n" not in msg, msg


def test_clamp_span_cuts_to_the_clip_and_drops_what_is_shorter_than_a_latent_frame():
    assert clamp_span((-1.0, 5.0), 2.0) == (0.0, 2.0)
    assert clamp_span((0.5, 1.25), 2.0) == (0.5, 1.25)
    assert clamp_span((1.98, 3.0), 2.0) is None  # 20 ms left
    assert clamp_span((1.96, 3.0), 2.0) == (1.96, 2.0)  # 40 ms: one latent frame
    assert clamp_span((3.0, 4.0), 2.0) is None and clamp_span(None, 2.0) is None


def test_span_from_timing_takes_the_first_start_and_last_end_less_the_offset():
    words = [["bin", 1.2, 1.4], ["blue", 0.95, 1.18], ["now", 1.9, 2.12]]  # any order, manifest lists
    start, end = span_from_timing(words, offset=0.5)
    assert (start, end) == (pytest.approx(0.45), pytest.approx(1.62))
    assert span_from_timing([TimedLabel("a", 0.1, 0.3), TimedLabel("b", 0.3, 0.8)]) == (0.1, 0.8)
    assert span_from_timing(None) is None and span_from_timing([]) is None


def test_span_from_voice_activity_finds_the_loud_part():
    t = np.arange(int(0.7 * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    rng = np.random.default_rng(0)
    wav = np.concatenate([np.zeros(int(0.5 * SAMPLE_RATE)), tone, np.zeros(int(0.8 * SAMPLE_RATE))])
    wav = (wav + rng.normal(0, 1e-4, len(wav))).astype(np.float32)  # a noise floor 70 dB below the tone
    start, end = span_from_voice_activity(wav)
    assert abs(start - 0.5) <= 0.03 and abs(end - 1.2) <= 0.03, (start, end)
    assert span_from_voice_activity(np.zeros(SAMPLE_RATE, np.float32)) is None  # silence (below -60 dBFS)
    assert span_from_voice_activity(np.ones(100, np.float32)) is None  # shorter than one 25 ms window
