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
