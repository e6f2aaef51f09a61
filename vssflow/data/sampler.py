"""Batches for joint training: single-task, duration-bucketed, with a configurable task mix and synthetic mixtures.

The sampler turns one pass over a stream of clips (one worker's share of the shards for one epoch) into batches:

* **single task per batch** ("v2s", "tts", or "joint"), so condition presence is uniform within a batch;
* **bucketed by duration**: rows are held in a buffer, and a batch takes ``batch_size`` neighbours in duration
  order, so little padding is computed;
* **task mix**: the next batch's task is drawn with probabilities proportional to ``task_weights`` among the tasks
  the buffer can serve; "joint" batches are built by :func:`~vssflow.data.mixing.mix_clips` from a V2S clip and a
  TTS clip each (real joint rows, if the shards have any, form "joint" batches of their own);
* **small data sets** (``keep_tail``): once the stream is exhausted, what is left forms smaller batches of one task
  (down to one clip), or "mixed" batches of clips of several tasks, instead of being dropped. A fine-tuning set of
  a dozen clips split over two workers then trains instead of forming no batch at all;
* **no clip is used twice in one epoch**, and the order is a pure function of (stream order, seed, epoch, rank):
  replaying the first ``k`` batches reproduces the sampler's state exactly, which is how a run resumes mid-epoch.

Pure Python/numpy: no torch, no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from vssflow.data.mixing import mix_clips
from vssflow.types import ClipFeatures

Chooser = Callable[[dict[str, float]], "str | None"]  # feasible {task: weight} -> chosen task, or None = epoch over
BATCH_TASKS = ("v2s", "tts", "joint", "mixed")  # what a batch can be; "mixed" only at the tail with keep_tail


@dataclass(frozen=True)
class SamplerConfig:
    """How batches are formed.

    Attributes:
        batch_size: clips per batch (per worker, per micro-step).
        v2s_weight, tts_weight, joint_weight: relative frequency of V2S, VisualTTS and joint (sound + speech)
            batches; 0 disables a task. Joint batches need V2S and TTS clips in the stream.
        buffer_size: rows held for bucketing and task choice (larger = better buckets and mix, more memory).
        seed: base seed of the per-epoch, per-rank random streams.
        phoneme_layout: the model's phoneme layout, used to lay out the speech of joint mixtures.
        keep_tail: at the end of the stream, form batches smaller than ``batch_size`` (of one task, or "mixed"
            from several) from what is left instead of dropping it; for sets too small to fill a batch of a task.
    """

    batch_size: int = 4
    v2s_weight: float = 1.0
    tts_weight: float = 1.0
    joint_weight: float = 0.5
    buffer_size: int = 64
    seed: int = 0
    phoneme_layout: str = "clip"
    keep_tail: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"SamplerConfig.batch_size={self.batch_size}; expected >= 1")
        w = (self.v2s_weight, self.tts_weight, self.joint_weight)
        if min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"SamplerConfig task weights {w}: expected non-negative with a positive sum")
        if self.buffer_size < 2 * self.batch_size:
            raise ValueError(f"SamplerConfig.buffer_size={self.buffer_size}; expected >= 2 * batch_size")


@dataclass
class Batch:
    """One batch: its task, the clips (mixtures for "joint"), and the ids of the source rows it consumed."""

    task: str
    clips: list[ClipFeatures]
    source_ids: list[str] = field(default_factory=list)


def _clip_id(c: ClipFeatures) -> str:
    return str(c.meta.get("clip_id", id(c)))


class BucketSampler:
    """Single-task, duration-bucketed batches from one epoch's stream of clips (see the module docstring).

    Args:
        config: the sampler settings.
        epoch: epoch number (seeds the random stream together with ``config.seed`` and ``rank``).
        rank: worker rank.
    """

    def __init__(self, config: SamplerConfig, *, epoch: int = 0, rank: int = 0):
        self.config = config
        self.rng = np.random.default_rng([config.seed, epoch, rank])
        self.pools: dict[str, list[ClipFeatures]] = {"v2s": [], "tts": [], "joint": []}

    def _buffered(self) -> int:
        return sum(len(p) for p in self.pools.values())

    def _weights(self) -> dict[str, float]:
        c = self.config
        return {"v2s": c.v2s_weight, "tts": c.tts_weight, "joint": c.joint_weight}

    def _feasible(self, tail: bool = False) -> dict[str, float]:
        """{task: weight} of the batches the buffer can form; at the tail (``keep_tail``, stream exhausted) a batch
        needs only one clip, and "mixed" is offered while any clip of a weighted task is left."""
        c, n = self.config, {t: len(p) for t, p in self.pools.items()}
        need = 1 if tail else c.batch_size
        out = {}
        if c.v2s_weight > 0 and n["v2s"] >= need:
            out["v2s"] = c.v2s_weight
        if c.tts_weight > 0 and n["tts"] >= need:
            out["tts"] = c.tts_weight
        if c.joint_weight > 0 and (n["joint"] >= need or (n["v2s"] >= need and n["tts"] >= need)):
            out["joint"] = c.joint_weight
        if tail and any(n[t] > 0 for t, w in self._weights().items() if w > 0):
            # Offered even where a single task is: the workers must agree on one choice, and one worker may hold
            # only V2S clips when another holds only speech.
            out["mixed"] = min(w for w in self._weights().values() if w > 0)
        return out

    def _take_bucket(self, pool: list[ClipFeatures], size: int | None = None) -> list[ClipFeatures]:
        """Remove and return ``size`` (default ``batch_size``, at most the pool) clips of the most similar durations
        (a random one of the tightest windows)."""
        bs = min(size or self.config.batch_size, len(pool))
        order = sorted(range(len(pool)), key=lambda i: (pool[i].duration_s, _clip_id(pool[i])))
        durations = np.array([pool[i].duration_s for i in order])
        spans = durations[bs - 1 :] - durations[: len(order) - bs + 1]  # duration range of each window of bs
        best = np.flatnonzero(spans <= spans.min() + 1e-6)  # the tightest windows; pick one at random
        start = int(best[self.rng.integers(len(best))])
        chosen = sorted(order[start : start + bs])
        taken = [pool[i] for i in chosen]
        for i in reversed(chosen):
            del pool[i]
        return taken

    def _choose_local(self, feasible: dict[str, float]) -> str | None:
        if not feasible:
            return None
        tasks = sorted(feasible)
        p = np.array([feasible[t] for t in tasks], dtype=np.float64)
        return tasks[int(self.rng.choice(len(tasks), p=p / p.sum()))]

    def _next_batch(self, choose: Chooser | None, tail: bool = False) -> Batch | None:
        feasible = self._feasible(tail)
        task = choose(feasible) if choose is not None else self._choose_local(feasible)
        if task is None:
            return None
        bs = self.config.batch_size
        if task == "mixed":
            pool = [c for t, w in self._weights().items() if w > 0 for c in self.pools[t]]
            clips = self._take_bucket(pool)
            taken = {id(c) for c in clips}
            for t in self.pools:
                self.pools[t] = [c for c in self.pools[t] if id(c) not in taken]
            return Batch("mixed", clips, [_clip_id(c) for c in clips])
        if task == "joint" and len(self.pools["joint"]) < (1 if tail else bs):
            k = min(bs, len(self.pools["v2s"]), len(self.pools["tts"]))
            sounds, speeches = self._take_bucket(self.pools["v2s"], k), self._take_bucket(self.pools["tts"], k)
            speeches = [speeches[i] for i in self.rng.permutation(k)]
            layout = self.config.phoneme_layout
            clips = [
                mix_clips(s, sp, rng=self.rng, phoneme_layout=layout) for s, sp in zip(sounds, speeches, strict=True)
            ]
            return Batch("joint", clips, [_clip_id(c) for c in sounds + speeches])
        clips = self._take_bucket(self.pools[task])
        return Batch(task, clips, [_clip_id(c) for c in clips])

    def batches(self, clips: Iterable[ClipFeatures], *, choose: Chooser | None = None) -> Iterator[Batch]:
        """Yield batches until the stream is exhausted and no task can form a full batch (the rest is dropped;
        with ``keep_tail`` until nothing is left).

        Args:
            clips: one epoch's stream of clips.
            choose: picks the next batch's task from the feasible ones ({task: weight}); ``None`` ends the epoch.
                Distributed training passes one that agrees across workers, so every worker runs the same task
                (the same modules) at each step; the default draws from this sampler's own random stream.
        """
        stream = iter(clips)
        exhausted = False
        while True:
            while not exhausted and self._buffered() < self.config.buffer_size:
                clip = next(stream, None)
                if clip is None:
                    exhausted = True
                else:
                    self.pools["joint" if clip.task == "joint" else clip.task].append(clip)
            batch = self._next_batch(choose, tail=exhausted and self.config.keep_tail)
            if batch is None:
                if exhausted or choose is not None:
                    return
                # The buffer is full of one task that no weight asks for: drop its oldest row to make room.
                largest = max(self.pools, key=lambda t: len(self.pools[t]))
                self.pools[largest].pop(0)
                continue
            yield batch
