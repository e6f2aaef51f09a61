"""The shard set on disk (vssflow/data/shards.py): versioned directories, atomic durable writes, the manifest of
complete shards and the recovery of a run that died. Sets are built with test_schema's make_clip and write_set."""

from __future__ import annotations

import pyarrow as pa
import pytest
from test_schema import SEM_DIM, make_clip, write_set

from vssflow.data import schema as S
from vssflow.data.shards import (
    ShardManifest,
    config_hash,
    done_clip_ids,
    recover,
    shard_name,
    version_dir,
    write_table_atomic,
)


def test_config_hash_is_order_free_and_versions_the_directory(tmp_path):
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert version_dir(tmp_path, "h1") != version_dir(tmp_path, "h2")
    ShardManifest(version_dir(tmp_path, "h1"), config_hash="h1").save()
    with pytest.raises(Exception, match="another --out"):
        ShardManifest(version_dir(tmp_path, "h1"), config_hash="h2")


def test_atomic_write_leaves_only_the_complete_file(tmp_path):
    schema = S.build_schema(sem_dim=SEM_DIM)
    table = S.rows_to_table([S.features_to_row(make_clip("a"))], schema)
    e = write_table_atomic(table, tmp_path / "x.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.parquet"]
    assert e["rows"] == 1 and len(e["sha256"]) == 64 and e["bytes"] == (tmp_path / "x.parquet").stat().st_size


def test_recover_adopts_unlisted_complete_shards_and_removes_the_rest(tmp_path):
    man = write_set(tmp_path, [make_clip("a"), make_clip("b", "v2s")])
    vdir = man.vdir
    # a shard renamed into place by a job that died before listing it: complete, so adopted
    md = S.file_metadata(config_hash="abc", config={}, extractors={}, created_at="t", task="tts", bucket_s=2.0)
    schema = S.build_schema(sem_dim=SEM_DIM, metadata=md)
    orphan = S.rows_to_table([S.features_to_row(make_clip("c"))], schema)
    write_table_atomic(orphan, vdir / shard_name("tts", 2.0, ["c"]))
    # a shard that repeats a listed clip (a retried task): deleted; a temp file of a dead writer: deleted
    dup = S.rows_to_table([S.features_to_row(make_clip("a"))], schema)
    write_table_atomic(dup, vdir / "tts-2s-dupdupdupdupdupd.parquet")
    (vdir / ".tts-2s-x.parquet.tmp-1234").write_bytes(b"PAR1 half")
    man = ShardManifest(vdir, config_hash="abc")
    counts = recover(man)
    assert counts == {"temp_removed": 1, "adopted": 1, "deleted": 1}
    assert done_clip_ids(man) == {"a", "b", "c"}
    assert ShardManifest(vdir).verify() == []
    assert sorted(p.name for p in vdir.iterdir() if p.name.startswith(".")) == []


def test_write_table_atomic_fsyncs_the_shard_then_its_directory(tmp_path, monkeypatch):
    import os

    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])  # fmt: skip
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b))[1])
    target = tmp_path / "v" / "tts-2s-x.parquet"
    write_table_atomic(pa.table({"clip_id": ["a"]}), target)
    (k0, tmp), *rest = events
    assert k0 == "fsync" and tmp.startswith(str(tmp_path / "v" / ".tts-2s-x.parquet.tmp-")), events
    assert rest == [("replace", str(target)), ("fsync", str(tmp_path / "v"))]
