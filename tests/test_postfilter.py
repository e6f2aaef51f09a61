"""After the flow: global-variance compensation (as a latent or as a level gain), the mel level, the peak guard."""

import numpy as np
import pytest
import torch

from vssflow.audio.codec import MelCodec, match_global_variance
from vssflow.postfilter import PEAK_LIMIT, mel_level_db, peak_guard, postfilter
from vssflow.sampling import SamplingConfig


def test_the_postfilter_matches_the_codec_global_variance_of_each_task():
    # gv_max_ratio > 1: each clip's sampled latent is compensated toward the codec's GV for the clip's task (at most
    # by the ratio): gv_mode "latent" takes the compensated latent, "level" (the default) only its loudness, as one
    # gain on the clip's log-mel; a task without a GV, or ratio 1, is left alone.
    codec = MelCodec.for_latent_dim(64)
    codec.global_variance = {"tts": torch.full((64,), 50.0)}
    x1 = 0.5 * torch.randn(2, 50, 64, generator=torch.Generator().manual_seed(0))  # a smooth (low-variance) sample
    n, tasks = torch.tensor([40, 50]), ["tts", "v2s"]
    k = int(n[0])
    compensated = match_global_variance(x1[0, :k], codec.global_variance["tts"], 2.0)
    same, gain = postfilter(x1, n, tasks, codec=codec, sampling=SamplingConfig())  # ratio 1 (the default): off
    assert same is x1 and (gain == 0).all()
    latent, gain = postfilter(x1, n, tasks, codec=codec, sampling=SamplingConfig(gv_max_ratio=2.0, gv_mode="latent"))
    torch.testing.assert_close(latent[0, :k], compensated)
    torch.testing.assert_close(latent[0, k:], x1[0, k:])  # the padding past the clip's frames is not touched
    torch.testing.assert_close(latent[1], x1[1])  # v2s: no GV in this codec
    assert (gain == 0).all()
    kept, gain = postfilter(x1, n, tasks, codec=codec, sampling=SamplingConfig(gv_max_ratio=2.0, gv_mode="level"))
    torch.testing.assert_close(kept, x1)  # the spectral shape stays the model's
    assert gain[0] > 0.05 and gain[1] == 0  # louder by one gain on the log-mel, to the compensated level
    louder = codec.decode(x1[:1, :k]) + gain[0]
    assert mel_level_db(louder) == pytest.approx(mel_level_db(codec.decode(compensated[None])), abs=1e-3)


def test_mel_level_is_the_active_power_in_db():
    mel = torch.full((100, 64), -6.0)  # near-silence, 52 dB below the active frames (floor 35 dB): not counted
    mel[:50] = 0.0  # the active half: unit magnitude in every bin, 64 in power
    assert mel_level_db(mel) == pytest.approx(10 * np.log10(64), abs=1e-4)
    mel[50:] = -1.0  # within the floor now: counted, the mean power drops
    assert mel_level_db(mel) == pytest.approx(10 * np.log10(64 * (1 + np.exp(-2.0)) / 2), abs=1e-4)
    assert mel_level_db(mel + np.log(2.0)) == pytest.approx(mel_level_db(mel) + 20 * np.log10(2.0), abs=1e-4)


def test_peak_guard_scales_only_a_clip_over_the_limit():
    quiet = np.sin(np.linspace(0, 100, 16000)).astype(np.float32) * 0.5
    assert peak_guard(quiet) is quiet  # within range: untouched
    loud = quiet * 4
    guarded = peak_guard(loud)
    assert np.abs(guarded).max() == pytest.approx(PEAK_LIMIT)
    assert np.allclose(guarded / guarded.max(), loud / loud.max())  # scaled as a whole, not distorted
    assert peak_guard(np.zeros(0, np.float32)).size == 0
