"""Generator: one generate() for every front end; saved and loaded through its model directory (test_model_dir
tests the directory itself); long clips in windows."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vssflow import Generator
from vssflow.audio import log_mel
from vssflow.audio.codec import MelCodec
from vssflow.errors import FeatureShapeError, InputError
from vssflow.model import ModelConfig
from vssflow.types import ClipFeatures

CFG = ModelConfig(depth=2, width=64, heads=4, cross_dim=64, sem_dim=32, lip_dim=16, max_seconds=4.0, latent_dim=64)


def _clip(duration=2.0, task="v2s", seed=0):
    rng = np.random.default_rng(seed)
    n10, n25 = int(round(duration * 10)), int(round(duration * 25))
    if task == "v2s":
        return ClipFeatures(duration_s=duration, task=task, sem=rng.standard_normal((n10, 32)).astype(np.float32))
    spk = rng.standard_normal(256).astype(np.float32)
    return ClipFeatures(
        duration_s=duration,
        task=task,
        sem=rng.standard_normal((n10, 32)).astype(np.float32),
        lip=rng.integers(0, 255, (n25, 32, 32), dtype=np.uint8),
        phonemes=rng.integers(2, 60, 12),
        speaker=spk / np.linalg.norm(spk),
    )


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    g = Generator(CFG)
    # Non-zero output weights so that conditions and noise reach the audio (a fresh DiT outputs zero velocity).
    for p in g.model.parameters():
        if p.abs().sum() == 0 and p.ndim > 1:
            torch.nn.init.normal_(p, std=0.02)
    return g


def test_output_length_is_the_clip_duration(gen):
    for d in (0.5, 1.3, 2.0):
        wav = gen.generate(_clip(d), steps=2, seed=0)
        assert wav.dtype == np.float32 and wav.shape == (int(round(d * 16000)),)
        assert np.isfinite(wav).all()


def test_same_seed_same_audio_bit_for_bit_and_other_seed_differs(gen):
    a = gen.generate(_clip(task="tts"), steps=3, seed=7)
    b = gen.generate(_clip(task="tts"), steps=3, seed=7)
    c = gen.generate(_clip(task="tts"), steps=3, seed=8)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_batched_generation_equals_one_by_one(gen):
    clips = [_clip(2.0, "v2s", 1), _clip(1.2, "tts", 2)]
    x1, n_frames, nfe = gen.sample_latents(clips, [3, 4], steps=3, cfg=3.0)
    assert nfe == 3 and n_frames.tolist() == [50, 30]
    for i, (clip, s) in enumerate(zip(clips, [3, 4], strict=True)):
        xi, ni, _ = gen.sample_latents([clip], [s], steps=3, cfg=3.0)
        n = int(ni[0])
        torch.testing.assert_close(x1[i, :n], xi[0, :n], atol=1e-5, rtol=1e-5)
    wavs = gen.generate(clips, steps=3, seed=[3, 4])
    # Decoded per length, no padding reaches the audio. Batched and single matmuls round differently (1e-5 in the
    # latents), and where that flips a spectral-peak choice of the phase estimate the waveform's phase differs
    # locally; its spectrogram does not.
    for clip, s, wav in zip(clips, [3, 4], wavs, strict=True):
        alone = gen.generate(clip, steps=3, seed=s)
        assert wav.shape == alone.shape
        assert np.abs(log_mel(wav) - log_mel(alone)).mean() < 0.05


def test_dopri5_clip_alone_and_batched_with_a_longer_clip_give_the_same_audio():
    # dopri5 sizes each clip's steps on that clip's own error: a longer batch-mate (and the padding it brings) does
    # not change the short clip's steps, so its audio matches the clip generated alone. A velocity head: a data
    # head's velocity (x1_hat - x) / (1 - t) multiplies the float rounding of a batched matmul by up to 1 / T_CLAMP
    # near t = 1 (6e-4 in the latent here, inaudible), which would hide what this test checks.
    torch.manual_seed(0)
    gen = Generator(CFG.replace(prediction="velocity"))
    for p in gen.model.parameters():
        if p.abs().sum() == 0 and p.ndim > 1:
            torch.nn.init.normal_(p, std=0.02)
    short, long_ = _clip(0.8, "tts", 5), _clip(2.0, "v2s", 6)
    x_alone, _, nfe_alone = gen.sample_latents([short], [1], steps=2, cfg=3.0, method="dopri5")
    x_both, n_frames, nfe_both = gen.sample_latents([short, long_], [1, 2], steps=2, cfg=3.0, method="dopri5")
    n = int(n_frames[0])
    assert n_frames.tolist() == [20, 50] and nfe_alone > 1
    torch.testing.assert_close(x_both[0, :n], x_alone[0, :n], atol=2e-5, rtol=2e-5)  # whole-batch norm: 7e-4 off
    alone = gen.generate(short, steps=2, seed=1, method="dopri5")
    batched = gen.generate([short, long_], steps=2, seed=[1, 2], method="dopri5")[0]
    assert alone.shape == batched.shape
    assert np.abs(log_mel(batched) - log_mel(alone)).mean() < 0.05


def test_save_load_round_trip_gives_identical_audio(gen, tmp_path):
    gen.codec = MelCodec(components=CFG.latent_dim).fit(
        [np.random.default_rng(0).standard_normal((400, 64)).astype(np.float32)]
    )
    gen.step = 12
    ema = {k: v + 0.01 for k, v in gen.model.state_dict().items()}
    out = gen.save_pretrained(tmp_path / "model", ema_state=ema, data_version="abc")
    assert sorted(p.name for p in out.iterdir()) == ["codec", "config.json", "ema.safetensors", "model.safetensors"]
    raw = Generator.from_pretrained(out, use_ema=False)
    clip = _clip(task="tts")
    np.testing.assert_array_equal(raw.generate(clip, steps=3, seed=5), gen.generate(clip, steps=3, seed=5))
    assert raw.step == 12 and raw.info["data_version"] == "abc"
    ema_gen = Generator.from_pretrained(out)  # EMA by default
    assert ema_gen.info["weights"] == "ema.safetensors"
    assert not np.array_equal(ema_gen.generate(clip, steps=3, seed=5), raw.generate(clip, steps=3, seed=5))
    # saving again replaces the directory atomically: the symlink names the new version, the old one is gone
    gen.save_pretrained(tmp_path / "model")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[-1] == "model" and (tmp_path / "model").is_symlink(), names
    assert [n for n in names if ".v-" in n] == [os.readlink(tmp_path / "model")], names


def test_long_clip_is_generated_in_crossfaded_windows(gen):
    clip = _clip(9.3, "v2s", 3)
    wav = gen.generate(clip, steps=2, seed=0)
    assert wav.shape == (int(round(9.3 * 16000)),) and np.isfinite(wav).all()


def test_a_long_speech_clip_is_windowed_with_the_models_phoneme_layout(gen):
    """Each window's features (vssflow.windows.slice_features, tested in test_windows) pass the model's checks."""
    long = _clip(9.0, "tts")
    long.speech_span, long.phoneme_durations = (0.5, 8.0), np.ones(12, np.float32)
    wav = gen.generate(long, steps=2, seed=0)
    assert wav.shape == (9 * 16000,) and np.isfinite(wav).all()


def test_bad_options_and_features_give_one_line_errors(gen):
    with pytest.raises(InputError, match="steps"):
        gen.generate(_clip(), steps=0)
    with pytest.raises(InputError, match="cfg"):
        gen.generate(_clip(), cfg=float("nan"))
    with pytest.raises(InputError, match="method"):
        gen.generate(_clip(), method="rk4")
    bad = _clip()
    bad.sem = bad.sem[:, :16]
    with pytest.raises(FeatureShapeError) as e:
        gen.generate(bad, steps=1)
    assert "sem" in str(e.value) and "\n" not in str(e.value)


def test_check_is_the_public_validity_check_of_options_and_shapes(gen):
    assert gen.check() == (16, 3.0, "euler")  # the model's defaults, as generate() will use them
    assert gen.check(_clip(), steps=4, cfg=1.5, method="midpoint") == (4, 1.5, "midpoint")
    assert gen.check([_clip(), _clip(9.3, "tts")], steps=2) == (2, 3.0, "euler")  # a long clip: its first window
    for kwargs, needle in [({"steps": 0}, "steps"), ({"cfg": 1e9}, "cfg"), ({"method": "rk4"}, "method")]:
        with pytest.raises(InputError, match=needle):
            gen.check(**kwargs)
    for bad in (_clip(), _clip(9.3)):
        bad.sem = bad.sem[:, :16]
        with pytest.raises(FeatureShapeError, match="sem"):
            gen.check(bad)
    wrong_task = _clip()
    wrong_task.task = "singing"
    with pytest.raises(InputError, match="task"):
        gen.check([_clip(), wrong_task])


def test_windows_are_where_generate_cuts_a_long_clip(gen):
    assert gen.windows(2.0) == [(0.0, 2.0)]
    assert gen.windows(4.0) == [(0.0, 4.0)]  # the model window itself: one
    assert gen.windows(9.3) == [(0.0, 4.0), (3.0, 7.0), (5.3, 9.3)]  # 1 s overlap, the last one ends at the end


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("midpoint", 2)])
def test_progress_counts_every_solver_step_of_the_call(gen, method, per_step):
    """One progress over the whole call: the short clips' one integration, then each window of the long clip."""
    seen: list[tuple[int, int]] = []
    clips = [_clip(1.0), _clip(9.3), _clip(2.0)]
    gen.generate(clips, steps=2, method=method, progress=lambda done, total: seen.append((done, total)))
    total = (1 + len(gen.windows(9.3))) * 2 * per_step
    assert seen == [(k, total) for k in range(1, total + 1)]


