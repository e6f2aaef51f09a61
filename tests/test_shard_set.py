"""vssflow.data.shard_set: the one reader of feature shards (training, evaluation, batch generation, the tests).

Opening checks the set (listed shards only, size and sha256, schema version, sem_dim); then by clip, by shard
(columns and split chosen), as clips, per-task counts; a lone Parquet file. No Ray.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_schema import SEM_DIM, make_clip, write_set

from vssflow.data import schema as S
from vssflow.data.shard_set import ShardSet, read_shard
from vssflow.data.shards import ShardManifest, check_shards, resolve_shard_dir
from vssflow.errors import FeatureShapeError, InputError, MissingFileError


def test_reads_listed_shards_with_filters_and_checks(tmp_path):
    clips = [make_clip(f"t{i}", "tts", 2.0, i) for i in range(5)] + [make_clip("v0", "v2s", 3.0, 9)]
    write_set(tmp_path, clips)
    # a foreign file in the directory is never read: only _manifest.json's shards are
    pq.write_table(pa.table({"clip_id": ["zzz"]}), resolve_shard_dir(tmp_path / "out") / "stray.parquet")
    ds = ShardSet(tmp_path / "out", cache_row_groups=1)
    assert len(ds) == 6 and ds.sem_dim == SEM_DIM
    by_id = {ds[i].meta["clip_id"]: ds[i] for i in range(len(ds))}
    assert set(by_id) == {c.meta["clip_id"] for c in clips}
    assert by_id["t3"].sem.dtype == np.float32 and by_id["v0"].lip is None
    np.testing.assert_array_equal(by_id["t3"].lip, clips[3].lip)
    assert len(ShardSet(tmp_path / "out", tasks=["v2s"])) == 1
    assert len(ShardSet(tmp_path / "out", buckets=[2.0])) == 5
    with pytest.raises(FeatureShapeError, match="expects 1280"):
        ShardSet(tmp_path / "out", sem_dim=1280)
    groups = ds.bucket_indices()  # (task, bucket): a 3 s clip is in the 4 s bucket; one group = equal shapes
    tts = [i for i in range(6) if ds[i].task == "tts"]
    assert groups == {("tts", 2.0): tts, ("v2s", 4.0): [i for i in range(6) if i not in tts]} and len(tts) == 5
    with pytest.raises(MissingFileError):
        ShardSet(tmp_path / "nothing")


def test_a_corrupted_row_is_refused_when_read(tmp_path):
    man = write_set(tmp_path, [make_clip("a")])
    path = man.shard_paths()[0]
    table = pq.read_table(path)
    md = table.schema.metadata
    bad_mel = pa.array([[[0.0] * 64] * 10], type=table.schema.field("mel").type)
    table = table.set_column(table.schema.get_field_index("mel"), table.schema.field("mel"), bad_mel)
    pq.write_table(table.replace_schema_metadata(md), path)
    entry = man.shards[0]  # a bad row written and listed by a faulty writer: its checksum is right, its row is not
    entry.update(bytes=path.size(), sha256=path.sha256())
    man.save()
    with pytest.raises(FeatureShapeError, match="mel has 10 frames"):
        ShardSet(tmp_path / "out")[0]
    assert json.loads((man.vdir / "_manifest.json").read_text())["rows"] == 1


def test_a_corrupt_or_missing_shard_is_named_in_one_line_when_the_set_is_opened(tmp_path):
    man = write_set(tmp_path, [make_clip("a"), make_clip("b", "v2s", 1.5, 2)])
    ShardSet(tmp_path / "out")  # sound
    path = next(p for p in man.shard_paths() if p.name.startswith("tts"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size: only the sha256 sees it
    path.write_bytes_atomic(bytes(data))
    for open_set in (lambda: ShardSet(tmp_path / "out"), lambda: check_shards(ShardManifest(man.vdir))):
        with pytest.raises(InputError, match="corrupt shard: sha256") as err:
            open_set()
        assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    assert len(ShardSet(tmp_path / "out", tasks=["v2s"])) == 1  # the shards it does not read are not its concern
    problems = ShardManifest(man.vdir).verify()
    assert len(problems) == 1 and problems[0].startswith(f"{path.name}: corrupt shard: sha256"), problems
    path.unlink()
    with pytest.raises(InputError, match="listed in _manifest.json but missing"):
        ShardSet(tmp_path / "out")


def _three_splits(tmp_path):
    clips = [make_clip(f"t{i}", "tts", 2.0, i) for i in range(4)] + [make_clip("v0", "v2s", 3.0, 9)]
    for c, split in zip(clips, ["train", "val", "train", "test", "train"], strict=True):
        c.meta["split"] = split
    return write_set(tmp_path, clips), clips


def test_by_shard_as_clips_and_counts_with_a_split(tmp_path):
    man, clips = _three_splits(tmp_path)
    shards = ShardSet(tmp_path / "out")
    assert [p.name for p in shards.files] == sorted(e["file"] for e in man.shards)
    ids = [t.column("clip_id").to_pylist() for t in shards.tables(["clip_id"], split="train")]
    assert sorted(i for part in ids for i in part) == ["t0", "t2", "v0"]
    assert all(t.column_names == ["clip_id"] for t in shards.tables(["clip_id"], split="train"))  # split not added
    val = shards.clips(split="val")
    assert [c.meta["clip_id"] for c in val] == ["t1"] and val[0].sem.dtype == np.float32
    np.testing.assert_allclose(val[0].mel, clips[1].mel, atol=0.02)  # float16 column, read back as float32
    assert len(shards.clips(limit=2)) == 2 and len(shards.clips()) == 5
    assert shards.task_counts() == {"tts": 4, "v2s": 1}
    assert shards.task_counts(split="train") == {"tts": 2, "v2s": 1}
    assert len(ShardSet(tmp_path / "out", split="train")) == 3


def test_version_and_sizes_describe_the_set(tmp_path):
    man, clips = _three_splits(tmp_path)
    shards = ShardSet(tmp_path / "out")
    assert (shards.sem_dim, shards.lip_dim) == (SEM_DIM, 0)
    assert shards.version.startswith(f"{man.vdir.name}:") and ShardSet(man.vdir).version == shards.version
    clips[0].mel = clips[0].mel + 1.0  # the same clips and config, one clip's content changed
    other = write_set(tmp_path / "other", clips)
    assert other.vdir.name == man.vdir.name and ShardSet(other.vdir).version != shards.version


def test_another_schema_version_is_refused_in_one_line(tmp_path):
    man, _ = _three_splits(tmp_path)
    man.data["schema_version"] = "1"
    man.save()
    with pytest.raises(FeatureShapeError, match=r"shard schema version 1 is not .*re-run `vssflow preprocess`") as e:
        ShardSet(tmp_path / "out")
    assert str(e.value).startswith(f"{man.vdir}: ") and "\n" not in str(e.value)


def test_a_lone_parquet_file_is_a_set_of_one(tmp_path):
    clips = [make_clip("a", "tts", 2.0, 1), make_clip("b", "v2s", 2.0, 2)]
    path = tmp_path / "features.parquet"
    pq.write_table(S.rows_to_table([S.features_to_row(c) for c in clips], S.build_schema(sem_dim=SEM_DIM)), path)
    shards = ShardSet(path)
    assert [p.name for p in shards.files] == ["features.parquet"] and len(shards) == 2
    assert [shards[i].meta["clip_id"] for i in range(2)] == ["a", "b"]
    assert read_shard(path, ["task"]).column("task").to_pylist() == ["tts", "v2s"]
