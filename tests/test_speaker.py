"""Speaker encoders on real speech synthesised by espeak-ng (Resemblyzer GE2E weights, and the trainable fallback)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from vssflow.audio.io import read_audio
from vssflow.errors import AssetError, ReferenceVoiceError
from vssflow.features.speaker import (
    RESEMBLYZER_SHA256,
    ResemblyzerEncoder,
    TrainableSpeakerConfig,
    TrainableSpeakerEncoder,
    _partial_slices,
    load_speaker_encoder,
    resemblyzer_weights_path,
    train_speaker_encoder,
)

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs Debian espeak-ng")

# Two clearly different espeak voices (variant and pitch), two different sentences each.
VOICES = {"m3": ("en-us+m3", 40), "f2": ("en-us+f2", 75)}
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She sells sea shells by the sea shore every single summer morning.",
)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def voice_files(tmp_path_factory):
    """{(voice, sentence index): path of a 22.05 kHz espeak-ng wav}."""
    d = tmp_path_factory.mktemp("voices")
    files = {}
    for name, (voice, pitch) in VOICES.items():
        for i, text in enumerate(SENTENCES):
            path = d / f"{name}_{i}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-w", str(path), text], check=True)
            files[name, i] = path
    return files


@pytest.fixture(scope="module")
def wavs(voice_files):
    """Same voices, read and resampled to 16 kHz mono float32."""
    return {k: read_audio(p) for k, p in voice_files.items()}


@pytest.fixture(scope="module")
def resemblyzer():
    return ResemblyzerEncoder()


def test_resemblyzer_weights_checked(resemblyzer):
    path = resemblyzer_weights_path()
    assert path.name == "pretrained.pt" and path.is_file()
    assert resemblyzer.sha256 == RESEMBLYZER_SHA256
    assert resemblyzer.version.startswith("resemblyzer-0.1.4+sha256:39373b86598f")


def test_resemblyzer_separates_voices(resemblyzer, voice_files):
    emb = {k: resemblyzer.embed_file(p) for k, p in voice_files.items()}
    for e in emb.values():
        assert e.shape == (256,) and e.dtype == np.float32
        assert abs(float(np.linalg.norm(e)) - 1.0) < 1e-5
        assert (e >= 0).all()  # GE2E embeddings come out of a ReLU
    same = [float(emb[v, 0] @ emb[v, 1]) for v in VOICES]
    different = [float(emb["m3", i] @ emb["f2", j]) for i in range(2) for j in range(2)]
    # Different sentences of one voice are closer than any pair of different voices, by a clear margin.
    assert min(same) > max(different) + 0.1, (same, different)
    assert min(same) > 0.75


def test_resemblyzer_deterministic_and_rate_independent(resemblyzer, wavs, voice_files):
    a = resemblyzer.embed(wavs["m3", 0])
    b = resemblyzer.embed(torch.from_numpy(wavs["m3", 0]))
    assert np.array_equal(a, b)
    # embed_file resamples 22.05 kHz -> 16 kHz itself.
    assert np.allclose(resemblyzer.embed_file(voice_files["m3", 0]), a, atol=1e-6)


def test_partial_slices_follow_resemblyzer():
    # 3 s: 301 frames, step round(16000 / 1.3 / 160) = 77, last partial covers 91% (kept).
    assert _partial_slices(48_000, 1.3, 0.75) == [slice(0, 160), slice(77, 237), slice(154, 314)]
    # Shorter than one partial: always one slice.
    assert _partial_slices(16_000, 1.3, 0.75) == [slice(0, 160)]
    # 2 s: the second partial covers 77% of its window (kept); at 1.75 s only 61% (dropped).
    assert _partial_slices(32_000, 1.3, 0.75) == [slice(0, 160), slice(77, 237)]
    assert _partial_slices(28_000, 1.3, 0.75) == [slice(0, 160)]


@pytest.mark.parametrize(
    ("wav", "match"),
    [
        (np.zeros(8000, np.float32) + 0.1, "0.50 s long, at least 1 s"),
        (np.zeros(0, np.float32), "0.00 s long"),
        (np.zeros(32_000, np.float32), "silent"),
        (np.full(32_000, np.nan, np.float32), "NaN"),
        (np.zeros((32_000, 2), np.float32), "mono"),
    ],
)
def test_bad_reference_voice(resemblyzer, wav, match):
    with pytest.raises(ReferenceVoiceError, match=match) as err:
        resemblyzer.embed(wav, source="speaker_7.wav")
    assert str(err.value).startswith("speaker_7.wav: ") and "\n" not in str(err.value)
    assert err.value.reason == "bad_reference_voice"


def test_short_reference_file(resemblyzer, tmp_path):
    path = tmp_path / "short.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "400", "-w", str(path), "hi"], check=True)
    with pytest.raises(ReferenceVoiceError, match="short.wav: reference voice is 0"):
        resemblyzer.embed_file(path)


def test_resemblyzer_asset_errors(tmp_path):
    bad = tmp_path / "pretrained.pt"
    data = bytearray(resemblyzer_weights_path().read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(AssetError, match="sha256 .* is not Resemblyzer 0.1.4"):
        ResemblyzerEncoder(bad)
    with pytest.raises(AssetError, match="missing"):
        ResemblyzerEncoder(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AssetError, match="cannot load"):
        ResemblyzerEncoder(tmp_path / "junk.pt", check_sha256=False)


def test_load_speaker_encoder_specs(tmp_path):
    assert isinstance(load_speaker_encoder(), ResemblyzerEncoder)
    assert isinstance(load_speaker_encoder(resemblyzer_weights_path()), ResemblyzerEncoder)
    with pytest.raises(AssetError, match="unknown speaker encoder"):
        load_speaker_encoder(tmp_path / "nothing_here")
    with pytest.raises(AssetError, match="not a trained speaker encoder"):
        load_speaker_encoder(tmp_path)  # an existing but empty directory


def test_trainable_encoder_trains_and_roundtrips(wavs, tmp_path):
    cfg = TrainableSpeakerConfig(batch_size=8, crop_seconds=1.0)
    utts = [wavs[k] for k in sorted(wavs)]
    labels = [k[0] for k in sorted(wavs)]
    fresh = TrainableSpeakerEncoder(cfg, seed=0)
    before = fresh.version
    enc, losses = train_speaker_encoder(utts, labels, steps=40, config=cfg, seed=0)
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < np.mean(losses[:8])  # it learns to tell the two voices apart
    assert enc.steps_trained == 40 and enc.version != before

    emb = {k: enc.embed(w) for k, w in wavs.items()}
    assert min(float(emb[v, 0] @ emb[v, 1]) for v in VOICES) > float(emb["m3", 0] @ emb["f2", 0]) + 0.1
    e = emb["m3", 0]
    assert e.shape == (256,) and e.dtype == np.float32 and abs(float(np.linalg.norm(e)) - 1) < 1e-5

    out = enc.save(tmp_path / "spk")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_speaker_encoder(out)
    assert isinstance(loaded, TrainableSpeakerEncoder)
    assert loaded.version == enc.version and loaded.steps_trained == 40 and loaded.config == cfg
    for w in (wavs["m3", 0], wavs["f2", 1]):
        assert np.allclose(loaded.embed(w), enc.embed(w), atol=1e-6)
    with pytest.raises(ReferenceVoiceError):
        loaded.embed(np.ones(100, np.float32))


def test_train_needs_two_speakers(wavs):
    with pytest.raises(ValueError, match="two speakers"):
        train_speaker_encoder([wavs["m3", 0]], ["a"], steps=1)


@pytest.mark.parametrize(
    "first", ["vssflow.features.speaker_trainable", "vssflow.features.speaker_base", "vssflow.features.speaker"]
)
def test_the_speaker_modules_import_in_any_order(first):
    import sys

    code = (
        f"import {first}; from vssflow.features.speaker import TrainableSpeakerEncoder, load_speaker_encoder; "
        "from vssflow.features.speaker_trainable import TrainableSpeakerEncoder as T; "
        "assert T is TrainableSpeakerEncoder"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
