"""The Parquet contract (schema.py) and the shard set on disk (shards.py); its reader is tested in test_shard_set."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vssflow.data import schema as S
from vssflow.data.shards import (
    ShardManifest,
    config_hash,
    done_clip_ids,
    recover,
    set_latest,
    shard_name,
    version_dir,
    write_table_atomic,
)
from vssflow.errors import ClipTooLongError, FeatureShapeError
from vssflow.types import ClipFeatures

SEM_DIM = 8


def make_clip(cid: str, task: str = "tts", duration: float = 2.0, seed: int = 0) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    fr = S.expected_frames(duration)
    speech = task != "v2s"
    return ClipFeatures(
        duration_s=duration,
        task=task,
        sem=rng.standard_normal((fr["sem"], SEM_DIM)).astype(np.float32),
        lip=rng.integers(0, 256, (fr["lip"], 32, 32), dtype=np.uint8) if speech else None,
        sync=rng.integers(0, 256, (fr["sync"], 32, 32), dtype=np.uint8) if seed % 2 else None,
        phonemes=rng.integers(7, 60, 12).astype(np.int16) if speech else None,
        speaker=rng.standard_normal(256).astype(np.float32) if speech else None,
        mel=(rng.standard_normal((fr["mel"], 64)) * 3 - 5).astype(np.float32),
        meta={"clip_id": cid, "split": "train", "transcript": "hi there" if speech else None,
              "events": [{"time": 0.5, "class": "dog"}]},
    )  # fmt: skip


def write_set(tmp_path, clips: list[ClipFeatures], chash: str = "abc") -> ShardManifest:
    vdir = version_dir(tmp_path / "out", chash)
    man = ShardManifest(vdir, config_hash=chash)
    groups: dict = {}
    for c in clips:
        groups.setdefault((c.task, S.bucket_for(c.duration_s)), []).append(c)
    for (task, bucket), cs in groups.items():
        md = S.file_metadata(config_hash=chash, config={}, extractors={}, created_at="t", task=task, bucket_s=bucket)
        schema = S.build_schema(sem_dim=SEM_DIM, metadata=md)
        ids = [c.meta["clip_id"] for c in cs]
        table = S.rows_to_table([S.features_to_row(c) for c in cs], schema)
        e = write_table_atomic(table, vdir / shard_name(task, bucket, ids), row_group_rows=2)
        man.add({**e, "task": task, "bucket_s": bucket})
    man.save()
    set_latest(tmp_path / "out", vdir)
    return man


def test_round_trip_keeps_values_dtypes_and_absent_conditions(tmp_path):
    clips = [make_clip("a", "tts", 2.0, 1), make_clip("b", "v2s", 1.5, 2), make_clip("c", "joint", 2.0, 3)]
    md = S.file_metadata(config_hash="h1", config={"x": 1}, extractors={"visual": {"name": "m"}}, created_at="now")
    schema = S.build_schema(sem_dim=SEM_DIM, metadata=md)
    pq.write_table(S.rows_to_table([S.features_to_row(c) for c in clips], schema), tmp_path / "s.parquet")
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.schema.field("sem").type == pa.list_(pa.list_(pa.float16(), SEM_DIM))
    assert table.schema.field("mel").type == pa.list_(pa.list_(pa.float16(), 64))
    assert table.schema.field("lip").type == pa.list_(pa.list_(pa.uint8(), 1024))
    assert table.schema.field("sync").type == pa.list_(pa.list_(pa.uint8(), 1024))
    meta = S.read_metadata(table.schema)
    assert meta["schema_version"] == S.SCHEMA_VERSION and meta["config_hash"] == "h1" and meta["sem_dim"] == SEM_DIM
    assert meta["extractors"] == {"visual": {"name": "m"}}
    back = [S.row_to_features(r) for r in S.table_to_rows(table)]
    for want, got in zip(clips, back, strict=True):
        assert got.task == want.task and got.duration_s == pytest.approx(want.duration_s)
        np.testing.assert_allclose(got.sem, want.sem, atol=4e-3, rtol=1e-3)  # float16
        np.testing.assert_allclose(got.mel, want.mel, atol=8e-3, rtol=1e-3)
        assert got.sem.dtype == np.float16
        for name in ("lip", "sync", "phonemes", "speaker"):
            w, g = getattr(want, name), getattr(got, name)
            assert (w is None) == (g is None), name
            if w is not None:
                np.testing.assert_array_equal(g, w)  # exact: uint8 / int16 / float32
        assert got.meta["events"] == [{"time": 0.5, "class": "dog"}]
    # a slice of the table (as a row group read) decodes the same rows
    sliced = S.table_to_rows(table.slice(2, 1))[0]
    np.testing.assert_array_equal(sliced["lip"], clips[2].lip)


def test_check_features_names_the_problem():
    S.check_features(make_clip("ok"), sem_dim=SEM_DIM)
    bad = make_clip("x")
    bad.sem = bad.sem[:, :4]
    with pytest.raises(FeatureShapeError, match="sem"):
        S.check_features(bad, sem_dim=SEM_DIM)
    bad = make_clip("y")
    bad.mel = bad.mel[:50]
    with pytest.raises(FeatureShapeError, match="mel has 50 frames"):
        S.check_features(bad, sem_dim=SEM_DIM)
    bad = make_clip("z")
    bad.lip = bad.lip.astype(np.float32)
    with pytest.raises(FeatureShapeError, match="uint8"):
        S.check_features(bad)


def test_buckets():
    assert S.bucket_for(1.2) == 2.0 and S.bucket_for(2.0) == 2.0 and S.bucket_for(2.01) == 4.0
    assert S.bucket_for(9.99) == 10.0
    with pytest.raises(ClipTooLongError):
        S.bucket_for(10.5)
    assert S.bucket_frames(4.0) == {"sem": 40, "lip": 100, "sync": 100, "mel": 400}


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
