"""Per-clip feature extraction stages (vssflow/features/extract.py) that need no model: the clip dict of a manifest
row (its speech span), decoding cut to [start, end) at every rate, and the clip dict -> ClipFeatures. The stages with
the encoders run in test_preprocess (each row through the Ray pipeline and through extract_clip, compared)."""

import json
import math
import shutil

import numpy as np
import pytest
from conftest_media import make_testsrc

from vssflow.constants import SPEAKER_DIM
from vssflow.data.manifest import ManifestRow, TimedLabel
from vssflow.errors import ClipTooLongError, InputError
from vssflow.features.extract import ExtractConfig, decode_clip, row_dict, to_features

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


def test_the_clip_dict_takes_the_speech_span_from_the_row_in_order_of_trust():
    base = {"clip_id": "c", "video": "v.mp4", "task": "tts"}
    phonemes = [["h", 0.3, 0.4], ["i", 0.4, 0.9]]
    words = [["hi", 0.2, 1.0]]
    extra = {"speech_start": 0.1, "speech_end": 1.5}

    def span(**kw):
        d = row_dict({**base, **kw})
        return d["span_start"], d["span_end"]

    assert span(speech_span="0.5,1.2", phonemes=phonemes, words=words, extra=extra) == (0.5, 1.2)  # the user's
    assert span(phonemes=phonemes, words=words, extra=extra) == (0.3, 0.9)  # then the phonemes' timing
    assert span(words=words, extra=extra) == (0.2, 1.0)  # then the words'
    assert span(extra=extra) == (0.1, 1.5)
    assert all(math.isnan(x) for x in span())  # unknown: decode_clip falls back to voice activity
    with pytest.raises(InputError, match=r"^c: speech_span: speech span '2,1': give START,END"):
        row_dict({**base, "speech_span": "2,1"})


def test_the_clip_dict_is_flat_scalars_and_built_once():
    row = ManifestRow(clip_id="c", video="/d/v.mp4", task="tts", start=0.5, transcript="hi", speaker_id="s",
                      phonemes=(TimedLabel("h", 0.6, 0.7),), events=(), split="val")  # fmt: skip
    d = row_dict(row)
    assert all(isinstance(v, (str, float)) for v in d.values()), d  # one Arrow row through Ray Data
    assert d["audio"] == "from_video" and math.isnan(d["end"]) and d["split"] == "val"
    assert json.loads(d["timing_json"]) == [["h", 0.6, 0.7]] and (d["span_start"], d["span_end"]) == (0.6, 0.7)
    again = row_dict(d)  # a clip dict passes through as it is
    assert json.dumps(again, sort_keys=True) == json.dumps(d, sort_keys=True)


@needs_ffmpeg
def test_decode_cuts_frames_and_audio_to_the_window_at_each_rate(tmp_path):
    video = make_testsrc(tmp_path / "v.mp4", fps=30, duration=3.0, size=(64, 80))
    row = row_dict({"clip_id": "c", "video": str(video), "task": "v2s", "start": 0.5, "end": 2.5})
    d = decode_clip(row, ExtractConfig())
    assert (d["duration_s"], d["bucket_s"]) == (2.0, 2.0)
    assert d["sem_frames"].shape == (20, 64, 80, 3) and d["sem_frames"].dtype == np.uint8  # 10 fps
    assert d["sync"].shape == (50, 32, 32) and d["lip_frames"].shape[0] == 0  # 25 fps; no lips for v2s
    assert d["wav"].shape == (32000,) and d["wav"].dtype == np.float32 and d["ref_audio"].size == 0
    assert d["speech_span"].size == 0  # v2s has none
    whole = decode_clip(row_dict({"clip_id": "c", "video": str(video), "task": "v2s"}), ExtractConfig(sync=False))
    assert whole["duration_s"] == pytest.approx(3.0, abs=0.05) and whole["sync"].shape == (0, 32, 32)
    np.testing.assert_array_equal(whole["sem_frames"][5:25], d["sem_frames"])  # the window is the same frames

    with pytest.raises(ClipTooLongError, match="longer than 1 s; cut it"):
        decode_clip(row, ExtractConfig(max_seconds=1.0))
    with pytest.raises(InputError, match=r"start 5 s is past the end of the video \(3.0"):
        decode_clip({**row, "start": 5.0}, ExtractConfig())


def _processed(**kw) -> dict:
    return {"clip_id": "c", "task": "tts", "duration_s": 1.0, "split": "train", "transcript": "", "speaker_id": "",
            "events_json": '[{"time": 0.5, "class": "dog"}]', "sem": np.zeros((10, 8), np.float32),
            "mel": np.zeros((100, 64), np.float32), "lip": np.zeros((0, 32, 32), np.uint8),
            "sync": np.zeros((25, 32, 32), np.uint8), "phonemes": np.array([3, 4], np.int16),
            "speaker": np.ones(SPEAKER_DIM, np.float32), "speech_span": np.array([0.2, 0.8], np.float32),
            **kw}  # fmt: skip


def test_features_of_a_clip_dict_treat_empty_arrays_as_absent_conditions():
    f = to_features(_processed(phoneme_durations=np.array([1.0, 3.0], np.float32)))
    assert f.lip is None and f.sync.shape == (25, 32, 32) and f.speech_span == (pytest.approx(0.2), pytest.approx(0.8))
    assert f.meta["transcript"] is None and f.meta["events"] == [{"time": 0.5, "class": "dog"}]
    np.testing.assert_array_equal(f.phoneme_durations, [1.0, 3.0])
    # durations that do not match the phonemes are dropped (equal durations), not misaligned
    assert to_features(_processed(phoneme_durations=np.array([1.0], np.float32))).phoneme_durations is None
    assert to_features(_processed(speech_span=np.zeros(0, np.float32))).speech_span is None
    with pytest.raises(InputError, match=r"^c: speaker embedding has shape \(3,\)"):
        to_features(_processed(speaker=np.ones(3, np.float32)))
