"""The training sampler (vssflow.data.sampler): single-task, duration-bucketed batches, task weights, an external
chooser (the distributed trainer's agreement), and the tail of a set smaller than a batch."""

import numpy as np

from vssflow.audio.mel import log_mel
from vssflow.constants import SAMPLE_RATE
from vssflow.data.sampler import BucketSampler, SamplerConfig
from vssflow.types import ClipFeatures


def _speech(seconds=1.0):
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return ClipFeatures(
        duration_s=seconds,
        task="tts",
        sem=np.full((int(seconds * 10), 8), 2.0, np.float32),
        lip=rng.integers(1, 255, (int(seconds * 25), 32, 32), dtype=np.uint8),
        sync=np.full((int(seconds * 25), 32, 32), 200, np.uint8),
        phonemes=np.array([5, 6, 7, 8], np.int16),
        speaker=np.full(256, 0.0625, np.float32),
        mel=log_mel((0.3 * np.sin(2 * np.pi * 2000.0 * t)).astype(np.float32)),
        meta={"clip_id": "spk"},
    )


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