def test_info_command(gen, tmp_path):
    gen.save_pretrained(tmp_path / "m")
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "info", str(tmp_path / "m")], capture_output=True, text=True, check=True
    ).stdout
    assert f"{gen.model.num_params():,}" in out and "sem=cross" in out
    bad = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "info", str(tmp_path / "zzz")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "zzz" in bad.stderr


def test_decode_guards_the_peak_and_counts_the_clips_it_lowered(gen):
    from vssflow.postfilter import PEAK_LIMIT

    before = gen.peak_guarded
    latents = torch.full((1, 10, gen.config.latent_dim), 40.0)  # absurdly loud latents: the guard fires
    (wav,) = gen.decode(latents, torch.tensor([10]), [0.4])
    assert np.abs(wav).max() <= PEAK_LIMIT + 1e-6 and gen.peak_guarded == before + 1


def test_a_list_of_clips_is_one_tensor_batch_per_solver_step_and_one_vocoder_call(gen, monkeypatch):
    """What Serve's @serve.batch relies on: generate(list) runs the DiT once per step on the whole (guided) batch,
    and the vocoder once per clip length, on the generator's device."""
    calls, vocoded = [], []
    predict, vocode = gen.model.predict_flow, gen.vocoder
    monkeypatch.setattr(gen.model, "predict_flow", lambda x, t, c: calls.append(tuple(x.shape)) or predict(x, t, c))
    monkeypatch.setattr(gen, "vocoder", lambda mel: vocoded.append(tuple(mel.shape)) or vocode(mel))
    clips = [_clip(2.0, "v2s", s) for s in range(4)]
    wavs = gen.generate(clips, steps=3, cfg=3.0, seed=[0, 1, 2, 3])
    assert len(wavs) == 4 and calls == [(2 * 4, 50, CFG.latent_dim)] * 3  # cond + uncond of 4 clips, 3 steps
    assert len(vocoded) == 1 and vocoded[0][0] == 4


