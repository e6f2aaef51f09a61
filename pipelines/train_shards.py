"""The shard set a training job trains on, on the driver, before Ray Train starts: opened and checked, the codec
and the config fitted to it, its training rows as a Ray dataset, a few validation clips.

:func:`pipelines.train.run_training` calls these in order; what each worker then does with its share of the rows is
:mod:`pipelines.train_data`. Everything here that can refuse the data (an empty or corrupt set, too few clips for
the workers, condition sizes an ``--init`` model cannot take) does so in one line before Ray starts.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipelines.train_config import TrainJobConfig
from vssflow.audio.codec import MelCodec
from vssflow.data.schema import table_to_rows
from vssflow.data.shard_set import ShardSet
from vssflow.errors import FeatureShapeError, InputError
from vssflow.model.config import FULL_LATENT
from vssflow.types import ClipFeatures

TRAIN_COLUMNS = [
    "clip_id",
    "task",
    "duration_s",
    "sem",
    "lip",
    "sync",
    "phonemes",
    "phoneme_durations",
    "speech_span",
    "speaker_emb",
    "mel",
]


def open_shards(data: str | os.PathLike) -> ShardSet:
    """The shard set written by ``vssflow preprocess``, checked (schema version, every shard's size and sha256)
    before Ray starts; a set that lists no data shards is refused here."""
    shards = ShardSet(data, check=False)
    if not shards.files:
        raise InputError("the shard set lists no data shards; run `vssflow preprocess` first", source=str(shards.root))
    return shards


def fit_codec(shards: ShardSet, out_dir: Path, latent_dim: int = FULL_LATENT) -> MelCodec:
    """Fit the MelCodec's statistics on the training split's mels (streaming passes on the driver); a latent
    narrower than the 256 grouped mel channels is their ``latent_dim`` principal components. A second pass measures
    each task's global variance in that latent (:meth:`MelCodec.fit_global_variance`), the target of the sampler's
    GV compensation."""

    def mels(with_task: bool = False):
        for t in shards.tables(["task", "mel"], split="train"):
            for row in table_to_rows(t):
                mel = np.asarray(row["mel"], np.float32)
                yield (str(row["task"]), mel) if with_task else mel

    codec = MelCodec.for_latent_dim(latent_dim).fit(mels())
    codec.fit_global_variance(mels(with_task=True))
    codec.save(out_dir)
    return codec


def validation_clips(shards: ShardSet, n: int) -> list[ClipFeatures]:
    """Fixed clips for audio samples during training: the val split (else train), one per task first."""
    pool = shards.clips(split="val") or shards.clips(split="train", limit=64)
    pool.sort(key=lambda c: str(c.meta.get("clip_id")))
    by_task: dict[str, list[ClipFeatures]] = {}
    for c in pool:
        by_task.setdefault(c.task, []).append(c)
    chosen, k = [], 0
    while len(chosen) < n and any(k < len(v) for v in by_task.values()):
        chosen += [v[k] for v in by_task.values() if k < len(v)]
        k += 1
    return chosen[:n]


def build_dataset(shards: ShardSet, seed: int, *, rows_per_block: int = 8, cache: bool = False):
    """Ray dataset of the training rows in a fixed pseudo-random order (the same in every execution).

    Shards hold one task and one duration bucket each, so whole-file blocks would hand a worker a single task.
    The rows are cut into small blocks (a streaming split, no shuffle of the data) whose order is then permuted with
    a fixed seed; the sampler's buffer mixes further. Cheaper than ``random_shuffle`` (an all-to-all exchange).
    ``cache`` materialises the result in the object store (for shard sets that fit in memory).
    """
    import ray.data
    from ray.data.expressions import col

    ds = ray.data.read_parquet([p.path for p in shards.files], filesystem=shards.files[0].fs)
    ds = ds.select_columns(TRAIN_COLUMNS + ["split"])
    ds = ds.filter(expr=col("split") == "train").drop_columns(["split"])
    ds = ds.repartition(target_num_rows_per_block=rows_per_block).randomize_block_order(seed=seed)
    if cache:  # small enough for the object store: read and cut once, every epoch then only streams the blocks
        ds = ds.materialize()
    return ds


def fit_model_to_data(cfg: TrainJobConfig, shards: ShardSet) -> TrainJobConfig:
    """Condition sizes follow the shards (semantic encoder width, lip crops vs features); said when changed.

    Raises:
        FeatureShapeError: when fine-tuning (``--init``) a model whose condition sizes differ from the shards'.
    """
    md = shards.meta[0]
    want = {"sem_dim": int(md.get("sem_dim", 0))}
    lip_dim = int(md.get("lip_dim", 0))
    want.update({"lip_input": "crops"} if lip_dim == 0 else {"lip_input": "features", "lip_feature_dim": lip_dim})
    have = cfg.model_config().to_dict()
    diff = {k: v for k, v in want.items() if v and have.get(k) != v}
    if not diff:
        return cfg
    if cfg.init:
        raise FeatureShapeError(
            f"the model in --init has {({k: have[k] for k in diff})} but the shards have {diff}; "
            "preprocess with the same feature extractors as the base model", source=str(shards.files[0]))  # fmt: skip
    print(f"vssflow train: model condition sizes set from the shards: {diff}")
    return replace(cfg, model_overrides={**cfg.model_overrides, **diff})


def train_task_counts(shards: ShardSet) -> dict[str, int]:
    """Training-split rows per task of the shard set (two columns read per shard)."""
    return shards.task_counts(split="train")


def fit_batches_to_data(cfg: TrainJobConfig, counts: dict[str, int]) -> TrainJobConfig:
    """Small training sets train: when a task the mix asks for has fewer than ``batch_size`` clips per worker, the
    end of each epoch forms smaller and mixed-task batches (``keep_tail``), said in one line. Called before Ray
    starts, so what no batch size can train is refused here, not inside the job.

    Raises:
        InputError: fewer usable training clips than workers (Ray gives each worker an equal share of the rows).
    """
    sc = cfg.sampler
    weights = {"v2s": sc.v2s_weight, "tts": sc.tts_weight, "joint": sc.joint_weight}
    mixing = sc.joint_weight > 0 and counts.get("v2s", 0) > 0 and counts.get("tts", 0) > 0
    usable = {t: n for t, n in counts.items() if weights.get(t, 0) > 0 or (mixing and t in ("v2s", "tts"))}
    total = sum(usable.values())
    have = ", ".join(f"{n} {t}" for t, n in sorted(counts.items())) or "none"
    if total < cfg.workers:
        raise InputError(
            f"{total} training clips of the tasks --mix {sc.v2s_weight:g},{sc.tts_weight:g},{sc.joint_weight:g} "
            f"trains (train split: {have}) for {cfg.workers} workers; each worker needs at least one: use --workers "
            f"{max(total, 1)} or fewer, or add clips",
            source=cfg.data,
        )
    per_worker = sc.batch_size * cfg.workers
    if sc.keep_tail or all(n >= per_worker for t, n in usable.items() if weights.get(t, 0) > 0):
        return cfg
    print(f"vssflow train: training clips {have} over {cfg.workers} workers: under {sc.batch_size} clips of a task "
          "per worker, so each epoch's last batches shrink to what a worker holds, and may mix tasks")  # fmt: skip
    return replace(cfg, sampler=replace(sc, keep_tail=True))
