"""The Parquet contract (vssflow/data/schema.py). The shard set on disk (shards.py) is tested in test_shards, its
reader in test_shard_set; both build their sets with this module's make_clip and write_set."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vssflow.data import schema as S
from vssflow.data.shards import ShardManifest, set_latest, shard_name, version_dir, write_table_atomic
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
