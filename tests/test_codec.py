"""The latent codec's principal-component projection (a latent no wider than the DiT) and the duration sources."""

import numpy as np
import pytest
import torch

from vssflow.audio.codec import MelCodec, load_codec


def speech_like_mels(rng, n: int = 6, frames: int = 300) -> list[np.ndarray]:
    """Log-mels with slowly moving, correlated structure (as real spectrograms have), not white noise."""
    out = []
    for _ in range(n):
        env = np.cumsum(rng.standard_normal((frames, 1)), axis=0) * 0.1  # loudness over time
        shape = np.cumsum(rng.standard_normal((frames, 64)), axis=1) * 0.2  # smooth across bins
        out.append((env + shape - 6.0 + 0.05 * rng.standard_normal((frames, 64))).astype(np.float32))
    return out


def test_components_keep_most_variance_and_a_rotation_preserves_errors(tmp_path):
    mels = speech_like_mels(np.random.default_rng(0))
    codec = MelCodec(components=128).fit(mels)
    assert codec.latent_dim == 128 and codec.explained_variance > 0.95
    x = torch.from_numpy(mels[0])[None]
    z = codec.encode(x)  # (1, 75, 128)
    assert z.shape == (1, 75, 128)
    # the basis is orthonormal and unscaled: a latent error is the same error in the normalised mel
    np.testing.assert_allclose(codec.basis.T @ codec.basis, np.eye(128), atol=1e-4)
    dz = 0.1 * torch.randn_like(z)
    dmel = (codec.decode(z + dz) - codec.decode(z)).reshape(1, 75, 256) / codec.std  # (1, 75, 4 x 64) normalised
    assert float(dmel.pow(2).sum()) == pytest.approx(float(dz.pow(2).sum()), rel=1e-3)
    # what the projection loses is the discarded variance, small against the signal
    err = (codec.decode(z) - x).pow(2).mean() / x.var()
    assert float(err) < 0.05
    codec.save(tmp_path / "c")
    again = load_codec(tmp_path / "c")
    assert again.latent_dim == 128 and not again.whiten
    torch.testing.assert_close(again.decode(z), codec.decode(z))


def test_whitened_components_have_unit_variance_and_full_width_is_exact():
    mels = speech_like_mels(np.random.default_rng(1))
    white = MelCodec(components=32, whiten=True).fit(mels)
    z = torch.cat([white.encode(torch.from_numpy(m)[None])[0] for m in mels])
    np.testing.assert_allclose(z.std(0).numpy(), 1.0, atol=0.05)
    full = MelCodec().fit(mels)
    x = torch.from_numpy(mels[2])[None]
    torch.testing.assert_close(full.decode(full.encode(x)), x, atol=1e-4, rtol=0)


def test_codec_without_components_loads_as_before(tmp_path):
    mels = speech_like_mels(np.random.default_rng(2), n=2)
    MelCodec().fit(mels).save(tmp_path / "old")
    assert load_codec(tmp_path / "old").latent_dim == 256
    with pytest.raises(Exception, match="components"):
        MelCodec(components=300)


def test_training_durations_follow_the_speech_timing_and_inference_uses_espeak():
    from vssflow.text import g2p
    from vssflow.text.durations import durations_from_timing, phoneme_durations

    seq = g2p("Put the cup down.", backend="espeak")
    neutral = phoneme_durations(seq.text, seq.symbols)
    sounding = [i for i, s in enumerate(seq.symbols) if s not in ("|", ".")]
    assert (neutral[sounding] > 0).all() and (neutral[[i for i in range(len(neutral)) if i not in sounding]] == 0).all()
    # a timing in which the first phoneme lasts 0.5 s: the durations say so; ARPAbet labels (an aligner's) map too
    timing = [["P", 0.0, 0.5]] + [[s, 0.5 + 0.05 * k, 0.55 + 0.05 * k] for k, s in enumerate(seq.symbols[1:])]
    timed = durations_from_timing(seq.symbols, [t for t in timing if t[0] not in ("|", ".")])
    assert timed[0] == pytest.approx(0.5) and timed[sounding[1]] == pytest.approx(0.05)


def test_global_variance_is_fitted_per_task_saved_and_matched(tmp_path):
    from vssflow.audio.codec import match_global_variance

    rng = np.random.default_rng(3)
    loud, quiet = speech_like_mels(rng, n=3), speech_like_mels(rng, n=3)
    quiet = [m.mean(0, keepdims=True) + 0.3 * (m - m.mean(0, keepdims=True)) for m in quiet]  # less variation
    codec = MelCodec(components=32).fit(loud + quiet)
    codec.fit_global_variance([("tts", m) for m in loud] + [("v2s", m) for m in quiet])
    assert sorted(codec.global_variance) == ["tts", "v2s"]
    z = [codec.encode(torch.from_numpy(m)[None])[0] for m in loud]
    torch.testing.assert_close(codec.global_variance["tts"], torch.stack([x.var(0, unbiased=False) for x in z]).mean(0))
    assert (codec.global_variance["tts"].sum() > 5 * codec.global_variance["v2s"].sum()).item()
    codec.save(tmp_path / "c")
    again = load_codec(tmp_path / "c")
    assert sorted(again.global_variance) == ["tts", "v2s"]
    torch.testing.assert_close(again.global_variance["v2s"], codec.global_variance["v2s"])
    assert MelCodec(components=32).fit(loud).global_variance == {}  # not fitted: none (and nothing is matched)
    # Matching: a smoothed clip's deviations from its mean are scaled up toward the target, at most by max_ratio,
    # its mean kept; a clip as varied as the target, or ratio 1, is unchanged; nothing is ever smoothed.
    target = codec.global_variance["tts"]
    smooth = z[0].mean(0, keepdim=True) + 0.25 * (z[0] - z[0].mean(0, keepdim=True))
    out = match_global_variance(smooth, target, max_ratio=10.0)
    torch.testing.assert_close(out.mean(0), smooth.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.maximum(target, smooth.var(0, unbiased=False)),
                               rtol=1e-3, atol=1e-5)  # fmt: skip
    capped = match_global_variance(smooth, target, max_ratio=2.0)
    ratio = (capped - smooth.mean(0)).std(0) / (smooth - smooth.mean(0)).std(0)
    assert float(ratio.max()) == pytest.approx(2.0, rel=1e-3) and float(ratio.min()) >= 1.0 - 1e-4
    assert torch.equal(match_global_variance(smooth, target, max_ratio=1.0), smooth)
    varied = z[0].mean(0, keepdim=True) + 4.0 * (z[0] - z[0].mean(0, keepdim=True))
    torch.testing.assert_close(match_global_variance(varied, target, max_ratio=2.0), varied)
