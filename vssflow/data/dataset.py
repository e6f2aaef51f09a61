"""Reading feature shards for training, in plain PyTorch (no Ray): :class:`ShardDataset` and bucketed batches.

Only the shards listed in the shard set's ``_manifest.json`` are read (never a half-written or foreign file), and
only after their size and sha256 match the listing (:func:`~vssflow.data.shards.check_shards`). Rows
are read one Parquet row group at a time (a small cache per worker), so memory stays bounded however large the
shard set. Every row is checked against the schema (shapes, rates vs duration, feature sizes) and, when given,
against the model config's ``sem_dim``.

Ray Train reads the same shards through ``pipelines.preprocess.read_shards`` (``ray.data.read_parquet``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, Sampler

from vssflow.data.schema import SCHEMA_VERSION, check_features, read_metadata, row_to_features, table_to_rows
from vssflow.data.shards import ShardManifest, check_shards, resolve_shard_dir
from vssflow.errors import FeatureShapeError
from vssflow.storage import Location
from vssflow.types import ClipFeatures

__all__ = ["ShardDataset", "BucketBatchSampler"]


class ShardDataset(Dataset):
    """Clips of a shard set as :class:`ClipFeatures` (or row dicts).

    Args:
        path: the ``--out`` directory of ``vssflow preprocess`` (follows ``LATEST``) or a version directory; a local
            path or an ``s3://``/``gs://`` URI.
        tasks: keep only these tasks ("v2s", "tts", "joint").
        buckets: keep only these duration buckets (seconds).
        split: keep only this split ("train", "val", "test").
        sem_dim: the model's semantic feature size; a shard set of another size raises FeatureShapeError.
        as_dict: return the row dict (all columns) instead of ClipFeatures.
        float32: cast float16 columns (sem, mel, float lip features) to float32.
        check: check every row against the schema when it is read.
        cache_row_groups: row groups kept in memory (per DataLoader worker).
    """

    def __init__(
        self,
        path: str | os.PathLike | Location,
        *,
        tasks: Sequence[str] | None = None,
        buckets: Sequence[float] | None = None,
        split: str | None = None,
        sem_dim: int | None = None,
        as_dict: bool = False,
        float32: bool = True,
        check: bool = True,
        cache_row_groups: int = 2,
    ):
        self.root = resolve_shard_dir(path)
        self.manifest = ShardManifest(self.root)
        if self.manifest.data.get("schema_version") != SCHEMA_VERSION:
            raise FeatureShapeError(
                f"shard schema version {self.manifest.data.get('schema_version')} is not {SCHEMA_VERSION}; "
                "re-run `vssflow preprocess` with this version of vssflow",
                source=str(self.root),
            )
        self.as_dict, self.float32, self.check = as_dict, float32, check
        self.files: list[Location] = []
        self.meta: list[dict] = []
        self.index: list[tuple[int, int, int]] = []  # (file, row group, row in group)
        self.keys: list[tuple[str, float]] = []  # (task, bucket_s) of each index entry
        entries = [
            e
            for e in sorted(self.manifest.shards, key=lambda e: e["file"])
            if (tasks is None or e.get("task") in tasks)
            and (buckets is None or float(e.get("bucket_s", 0)) in {float(b) for b in buckets})
        ]
        check_shards(self.manifest, entries)  # a corrupt shard is named here, not met as a bad row
        for e in entries:
            f = pq.ParquetFile((self.root / e["file"]).open_input())
            md = read_metadata(f.schema_arrow)
            if sem_dim is not None and md.get("sem_dim") != sem_dim:
                raise FeatureShapeError(
                    f"shards hold {md.get('sem_dim')}-d semantic features but the model expects {sem_dim}; "
                    "preprocess with the model's encoder (--encoder) or change the model config",
                    source=str(self.root / e["file"]),
                )
            fi = len(self.files)
            self.files.append(self.root / e["file"])
            self.meta.append(md)
            keep = None
            if split is not None:
                keep = [s == split for s in f.read(columns=["split"]).column(0).to_pylist()]
            k = 0
            for g in range(f.num_row_groups):
                for r in range(f.metadata.row_group(g).num_rows):
                    if keep is None or keep[k]:
                        self.index.append((fi, g, r))
                        self.keys.append((md.get("task", e.get("task")), float(md.get("bucket_s", 0.0))))
                    k += 1
        self._cache: OrderedDict[tuple[int, int], list[dict]] = OrderedDict()
        self._cache_size = max(1, cache_row_groups)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def sem_dim(self) -> int | None:
        """D_sem of the shards (None for an empty selection)."""
        return self.meta[0].get("sem_dim") if self.meta else None

    @property
    def extractors(self) -> dict:
        """Extractor names, versions and weight checksums recorded by preprocessing."""
        return self.manifest.data.get("extractors", {})

    def _group(self, fi: int, g: int) -> list[dict]:
        key = (fi, g)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        with self.files[fi].open_input() as src:
            rows = table_to_rows(pq.ParquetFile(src).read_row_group(g))
        self._cache[key] = rows
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return rows

    def __getitem__(self, i: int) -> ClipFeatures | dict:
        fi, g, r = self.index[i]
        row = dict(self._group(fi, g)[r])
        if self.float32:
            for k in ("sem", "mel", "lip"):
                v = row.get(k)
                if v is not None and v.dtype == np.float16:
                    row[k] = v.astype(np.float32)
        feats = row_to_features(row)
        if self.check:
            md = self.meta[fi]
            check_features(feats, sem_dim=md.get("sem_dim"), lip_dim=md.get("lip_dim", 0), source=str(self.files[fi]))
        return row if self.as_dict else feats

    def bucket_indices(self) -> dict[tuple[str, float], list[int]]:
        """Dataset indices grouped by (task, bucket_s): batches drawn from one group have equal padded shapes."""
        groups: dict[tuple[str, float], list[int]] = {}
        for i, key in enumerate(self.keys):
            groups.setdefault(key, []).append(i)
        return groups


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices that share a (task, duration bucket), shuffled per epoch with a seed.

    Args:
        dataset: a ShardDataset.
        batch_size: clips per batch.
        shuffle: shuffle within buckets and the order of batches.
        seed: base seed; call :meth:`set_epoch` to reshuffle.
        drop_last: drop each bucket's last incomplete batch.
    """

    def __init__(self, dataset: ShardDataset, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last=False):
        self.groups = dataset.bucket_indices()
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        out = []
        for key in sorted(self.groups):
            idx = self.groups[key]
            if self.shuffle:
                idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
            for s in range(0, len(idx), self.batch_size):
                b = idx[s : s + self.batch_size]
                if len(b) == self.batch_size or not self.drop_last:
                    out.append(b)
        if self.shuffle:
            out = [out[j] for j in torch.randperm(len(out), generator=g).tolist()]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
