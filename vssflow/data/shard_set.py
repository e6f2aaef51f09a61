"""The one reader of Parquet feature shards: :class:`ShardSet`, used by training, evaluation, batch generation and
the tests, in plain Python (no Ray; ``pipelines`` hands :attr:`ShardSet.files` to ``ray.data.read_parquet``).

Opening a shard set checks it once, before any row is read:

* only the shards listed in its ``_manifest.json`` are read (never a half-written or foreign file);
* each selected shard's size and sha256 match the listing (:func:`~vssflow.data.shards.check_shards`), so a
  corrupt shard is named at open, not met as a bad row;
* the schema version is this vssflow's, and the semantic feature size the model's (``sem_dim``), when given.

Then a set is read three ways: by clip (``len``, ``[i]``: a row group at a time with a small cache, so memory stays
bounded however large the set; usable as a torch ``Dataset``), by shard (:meth:`tables`, columns and split chosen:
streaming statistics and counts), or as a list of clips (:meth:`clips`: validation samples). A lone ``.parquet``
file (a client's features, not a preprocessed set) opens as a set of one unlisted file, without checksums.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vssflow.data.schema import SCHEMA_VERSION, check_features, read_metadata, row_to_features, table_to_rows
from vssflow.data.shards import ShardManifest, check_shards, resolve_shard_dir
from vssflow.errors import FeatureShapeError
from vssflow.storage import Location, location
from vssflow.types import ClipFeatures

__all__ = ["ShardSet", "read_shard"]

_FLOAT16_COLUMNS = ("sem", "mel", "lip")


def read_shard(path: str | os.PathLike | Location, columns: Sequence[str] | None = None) -> pa.Table:
    """One shard file as a table (local path or URI, through :mod:`vssflow.storage`); ``columns``: only these.

    For a worker that was handed one file of a set the driver opened (and checked)."""
    with location(path).open_input() as f:
        return pq.read_table(f, columns=None if columns is None else list(columns))


class ShardSet:
    """The clips of a shard set as :class:`ClipFeatures` (or row dicts), checked when opened.

    Args:
        path: the ``--out`` directory of ``vssflow preprocess`` (follows ``LATEST``) or a version directory; a local
            path or an ``s3://``/``gs://`` URI; or one ``.parquet`` file of the shard schema.
        tasks: keep only shards of these tasks ("v2s", "tts", "joint").
        buckets: keep only shards of these duration buckets (seconds).
        split: keep only clips of this split ("train", "val", "test") in ``len``/``[i]``.
        sem_dim: the model's semantic feature size; shards of another size raise FeatureShapeError.
        as_dict: ``[i]`` returns the row dict (all columns) instead of ClipFeatures.
        float32: cast float16 columns (sem, mel, float lip features) to float32.
        check: check every row against the schema when it is read.
        cache_row_groups: row groups kept in memory (per DataLoader worker).

    Raises:
        MissingFileError: no shard set at ``path``.
        InputError: a selected shard missing or corrupt (one line naming it and the fix).
        FeatureShapeError: another schema version, or semantic features of another size than ``sem_dim``.
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
        self.as_dict, self.float32, self.check = as_dict, float32, check
        src = location(path)
        if src.is_file():  # one unlisted file: nothing to check it against
            self.root, self.manifest = src.parent, None
            entries = [{"file": src.name}]
        else:
            self.root = resolve_shard_dir(src)
            self.manifest = ShardManifest(self.root)
            _check_version(self.manifest.data.get("schema_version"), self.root)
            wanted = None if buckets is None else {float(b) for b in buckets}
            entries = [
                e
                for e in sorted(self.manifest.shards, key=lambda e: e["file"])
                if (tasks is None or e.get("task") in tasks)
                and (wanted is None or float(e.get("bucket_s", 0)) in wanted)
            ]
            check_shards(self.manifest, entries)  # a corrupt shard is named here, not met as a bad row
        self.files: list[Location] = []
        self.meta: list[dict] = []  # decoded file metadata of each file (task, bucket_s, sem_dim, lip_dim, ...)
        self.index: list[tuple[int, int, int]] = []  # (file, row group, row in group) of each selected clip
        self.keys: list[tuple[str, float]] = []  # (task, bucket_s) of each index entry
        for e in entries:
            self._add_file(self.root / e["file"], e, split=split, sem_dim=sem_dim)
        self._cache: OrderedDict[tuple[int, int], list[dict]] = OrderedDict()
        self._cache_size = max(1, cache_row_groups)

    def _add_file(self, p: Location, entry: dict, *, split: str | None, sem_dim: int | None) -> None:
        with p.open_input() as src:
            f = pq.ParquetFile(src)
            md = read_metadata(f.schema_arrow)
            if self.manifest is None:
                _check_version(md.get("schema_version", SCHEMA_VERSION), p)
            if sem_dim is not None and md.get("sem_dim") != sem_dim:
                raise FeatureShapeError(
                    f"shards hold {md.get('sem_dim')}-d semantic features but the model expects {sem_dim}; "
                    "preprocess with the model's encoder (--encoder) or change the model config",
                    source=str(p),
                )
            keep = None if split is None else [s == split for s in f.read(columns=["split"]).column(0).to_pylist()]
            groups = [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
        fi = len(self.files)
        self.files.append(p)
        self.meta.append(md)
        key = (md.get("task", entry.get("task")), float(md.get("bucket_s", 0.0)))
        k = 0
        for g, rows in enumerate(groups):
            for r in range(rows):
                if keep is None or keep[k]:
                    self.index.append((fi, g, r))
                    self.keys.append(key)
                k += 1

    # ---- what the set is ---------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.index)

    @property
    def sem_dim(self) -> int | None:
        """D_sem of the shards (None for an empty selection)."""
        return self.meta[0].get("sem_dim") if self.meta else None

    @property
    def lip_dim(self) -> int:
        """0 for uint8 mouth crops, else the size of the float lip features."""
        return int(self.meta[0].get("lip_dim", 0)) if self.meta else 0

    @property
    def extractors(self) -> dict:
        """Extractor names, versions and weight checksums recorded by preprocessing."""
        return self.manifest.data.get("extractors", {}) if self.manifest else {}

    @property
    def version(self) -> str:
        """``<version directory>:<hash of every listed shard's sha256>``: changes when any shard does."""
        shards = self.manifest.shards if self.manifest else []
        digest = hashlib.sha256("".join(sorted(e["sha256"] for e in shards)).encode()).hexdigest()[:12]
        return f"{self.root.name}:{digest}"

    # ---- by clip -----------------------------------------------------------------------------------------------

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

    def _features(self, row: dict, fi: int) -> ClipFeatures:
        if self.float32:
            for k in _FLOAT16_COLUMNS:
                v = row.get(k)
                if v is not None and v.dtype == np.float16:
                    row[k] = v.astype(np.float32)
        feats = row_to_features(row)
        if self.check:
            md = self.meta[fi]
            check_features(feats, sem_dim=md.get("sem_dim"), lip_dim=md.get("lip_dim", 0), source=str(self.files[fi]))
        return feats

    def __getitem__(self, i: int) -> ClipFeatures | dict:
        fi, g, r = self.index[i]
        row = dict(self._group(fi, g)[r])
        feats = self._features(row, fi)
        return row if self.as_dict else feats

    def bucket_indices(self) -> dict[tuple[str, float], list[int]]:
        """Indices grouped by (task, bucket_s): batches drawn from one group have equal padded shapes."""
        groups: dict[tuple[str, float], list[int]] = {}
        for i, key in enumerate(self.keys):
            groups.setdefault(key, []).append(i)
        return groups

    # ---- by shard ----------------------------------------------------------------------------------------------

    def tables(self, columns: Sequence[str] | None = None, *, split: str | None = None) -> Iterator[pa.Table]:
        """Each selected shard as a table of ``columns`` (all when None), only the rows of ``split`` when given."""
        for p in self.files:
            cols = None if columns is None else list(dict.fromkeys([*columns, *(["split"] if split else [])]))
            t = read_shard(p, cols)
            if split is not None:
                t = t.filter(pc.equal(pc.cast(t["split"], "string"), split))
                if columns is not None and "split" not in columns:
                    t = t.drop_columns(["split"])
            yield t

    def clips(self, *, split: str | None = None, limit: int | None = None) -> list[ClipFeatures]:
        """The clips of ``split`` (every split when None), at most ``limit``, shard by shard in file order."""
        out: list[ClipFeatures] = []
        for fi, t in enumerate(self.tables(split=split)):
            for row in table_to_rows(t):
                out.append(self._features(row, fi))
                if limit is not None and len(out) >= limit:
                    return out
        return out

    def task_counts(self, *, split: str | None = None) -> dict[str, int]:
        """Rows per task (of ``split`` when given); two columns read per shard."""
        counts: dict[str, int] = {}
        for t in self.tables(["task"], split=split):
            for task, n in zip(*pc.value_counts(pc.cast(t["task"], "string")).flatten(), strict=True):
                counts[task.as_py()] = counts.get(task.as_py(), 0) + n.as_py()
        return counts


def _check_version(version: str | None, where: Location) -> None:
    if version != SCHEMA_VERSION:
        raise FeatureShapeError(
            f"shard schema version {version} is not {SCHEMA_VERSION}; re-run `vssflow preprocess` with this version "
            "of vssflow",
            source=str(where),
        )
