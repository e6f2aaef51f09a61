"""Every metric on real corpus clips (`vssflow synth`) vs deliberately broken audio: the separation must hold.

One small corpus for the module (espeak speech + real Debian event sounds); Whisper-base runs on one speech clip's
five versions only, so the file stays well under three minutes on a loaded 2-core machine.
"""

import json

import numpy as np
import pytest
import scipy.linalg
from conftest_media import synth_corpus

from vssflow.constants import SAMPLE_RATE
from vssflow.data.manifest import read_manifest
from vssflow.metrics import classifier as C
from vssflow.metrics.audio_embed import frechet_distance, kl_paired
from vssflow.metrics.duration import speech_span
from vssflow.metrics.held_out import new_words, sentence_set, speech_breakdown
from vssflow.metrics.lipsync import lipsync_scores, mouth_opening_from_crops
from vssflow.metrics.loudness import active_level_db, clip_fraction, loudness_metrics
from vssflow.metrics.mcd import dtw_path, mcd
from vssflow.metrics.onsets import av_offset, chance_onset_f1, detect_onsets, match_events, onset_prf
from vssflow.metrics.perturb import EXPECTED, perturb, validate_metrics
from vssflow.metrics.references import reference_from_row
from vssflow.metrics.suite import MetricSuite, median, shift, silence_like
from vssflow.metrics.wer import cer, normalize_for_wer, wer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    rows = read_manifest(synth_corpus(out, clips=6, seed=3, duration="2.0..3.0", mix="0.5,0.5,0", timeout=None))
    return out, rows


@pytest.fixture(scope="module")
def refs(corpus):
    _, rows = corpus
    v2s = [reference_from_row(r) for r in rows if r.task == "v2s"][:2]
    tts = [reference_from_row(r) for r in rows if r.task == "tts" and (r.speaker_id or "").startswith("espeak")][:1]
    assert len(v2s) == 2 and len(tts) == 1, [r.clip_id for r in rows]
    return v2s, tts


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    wins, labels = C.examples_from_assets(per_class=16)
    clf = C.train_classifier(wins, labels, steps=200)
    path = clf.save(tmp_path_factory.mktemp("clf") / "clf.npz")
    return path


# ---- pure checks -------------------------------------------------------------------------------------------------
def test_wer_normalisation():
    assert normalize_for_wer("Dr. Smith paid $3!") == "doctor smith paid three dollars"
    assert wer("the red ball", "The red ball.") == 0.0
    assert wer("the red ball", "the blue ball") == pytest.approx(1 / 3)
    assert wer("the red ball", "") == 1.0 and cer("abc", "abd") == pytest.approx(1 / 3)


def test_dtw_and_mcd_basics():
    cost = np.ones((3, 4))
    cost[0, 0] = cost[1, 1] = cost[2, 2] = cost[2, 3] = 0
    assert dtw_path(cost) == [(0, 0), (1, 1), (2, 2), (2, 3)]
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, 16000).astype(np.float32)
    assert mcd(x, x) == pytest.approx(0.0, abs=1e-9)
    assert mcd(rng.normal(0, 0.1, 16000).astype(np.float32) * np.linspace(0, 1, 16000, dtype=np.float32), x) > 1.0


def test_fd_and_kl_basics():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (200, 4)), rng.normal(0, 1, (200, 4))
    assert frechet_distance(a, b) < 0.3 < frechet_distance(a, b + 2.0)
    p = np.array([[0.9, 0.1], [0.5, 0.5]])
    assert np.allclose(kl_paired(p, p), 0) and (kl_paired(p, p[::-1]) > 0).all()


@pytest.mark.filterwarnings("error")  # scipy's sqrtm(disp=False) warned (its `disp` is removed in SciPy 1.18)
def test_frechet_distance_matches_the_closed_forms_without_warnings():
    rng = np.random.default_rng(1)
    # 1-D: (mu_r - mu_g)^2 + (sigma_r - sigma_g)^2
    a, b = rng.normal(0.0, 1.0, (300, 1)), rng.normal(0.5, 2.0, (300, 1))
    sa, sb = np.sqrt(np.var(a, ddof=1) + 1e-6), np.sqrt(np.var(b, ddof=1) + 1e-6)
    expected = (a.mean() - b.mean()) ** 2 + (sa - sb) ** 2 - 2e-6
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # D dims against the matrix square root of S_r S_g
    a, b = rng.normal(0, 1, (40, 6)) @ rng.normal(0, 1, (6, 6)), rng.normal(0, 1, (30, 6))
    s1, s2 = np.cov(a, rowvar=False) + 1e-6 * np.eye(6), np.cov(b, rowvar=False) + 1e-6 * np.eye(6)
    tr_root = np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    mean_term = ((a.mean(0) - b.mean(0)) ** 2).sum()
    expected = mean_term + np.trace(s1) + np.trace(s2) - 12e-6 - 2 * tr_root
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_onset_matching_tolerance():
    assert match_events(np.array([0.50, 1.03]), np.array([0.52, 1.10]), 0.04) == 1
    assert match_events(np.array([]), np.array([0.5]), 0.04) == 0


