"""The stages of `vssflow preprocess` (pipelines/preprocess_stages.py) as plain functions on real clips, no Ray:
a bad row becomes error columns, and decode -> encode -> write puts a good clip in a Parquet shard and a bad one in
quarantine. The whole job on Ray is tests/test_preprocess.py.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.preprocess_stages import EncodeActor, cpu_stages, write_stage
from vssflow.data import schema as S
from vssflow.data.manifest import read_manifest
from vssflow.features.extract import ExtractConfig, row_dict


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from vssflow.synth.corpus import CorpusConfig, write_corpus

    out = tmp_path_factory.mktemp("corpus")
    return write_corpus(CorpusConfig(out=str(out), clips=2, seed=3, duration=(2.0, 2.0), workers=1)).manifest


def test_stage_adapters_turn_errors_into_quarantine_fields_without_ray(corpus, tmp_path):
    """The stages are plain functions on dicts: a bad row gets error columns, not an exception."""
    good = row_dict(read_manifest(corpus)[0])
    out = cpu_stages(good, config=ExtractConfig())
    assert out["error_stage"] == "" and out["mel"].shape == (200, 64) and out["sem_frames"].shape[0] == 20
    missing = {**good, "clip_id": "gone", "video": str(tmp_path / "gone.mp4")}
    out = cpu_stages(missing, config=ExtractConfig())
    assert (out["error_stage"], out["error_reason"], out["error_type"]) == (
        "decode",
        "missing_file",
        "MissingFileError",
    )
    assert out["mel"].shape == (0, 64)  # every key present, empty: the row still fits the block


def test_encode_then_write_puts_the_good_clip_in_a_shard_and_the_bad_one_in_quarantine(corpus, tiny_clip, tmp_path):
    """EncodeActor (decoding its own clips, the CPU plan) on a numpy batch as Ray Data hands it, then write_stage:
    one Parquet shard of the good clip with its task and bucket in the footer, one quarantine file for the other."""
    good = row_dict(read_manifest(corpus)[0])
    missing = {**good, "clip_id": "gone", "video": str(tmp_path / "gone.mp4")}
    rows = [good, missing]
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in good}
    actor = EncodeActor(ExtractConfig(encoder=tiny_clip), decode=True)
    packed = actor(batch)
    assert list(packed["clip_id"]) == [good["clip_id"], "gone"] and list(packed["kind"]) == ["data", "failed"]

    vdir = tmp_path / "v1-test"
    md = S.file_metadata(config_hash="test", config={}, extractors={}, created_at="now")
    written = write_stage(packed, vdir=str(vdir), sem_dim=actor.extractors.sem_dim, lip_dim=0, file_md=md,
                          row_group_rows=32)  # fmt: skip
    entries = [json.loads(e) for e in written["entry"]]
    (data,) = [e for e in entries if e["kind"] == "data"]
    (quarantine,) = [e for e in entries if e["kind"] == "quarantine"]
    assert data["clip_ids"] == [good["clip_id"]] and data["task"] == good["task"] and data["bucket_s"] == 2.0
    table = pq.read_table(vdir / data["file"])
    assert table.column("clip_id").to_pylist() == [good["clip_id"]]
    footer = table.schema.metadata
    assert footer[b"vssflow.task"].decode() == good["task"] and footer[b"vssflow.bucket_s"] == b"2"
    assert quarantine["clip_ids"] == ["gone"] and quarantine["reasons"] == {"missing_file": 1}
    (q,) = pq.read_table(vdir / quarantine["file"]).to_pylist()
    assert (q["stage"], q["reason"]) == ("decode", "missing_file")
