"""Every metric on real corpus clips (`vssflow synth`) vs deliberately broken audio: the separation must hold.

One small corpus for the module (espeak speech + real Debian event sounds); Whisper-base runs on one speech clip's
five versions only, so the file stays well under three minutes on a loaded 2-core machine.
"""

import json

import numpy as np
import pytest
from conftest_media import synth_corpus

from vssflow.constants import SAMPLE_RATE
from vssflow.data.manifest import read_manifest
from vssflow.metrics import classifier as C
from vssflow.metrics.audio_embed import frechet_distance, kl_paired
from vssflow.metrics.duration import speech_span
from vssflow.metrics.lipsync import lipsync_scores, mouth_opening_from_crops
from vssflow.metrics.mcd import dtw_path, mcd
from vssflow.metrics.onsets import av_offset, chance_onset_f1, detect_onsets, match_events, onset_prf
from vssflow.metrics.perturb import EXPECTED, perturb, validate_metrics
from vssflow.metrics.references import reference_from_row
from vssflow.metrics.suite import MetricSuite, shift, silence_like
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
