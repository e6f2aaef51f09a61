"""Feature-level synthetic mixing (vssflow.data.mixing): placement, mel arithmetic, padding, determinism."""

import numpy as np
import pytest
import torch
import torchaudio

from vssflow.constants import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE, latent_frames
from vssflow.data.mixing import LOG_MEL_FLOOR, mix_clips, mix_log_mel, stretch_phonemes
from vssflow.errors import FeatureShapeError
from vssflow.types import ClipFeatures

_MEL = torchaudio.transforms.MelSpectrogram(
    sample_rate=SAMPLE_RATE,
    n_fft=N_FFT,
    hop_length=HOP_LENGTH,
    n_mels=N_MELS,
    f_max=8000.0,
    power=1.0,
    norm="slaney",
    mel_scale="slaney",
)


def _log_mel(wave: np.ndarray) -> np.ndarray:
    m = _MEL(torch.from_numpy(wave.astype(np.float32)))[:, : len(wave) // HOP_LENGTH]
    return torch.log(torch.clamp(m, min=1e-5)).T.numpy()  # (T_mel, 64)


def _tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _sound(seconds=4.0):
    return ClipFeatures(
        duration_s=seconds,
        task="v2s",
        sem=np.ones((int(seconds * 10), 8), np.float32),
        sync=np.full((int(seconds * 25), 32, 32), 100, np.uint8),
        mel=_log_mel(_tone(300.0, seconds)),
        meta={"clip_id": "snd"},
    )


def _speech(seconds=1.6):
    rng = np.random.default_rng(0)
    return ClipFeatures(
        duration_s=seconds,
        task="tts",
        sem=np.full((int(seconds * 10), 8), 2.0, np.float32),
        lip=rng.integers(1, 255, (int(seconds * 25), 32, 32), dtype=np.uint8),
        sync=np.full((int(seconds * 25), 32, 32), 200, np.uint8),
        phonemes=np.array([5, 6, 7, 8], np.int16),
        speaker=np.full(256, 0.0625, np.float32),
        mel=_log_mel(_tone(2000.0, seconds)),
        meta={"clip_id": "spk"},
    )


@pytest.mark.parametrize("mode", ["add", "insert"])
def test_mix_places_speech_at_the_onset(mode):
    snd, sp = _sound(), _speech()
    mix = mix_clips(snd, sp, rng=np.random.default_rng(3), mode=mode)
    onset = mix.meta["onset_s"]
    assert mix.task == "joint" and mix.duration_s == snd.duration_s
    assert 0.0 <= onset <= snd.duration_s - sp.duration_s
    assert mix.mel.shape == snd.mel.shape
    s10, s25, s100 = int(onset * 10), int(onset * 25), int(onset * 100)
    # semantic frames: speech added to / written over the sound frames at 10 fps offset, untouched elsewhere
    inside = 3.0 if mode == "add" else 2.0
    np.testing.assert_allclose(mix.sem[s10 : s10 + 16], inside)
    np.testing.assert_allclose(np.delete(mix.sem, range(s10, s10 + 16), axis=0), 1.0)
    # lip: zero before the onset and after the speech, the speech's crops in between
    assert mix.lip.shape == (100, 32, 32) and mix.lip.dtype == np.uint8
    assert not mix.lip[:s25].any() and not mix.lip[s25 + 40 :].any()
    np.testing.assert_array_equal(mix.lip[s25 : s25 + 40], sp.lip)
    # sync thumbnails: the two videos overlaid (add: pixel mean) or the speech video's (insert) inside the segment
    assert mix.sync.shape == (100, 32, 32) and mix.sync.dtype == np.uint8
    assert (mix.sync[s25 : s25 + 40] == (150 if mode == "add" else 200)).all()
    assert (np.delete(mix.sync, range(s25, s25 + 40), axis=0) == 100).all()
    # phonemes: frame level on the 25 Hz grid, zero-padded by the offset
    assert mix.phonemes.shape == (latent_frames(4.0),)
    assert not mix.phonemes[:s25].any() and not mix.phonemes[s25 + 40 :].any()
    assert set(mix.phonemes[s25 : s25 + 40]) == {5, 6, 7, 8}
    np.testing.assert_array_equal(mix.speaker, sp.speaker)
    # target audio: outside the speech segment the sound is unchanged
    np.testing.assert_allclose(mix.mel[: s100 - 1], snd.mel[: s100 - 1], atol=1e-5)
    np.testing.assert_allclose(mix.mel[s100 + 161 :], snd.mel[s100 + 161 :], atol=1e-5)


def test_add_mode_keeps_the_scaled_sound_and_insert_mode_removes_it():
    snd, sp = _sound(), _speech()
    bin300 = np.argmax(snd.mel[50])  # the sound's mel bin
    for mode in ("add", "insert"):
        mix = mix_clips(snd, sp, rng=np.random.default_rng(5), mode=mode)
        mid = int(mix.meta["onset_s"] * 100) + 80  # a frame in the middle of the speech
        g = mix.meta["sound_gain"]
        if mode == "add":
            assert 0.3 <= g <= 0.7
            # magnitude at the sound's bin = g * sound + speech (speech is ~silent there)
            expect = np.log(g * np.exp(snd.mel[mid, bin300]) + np.exp(sp.mel[80, bin300]))
            assert mix.mel[mid, bin300] == pytest.approx(expect, abs=1e-4)
            assert mix.mel[mid, bin300] > sp.mel[80, bin300] + 2.0  # the sound is still audible
        else:
            np.testing.assert_allclose(mix.mel[mid], sp.mel[80], atol=1e-5)


def test_mix_log_mel_is_the_log_of_summed_magnitudes():
    a = np.log(np.full((10, 4), 2.0))
    b = np.log(np.full((3, 4), 1.0))
    out = mix_log_mel(a, b, 5, mode="add", sound_gain=0.5)
    np.testing.assert_allclose(np.exp(out[5:8]), 2.0, rtol=1e-6)  # 0.5 * 2 + 1
    np.testing.assert_allclose(np.exp(out[:5]), 2.0, rtol=1e-6)
    out = mix_log_mel(a, b, 8, mode="insert", sound_gain=0.0)
    np.testing.assert_allclose(np.exp(out[8:]), 1.0, rtol=1e-6)  # clipped at the end of the sound


def test_speech_longer_than_sound_starts_at_zero_and_extends_the_clip():
    snd, sp = _sound(1.0), _speech(1.6)
    mix = mix_clips(snd, sp, rng=np.random.default_rng(0), mode="insert")
    assert mix.meta["onset_s"] == 0.0 and mix.duration_s == 1.6
    assert mix.mel.shape == (160, 64) and mix.sem.shape == (16, 8)


def test_mixing_is_deterministic_for_a_seed_and_varies_across_seeds():
    snd, sp = _sound(), _speech()
    a = mix_clips(snd, sp, rng=np.random.default_rng(11))
    b = mix_clips(snd, sp, rng=np.random.default_rng(11))
    np.testing.assert_array_equal(a.mel, b.mel)
    assert a.meta == b.meta
    onsets = {round(mix_clips(snd, sp, rng=np.random.default_rng(s)).meta["onset_s"], 3) for s in range(8)}
    modes = {mix_clips(snd, sp, rng=np.random.default_rng(s)).meta["mix_mode"] for s in range(8)}
    assert len(onsets) > 4 and modes == {"add", "insert"}


def test_stretch_phonemes_and_errors():
    np.testing.assert_array_equal(stretch_phonemes(np.array([1, 2]), 4), [1, 1, 2, 2])
    assert stretch_phonemes(np.array([], np.int16), 3).tolist() == [0, 0, 0]
    with pytest.raises(FeatureShapeError):
        mix_clips(ClipFeatures(duration_s=1.0), _speech(), rng=np.random.default_rng(0))
    assert LOG_MEL_FLOOR < -11


# ---- the sampler (vssflow.data.sampler) ------------------------------------------------------------------------------
from vssflow.data.sampler import BucketSampler, SamplerConfig  # noqa: E402


def _pool(n_v2s=24, n_tts=24):
    rng = np.random.default_rng(1)
    out = []
    for i in range(max(n_v2s, n_tts)):
        if i < n_v2s:
            d = float(rng.choice([1.0, 2.0]))
            sem, mel = np.zeros((int(d * 10), 8), np.float32), np.zeros((int(d * 100), 64), np.float32)
            out.append(ClipFeatures(duration_s=d, task="v2s", sem=sem, mel=mel, meta={"clip_id": f"v{i}"}))
        if i < n_tts:
            sp = _speech(1.0)
            sp.meta = {"clip_id": f"t{i}"}
            out.append(sp)
    return out


def test_sampler_batches_are_single_task_bucketed_and_never_repeat_a_clip():
    cfg = SamplerConfig(batch_size=4, v2s_weight=1, tts_weight=1, joint_weight=1, buffer_size=16, seed=0)
    batches = list(BucketSampler(cfg, epoch=0).batches(_pool()))
    ids = [i for b in batches for i in b.source_ids]
    assert len(ids) == len(set(ids)) and len(ids) >= 40  # at most a few rows dropped at the end of the epoch
    assert {b.task for b in batches} == {"v2s", "tts", "joint"}
    for b in batches:
        assert len(b.clips) == 4 and {c.task for c in b.clips} == {b.task}
        if b.task == "joint":
            assert len(b.source_ids) == 8 and all(c.speaker is not None for c in b.clips)
    # bucketing: a batch spans less duration than the pool does
    assert np.mean([np.ptp([c.duration_s for c in b.clips]) for b in batches if b.task == "v2s"]) < 0.5
    # deterministic for (seed, epoch, rank); another epoch gives another order
    again = list(BucketSampler(cfg, epoch=0).batches(_pool()))
    assert [b.source_ids for b in again] == [b.source_ids for b in batches]
    other = list(BucketSampler(cfg, epoch=1).batches(_pool()))
    assert [b.source_ids for b in other] != [b.source_ids for b in batches]


def test_sampler_task_weights_and_external_chooser():
    only_v2s = SamplerConfig(batch_size=4, v2s_weight=1, tts_weight=0, joint_weight=0, buffer_size=16)
    batches = list(BucketSampler(only_v2s).batches(_pool()))
    assert {b.task for b in batches} == {"v2s"} and len(batches) == 6
    asked = []

    def choose(feasible):  # e.g. the distributed trainer's agreed choice
        asked.append(dict(feasible))
        return "tts" if "tts" in feasible else None

    cfg = SamplerConfig(batch_size=4, buffer_size=16)
    batches = list(BucketSampler(cfg).batches(_pool(), choose=choose))
    assert {b.task for b in batches} == {"tts"} and 1 <= len(batches) <= 6
    assert asked[0] == {"v2s": 1.0, "tts": 1.0, "joint": 0.5}
    assert "tts" not in asked[-1]  # the chooser's None ended the epoch (the buffer held only V2S rows then)


def test_sampler_keep_tail_trains_a_set_smaller_than_a_batch_of_a_task():
    # 3 V2S + 2 TTS clips, batch size 4: no task fills a batch. Without keep_tail the epoch forms none (as before);
    # with it every clip is used once, in smaller batches, one task or "mixed".
    pool = _pool(n_v2s=3, n_tts=2)
    assert list(BucketSampler(SamplerConfig(batch_size=4, buffer_size=16)).batches(pool)) == []
    cfg = SamplerConfig(batch_size=4, buffer_size=16, keep_tail=True)
    batches = list(BucketSampler(cfg).batches(pool))
    ids = [i for b in batches for i in b.source_ids if b.task != "joint"]
    joint = [b for b in batches if b.task == "joint"]
    assert all(1 <= len(b.clips) <= 4 for b in batches)
    assert len(ids) == len(set(ids)) and sum(len(b.source_ids) for b in batches) == 5
    for b in joint:
        assert len(b.source_ids) == 2 * len(b.clips)
    assert [b.source_ids for b in BucketSampler(cfg).batches(pool)] == [b.source_ids for b in batches]

    # a distributed chooser that agrees only on "mixed" (one worker holds only V2S, another only speech):
    # a mixed batch takes clips of both tasks
    def only_mixed(feasible):
        return "mixed" if "mixed" in feasible else None

    mixed = list(BucketSampler(cfg).batches(pool, choose=only_mixed))
    assert [len(b.clips) for b in mixed] == [4, 1] and {b.task for b in mixed} == {"mixed"}
    assert {c.task for c in mixed[0].clips} == {"v2s", "tts"}
    # a full-size stream is unchanged by keep_tail until its end
    big = list(BucketSampler(SamplerConfig(batch_size=4, buffer_size=16, keep_tail=True)).batches(_pool()))
    plain = list(BucketSampler(SamplerConfig(batch_size=4, buffer_size=16)).batches(_pool()))
    assert [b.source_ids for b in big[: len(plain)]] == [b.source_ids for b in plain]
    assert sum(len(b.source_ids) for b in big) == 48