# as wide as the full 256-channel mel latent, so its (unfitted) MelCodec is lossless (the model test_evaluate evaluates)
EVAL_MODEL = {"depth": 1, "width": 256, "heads": 2, "cross_dim": 32, "lip_dim": 8, "phoneme_dim": 8,
              "time_freq_dim": 32, "latent_dim": 256}  # fmt: skip


def test_reconstruct_goes_through_the_codec_and_vocoder():
    """Generator.reconstruct: a clip's own mel through the model's codec and vocoder, as long as the clip."""
    import torch

    from vssflow.audio.mel import log_mel

    gen = Generator(ModelConfig(**EVAL_MODEL, sem_dim=32), codec=MelCodec())
    t = np.arange(int(1.23 * 16000)) / 16000
    wav = (0.1 * np.sin(2 * np.pi * 440 * t) * (t < 0.8)).astype(np.float32)
    mel = np.asarray(log_mel(wav))
    out = gen.reconstruct(mel, 1.23)
    assert out.shape == (len(wav),) and out.dtype == np.float32
    rec = np.asarray(log_mel(out))[: len(mel)]
    assert np.corrcoef(rec.ravel(), mel.ravel())[0, 1] > 0.9  # the same sound, not noise
    assert len(gen.reconstruct(mel)) == len(mel) * 160
    # it is the codec's path: a codec that scales its latents changes the output
    gen.codec.std = gen.codec.std * 0.0 + 2.0
    gen.codec.mean = gen.codec.mean * 0.0 + 1.0
    again = np.asarray(log_mel(gen.reconstruct(mel, 1.23)))[: len(mel)]  # encode/decode invert each other
    assert np.abs(again - rec).mean() < 0.05  # (compared as mels: Griffin-Lim's phase magnifies the rounding)
    gen.codec.decode = lambda z: torch.full((len(z), 4 * z.shape[1], 64), float(mel.min()))  # forgets everything
    assert np.abs(gen.reconstruct(mel, 1.23)).max() < 0.1 * np.abs(out).max()