def test_chance_onset_f1_matches_the_analytic_rate():
    # One random onset in a 4 s clip with one event hits it with probability 2 * 0.04 / 4 = 0.02 (F1 = hit rate).
    assert chance_onset_f1(1, [2.0], 4.0, draws=4000) == pytest.approx(0.02, abs=0.007)
    assert chance_onset_f1(0, [2.0], 4.0) == 0.0
    # Clicks placed uniformly at random score about chance; clicks on the events score far above it.
    rng = np.random.default_rng(1)
    events = [0.5, 1.3, 2.2, 3.1]
    for times, above in ((events, True), (sorted(rng.uniform(0.1, 3.9, 4)), False)):
        wav = np.zeros(4 * SAMPLE_RATE, np.float32)
        for t in times:
            s = int(t * SAMPLE_RATE)
            wav[s : s + 800] = np.random.default_rng(s).normal(0, 0.3, 800) * np.exp(-np.arange(800) / 200)
        m = onset_prf(wav, events)
        assert m["onset_f1_over_chance"] == pytest.approx(m["onset_f1"] - m["onset_f1_chance"])
        assert (m["onset_f1_over_chance"] > 0.5) == above, m


def _sine(dbfs: float, seconds: float = 2.0, hz: float = 440.0) -> np.ndarray:
    """A sine whose RMS is ``dbfs`` dB below full scale (amplitude sqrt(2) * 10^(dbfs/20))."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (np.sqrt(2) * 10 ** (dbfs / 20) * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_active_level_of_sines_and_silence_padding():
    assert active_level_db(_sine(-20)) == pytest.approx(-20.0, abs=0.05)
    m = loudness_metrics(_sine(-20), _sine(-26))
    assert m["level_db_diff"] == pytest.approx(6.0, abs=0.1) and m["level_db_abs"] == pytest.approx(6.0, abs=0.1)
    assert loudness_metrics(_sine(-26), _sine(-20))["level_db_diff"] == pytest.approx(-6.0, abs=0.1)
    # silence around the sound (and an off-grid start) is not part of the active region
    padded = np.concatenate([np.zeros(12345, np.float32), _sine(-20), np.zeros(3 * SAMPLE_RATE, np.float32)])
    assert active_level_db(padded) == pytest.approx(active_level_db(_sine(-20)), abs=0.1)
    assert loudness_metrics(padded, _sine(-20))["level_db_diff"] == pytest.approx(0.0, abs=0.1)
    # a plain RMS over the padded clip would be 4.6 dB lower: the gate is what keeps it
    assert 10 * np.log10(np.mean(padded.astype(np.float64) ** 2)) < -24.0
    # a faint floor 40 dB under the sound is outside the 35 dB window; digital silence is finite and very low
    floor = padded + np.random.default_rng(0).normal(0, 10 ** (-60 / 20), len(padded)).astype(np.float32)
    assert active_level_db(floor) == pytest.approx(-20.0, abs=0.15)
    assert active_level_db(np.zeros(SAMPLE_RATE, np.float32)) == -100.0
    assert loudness_metrics(silence_like(_sine(-20)), _sine(-20))["level_db_diff"] < -55.0


def test_clip_fraction_counts_full_scale_samples():
    x = 3.0 * np.sin(2 * np.pi * 5 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)  # 5 Hz, 3x full scale, then clipped
    clipped = np.clip(x, -1.0, 1.0)
    expected = np.mean(np.abs(x) >= 0.999)  # |sin| >= 1/3: 1 - 2/pi * asin(1/3) of the time, about 0.78
    assert clip_fraction(clipped) == pytest.approx(expected, abs=1e-9)
    assert clip_fraction(clipped) == pytest.approx(1 - 2 / np.pi * np.arcsin(0.999 / 3), abs=2e-3)
    assert clip_fraction(_sine(-20)) == 0.0 and clip_fraction(np.zeros(0)) == 0.0
    sparse = np.zeros(10000, np.float32)
    sparse[:10] = [1.0, -1.0, 0.9995, -0.9995, 0.998, 0.5, 1.2, -3.0, 0.0, 0.999]
    assert clip_fraction(sparse) == pytest.approx(7 / 10000)
    assert loudness_metrics(sparse, sparse)["clip_fraction"] == pytest.approx(7 / 10000)


def test_median_and_aggregate_carry_it():
    assert median([1.0, float("nan"), 3.0, 10.0]) == 3.0
    agg = MetricSuite.aggregate([{"level_db_diff": v} for v in (-1.0, 0.5, 9.0)])
    assert agg["level_db_diff"]["median"] == 0.5 and agg["level_db_diff"]["mean"] == pytest.approx(8.5 / 3)


def test_speech_breakdown_seen_sentences_and_held_out_voices():
    train = sentence_set(["The red ball.", "Dr. Smith paid.", None, ""])
    assert train == {"the red ball", "doctor smith paid"}
    clips = [
        {"task": "tts", "transcript": "the RED ball!", "held_out_voice": False, "wer": 0.2,
         "gt_vocoded": {"wer": 0.1}, "gt_raw": {"wer": 0.0}},
        {"task": "tts", "transcript": "A new sentence", "held_out_voice": True, "wer": 0.8,
         "gt_vocoded": {"wer": 0.3}, "gt_raw": {"wer": 0.1}},
        {"task": "tts", "transcript": "Another new one", "held_out_voice": True, "wer": 0.6,
         "gt_vocoded": {"wer": 0.5}, "gt_raw": {"wer": 0.0}},
        {"task": "v2s", "transcript": None, "onset_f1": 0.5},
    ]  # fmt: skip
    out = speech_breakdown(clips, train)
    assert set(out) == {"tts"}
    tts = out["tts"]
    assert (tts["sentences"], tts["seen_in_train"], tts["train_sentences"]) == (3, 1, 2)
    assert tts["fraction_seen"] == pytest.approx(1 / 3)
    assert tts["by_sentence"]["seen"]["generated"]["wer"]["mean"] == pytest.approx(0.2)
    assert tts["by_sentence"]["unseen"]["generated"]["wer"]["mean"] == pytest.approx(0.7)
    held = tts["by_voice"]["held_out"]
    assert held["generated"]["wer"]["n"] == 2 and held["gt_vocoded"]["wer"]["mean"] == pytest.approx(0.4)
    assert held["gt_raw"]["wer"]["mean"] == pytest.approx(0.05)
    assert tts["by_voice"]["training"]["generated"]["wer"]["mean"] == pytest.approx(0.2)
    # no voice marks: no per-voice split; no training sentences: nothing seen
    unmarked = [{k: v for k, v in c.items() if k != "held_out_voice"} for c in clips]
    plain = speech_breakdown(unmarked, set())["tts"]
    assert "by_voice" not in plain and plain["seen_in_train"] == 0 and "seen" not in plain["by_sentence"]


def test_speech_breakdown_tells_sentences_of_known_words_from_sentences_with_a_new_word():
    train = sentence_set(["We saw the red ball.", "Take the cup to the school."])
    clips = [  # unseen sentences all three; the first recombines training words, the others do not
        {"task": "tts", "transcript": "Take the red ball to the school!", "wer": 0.2, "gt_vocoded": {"wer": 0.1}},
        {"task": "tts", "transcript": "We saw the blue ball.", "wer": 0.6, "gt_vocoded": {"wer": 0.0}},
        {"task": "tts", "transcript": "Change to which folder?", "wer": 1.0, "gt_vocoded": {"wer": 0.2}},
    ]  # fmt: skip
    assert new_words(clips[1]["transcript"], {"we", "saw", "the", "ball"}) == ["blue"]
    tts = speech_breakdown(clips, train)["tts"]
    assert tts["seen_in_train"] == 0 and tts["new_words"] == 2
    assert tts["by_words"]["known"]["generated"]["wer"]["n"] == 1
    assert tts["by_words"]["known"]["generated"]["wer"]["mean"] == pytest.approx(0.2)
    assert tts["by_words"]["new"]["generated"]["wer"]["mean"] == pytest.approx(0.8)
    assert tts["by_words"]["new"]["gt_vocoded"]["wer"]["mean"] == pytest.approx(0.1)
    # no training transcripts: every word is new
    assert "known" not in speech_breakdown(clips, set())["tts"]["by_words"]


# ---- on real corpus clips ----------------------------------------------------------------------------------------
def test_onsets_find_corpus_events_and_the_shift(refs):
    for ref in refs[0]:
        times = [t for t, _ in ref.events]
        gt = onset_prf(ref.wav, times)
        assert gt["onset_f1"] >= 0.8, (ref.clip_id, gt, detect_onsets(ref.wav), times)
        assert onset_prf(silence_like(ref.wav), times)["onset_f1"] == 0.0
        assert onset_prf(shift(ref.wav, 0.2), times)["onset_f1"] <= gt["onset_f1"] - 0.3
        assert av_offset(ref.wav, times)["av_offset_abs_s"] <= 0.02
        assert av_offset(shift(ref.wav, 0.2), times)["av_offset_s"] == pytest.approx(0.2, abs=0.03)


def test_lipsync_proxy_on_drawn_face(corpus, refs):
    ref = refs[1][0]
    gt = lipsync_scores(ref.mouth_opening, ref.wav)
    sh = lipsync_scores(ref.mouth_opening, shift(ref.wav, 0.2))
    assert gt["lipsync_corr"] > 0.5 and gt["lipsync_offset_abs_s"] <= 0.04, gt
    assert sh["lipsync_offset_s"] == pytest.approx(0.2, abs=0.05) and sh["lipsync_corr"] < gt["lipsync_corr"] - 0.1
    assert lipsync_scores(ref.mouth_opening, silence_like(ref.wav))["lipsync_corr"] < 0.3


def test_mouth_opening_from_real_crops_follows_the_drawn_mouth(corpus, refs):
    from vssflow.features.lip import MouthCropper
    from vssflow.media.video import read_frames

    _, rows = corpus
    row = next(r for r in rows if r.clip_id == refs[1][0].clip_id)
    frames = read_frames(row.video, 25)[: len(refs[1][0].mouth_opening)]
    crops, info = MouthCropper()(frames)
    assert info["face_found"] > 0.9
    r = np.corrcoef(mouth_opening_from_crops(crops), refs[1][0].mouth_opening[: len(crops)])[0, 1]
    assert r > 0.8, r


def test_speech_span_and_classifier(refs, classifier):
    tts = refs[1][0]
    assert speech_span(silence_like(tts.wav)) == 0.0
    assert speech_span(tts.wav) > 0.8
    clf = C.SoundClassifier.load(classifier)
    for ref in refs[0]:
        assert C.class_accuracy(clf, ref.wav, ref.events) >= 0.6, ref.events
        assert C.class_accuracy(clf, silence_like(ref.wav), ref.events) <= 0.3


def test_fd_embedding_reuses_the_encoder_pass_of_the_transcription(refs):
    """A speech clip's FD embedding comes from the 30 s window its transcription encoded: one encoder pass for both
    (the costliest step of a speech clip's metrics), and the same frames as an encoding without the memory."""
    from vssflow.metrics.asr import WhisperASR
    from vssflow.metrics.audio_embed import WhisperBaseEmbedding

    asr = WhisperASR()
    enc, wav = asr.model.encode, refs[1][0].wav
    before = (enc.misses, enc.hits)
    assert normalize_for_wer(asr.transcribe(wav))  # it heard words
    emb = WhisperBaseEmbedding(asr).embed([wav])[0]
    assert (enc.misses - before[0], enc.hits - before[1]) == (1, 1)
    enc._last.clear()
    frames = asr.encode(wav)[0]
    assert enc.misses - before[0] == 2 and frames.shape == (int(np.ceil(len(wav) / SAMPLE_RATE * 50)), 512)
    assert np.array_equal(frames.mean(0).astype(np.float64), emb)
    other = WhisperBaseEmbedding(asr).embed([refs[0][0].wav])[0]  # another clip: encoded, not remembered
    assert enc.misses - before[0] == 3 and not np.allclose(other, emb)


def test_every_metric_separates_ground_truth_from_broken_audio(refs, classifier, tmp_path):
    """The suite on ground truth vs silence / shift / wrong speaker / wrong words / wrong sound (all metrics)."""
    v2s, tts = refs
    assert set(perturb(tts[0])) == {"silence", "shift200", "wrong_speaker", "wrong_words"}
    suite = MetricSuite(classifier=str(classifier))
    res = validate_metrics(v2s + tts, suite)
    (tmp_path / "validation.json").write_text(json.dumps(res, default=float))
    table = res["table"]
    for metric, perts in EXPECTED.items():
        for p in perts:
            assert metric in table and p in table[metric], (metric, p, sorted(table))
            assert table[metric][p]["separates"], (metric, p, table[metric][p])
    assert not res["failed"]
    gt = res["scores"]["ground_truth"]
    assert gt["wer"] <= 0.35 and gt["spk_sim"] > 0.6 and gt["mcd"] == pytest.approx(0.0, abs=1e-6)
    # designed invariances: WER ignores a 200 ms shift, MCD-DTW ignores it too, onsets ignore the speaker
    assert res["scores"]["shift200"]["wer"] <= gt["wer"] + 0.2
    assert res["scores"]["shift200"]["mcd"] < 5.0
