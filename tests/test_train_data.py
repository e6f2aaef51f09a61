"""pipelines/train_data.py: a training worker's data, from a real Ray Data read of real shards to a TrainBatch."""

import numpy as np
import pytest
import torch
from conftest_data import TOY_MODEL, make_toy_shards, tts_clip, v2s_clip

from pipelines.train_data import SplitCache, clip_stream, encode_batch, shared_task_chooser
from vssflow.audio.codec import MelCodec
from vssflow.data.sampler import BATCH_TASKS
from vssflow.data.shard_set import ShardSet
from vssflow.model.config import ModelConfig

ray = pytest.importorskip("ray")


def test_clip_stream_reads_every_row_of_the_shards_as_float32_features(local_ray, tmp_path):
    shards = ShardSet(make_toy_shards(tmp_path / "shards", n_v2s=3, n_tts=2, n_val=0), check=False)
    ds = ray.data.read_parquet([f.path for f in shards.files], filesystem=shards.files[0].fs)
    clips = list(clip_stream(ds, lip_dim=shards.lip_dim, read_batch=2))
    assert sorted(c.task for c in clips) == ["tts", "tts", "v2s", "v2s", "v2s"]
    assert len({c.meta["clip_id"] for c in clips}) == 5
    for c in clips:  # stored as float16, widened for the codec and the model
        assert c.sem.dtype == np.float32 and c.mel.dtype == np.float32 and c.mel.shape[1] == 64
    assert all(c.phonemes is not None and len(c.phonemes) for c in clips if c.task == "tts")


def test_split_cache_replays_the_first_pass_and_completes_a_pass_the_sampler_left():
    calls = []

    def make_stream():
        calls.append(1)
        return iter(range(5))

    cache = SplitCache(enabled=True)
    first = cache.stream(make_stream)
    assert [next(first), next(first)] == [0, 1]  # the sampler stopped after two clips
    cache.finish_epoch()  # reads the rest, so the kept split is all of it
    assert list(cache.stream(make_stream)) == [0, 1, 2, 3, 4] == list(cache.stream(make_stream))
    assert len(calls) == 1  # later epochs never go back to the stream
    off = SplitCache(enabled=False)
    assert list(off.stream(make_stream)) == list(off.stream(make_stream)) and len(calls) == 3 and off.clips is None


def test_shared_task_chooser_draws_the_same_tasks_for_the_same_seed_and_epoch_from_the_feasible_ones():
    feasible = {"v2s": 1.0, "tts": 3.0}
    a, b, other = shared_task_chooser(5, 2), shared_task_chooser(5, 2), shared_task_chooser(5, 3)
    draws = [a(feasible) for _ in range(200)]
    assert draws == [b(feasible) for _ in range(200)]  # every worker draws the same stream
    assert draws != [other(feasible) for _ in range(200)]  # a new epoch, a new stream
    assert set(draws) == {"v2s", "tts"} and 0.6 < draws.count("tts") / len(draws) < 0.9  # weight 3:1
    assert a({"joint": 1.0}) == "joint" and a({}) is None  # no common task: the epoch ends
    assert set(BATCH_TASKS) >= {"v2s", "tts", "joint"}


def test_encode_batch_gives_codec_latents_padded_with_a_frame_mask():
    rng = np.random.default_rng(0)
    clips = [v2s_clip(rng, 0, 1.2), v2s_clip(rng, 1, 2.0), tts_clip(rng, 2, 1.6)]
    codec = MelCodec(components=TOY_MODEL["latent_dim"]).fit(c.mel for c in clips)
    cfg = ModelConfig(**TOY_MODEL)
    batch = encode_batch(clips, codec, cfg)
    lengths = [codec.encode(torch.from_numpy(c.mel)[None])[0].shape[0] for c in clips]
    assert batch.x1.shape == (3, max(lengths), TOY_MODEL["latent_dim"])
    assert batch.frame_mask.sum(1).tolist() == lengths
    expected = codec.encode(torch.from_numpy(clips[0].mel)[None])[0]
    torch.testing.assert_close(batch.x1[0, : lengths[0]], torch.as_tensor(expected, dtype=batch.x1.dtype))
    assert float(batch.x1[0, lengths[0] :].abs().sum()) == 0.0  # zero beyond the shorter clip
