"""A training worker's data: its dataset shard -> ClipFeatures -> task batches -> a TrainBatch.

:func:`clip_stream` reads one pass over the shard (Ray Data, ``preserve_order``, so a worker's split is the same in
every execution); :class:`SplitCache` keeps a small split in memory after its first pass; the
:class:`~vssflow.data.sampler.BucketSampler` forms the batches, with :func:`shared_task_chooser` so that every worker
runs the same task at each step; :func:`encode_batch` turns a batch's mels into codec latents and collates the
conditions. The loop that consumes them is :mod:`pipelines.train_loop`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist

from vssflow.audio.codec import MelCodec
from vssflow.data.sampler import BATCH_TASKS
from vssflow.data.schema import META, row_to_features, table_to_rows
from vssflow.model.config import ModelConfig
from vssflow.training import make_train_batch
from vssflow.types import ClipFeatures

__all__ = ["clip_stream", "SplitCache", "shared_task_chooser", "encode_batch"]


def clip_stream(shard, *, lip_dim: int, read_batch: int = 16) -> Iterator[ClipFeatures]:
    """One pass over a worker's dataset shard as ClipFeatures (float16 arrays widened to float32)."""
    md = {META["lip_dim"].encode(): str(lip_dim).encode()}
    for table in shard.iter_batches(batch_size=read_batch, batch_format="pyarrow", prefetch_batches=1):
        for row in table_to_rows(table.replace_schema_metadata(md)):
            clip = row_to_features(row)
            clip.sem = None if clip.sem is None else np.asarray(clip.sem, np.float32)
            clip.mel = np.asarray(clip.mel, np.float32)
            yield clip


class SplitCache:
    """A worker's split of a small shard set, kept in memory after one complete pass.

    Later epochs replay the same clips in the same order without going through Ray Data again: a new epoch of a
    streaming split costs a round trip to the split coordinator and a new execution (~0.25 s on this machine), which
    on a small shard set (a few batches per epoch) was a third of the step time. The split is the same in every
    epoch (``preserve_order``, see the module docstring), so the replay is what the stream would have given.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.clips: list[ClipFeatures] | None = None
        self._recording: Iterator[ClipFeatures] | None = None

    def stream(self, make_stream) -> Iterator[ClipFeatures]:
        """This epoch's clips: the kept split, else ``make_stream()`` (recorded when caching is enabled)."""
        if self.clips is not None:
            return iter(self.clips)
        if not self.enabled:
            return make_stream()
        self._recording = self._record(make_stream())
        return self._recording

    def finish_epoch(self) -> None:
        """Read what the sampler left of this epoch's stream, so the recording is the complete split."""
        if self._recording is not None:
            for _ in self._recording:
                pass
            self._recording = None

    def _record(self, stream: Iterator[ClipFeatures]) -> Iterator[ClipFeatures]:
        seen = []
        for clip in stream:
            seen.append(clip)
            yield clip
        self.clips = seen


def encode_batch(clips: list[ClipFeatures], codec: MelCodec, cfg: ModelConfig):
    """Clips -> TrainBatch: mel (T_mel, 64) -> codec latent (N, C) per clip, conditions collated."""
    latents = [codec.encode(torch.from_numpy(c.mel)[None])[0] for c in clips]  # each (N, C)
    return make_train_batch(latents, clips, cfg)


def shared_task_chooser(seed: int, epoch: int):
    """A task chooser for :meth:`BucketSampler.batches` that every worker agrees on.

    The workers exchange which tasks they can serve (one small all-reduce per batch) and draw from the common ones
    with a random stream seeded identically everywhere. Every worker then runs the same task, hence the same
    modules, at each step: ZeRO-3 gathers parameters module by module and needs this, and equal shapes keep the
    workers in step. No common task left ends the epoch on every worker at once.
    """
    rng = np.random.default_rng([seed, epoch, 7919])

    def choose(feasible: dict[str, float]) -> str | None:
        mask = torch.tensor([1 if t in feasible else 0 for t in BATCH_TASKS], dtype=torch.int32)
        if dist.is_initialized():
            dist.all_reduce(mask, op=dist.ReduceOp.MIN)
        common = [t for t, m in zip(BATCH_TASKS, mask.tolist(), strict=True) if m]
        if not common:
            return None
        p = np.array([feasible[t] for t in common], dtype=np.float64)
        return common[int(rng.choice(len(common), p=p / p.sum()))]

    return choose