def test_generate_applies_the_postfilter_with_its_sampling_options():
    """With gv_max_ratio > 1 a clip's audio is the decode of its postfiltered latents (vssflow.postfilter, tested in
    test_postfilter) with the generator's codec and sampling options, not of the plain ones."""
    import dataclasses

    from vssflow.postfilter import postfilter

    torch.manual_seed(0)
    g = Generator(CFG.replace(prediction="data"))  # untrained: samples are its prior's mu, a smooth estimate
    g.codec.global_variance = {"tts": torch.full((CFG.latent_dim,), 50.0)}
    g.sampling = dataclasses.replace(g.sampling, gv_max_ratio=2.0)  # gv_mode "level", the default
    clip = _clip(2.0, "tts", seed=1)
    one, n1, _ = g.sample_latents([clip], [0], steps=4, cfg=3.0)
    kept1, gain1 = g.postfilter(one, n1, ["tts"])
    kept2, gain2 = postfilter(one, n1, ["tts"], codec=g.codec, sampling=g.sampling)
    torch.testing.assert_close((kept1, gain1), (kept2, gain2))
    assert gain1[0] > 0.05  # the compensation reached this clip
    filtered = g.decode(kept1, n1, [2.0], gain1)[0]
    wav = g.generate(clip, steps=4, cfg=3.0, seed=0)
    np.testing.assert_allclose(wav, filtered, atol=1e-5)
    assert not np.allclose(wav, g.decode(one, n1, [2.0])[0], atol=1e-3)


def test_bf16_generation_as_on_a_gpu_is_close_to_fp32(gen):
    """A GPU generator's precision, on the CPU: DiT weights and calls in bf16, the solver's state in fp32."""
    import copy

    bf16 = Generator(CFG, model=copy.deepcopy(gen.model), codec=gen.codec, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    clips, seeds = [_clip(2.0, "v2s", 1), _clip(1.2, "tts", 2)], [3, 4]
    with torch.no_grad():
        ref, n_frames, _ = gen.sample_latents(clips, seeds, steps=4, cfg=3.0)
        x1, _, _ = bf16.sample_latents(clips, seeds, steps=4, cfg=3.0)
        assert x1.dtype == torch.float32
        assert 0 < float((x1 - ref).norm() / ref.norm()) < 0.03  # bf16 rounds (0 would mean fp32 ran), by ~1 %
        # the log-mel the vocoder gets: within 0.02 (natural log) of fp32's, where its frames spread by ~0.3
        assert float((gen.codec.decode(x1) - gen.codec.decode(ref)).abs().mean()) < 0.02
    for w, clip in zip(bf16.generate(clips, steps=4, seed=seeds), clips, strict=True):
        assert w.dtype == np.float32 and w.shape == (int(round(clip.duration_s * 16000)),) and np.isfinite(w).all()
