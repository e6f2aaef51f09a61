"""Shared storage by URI against a real S3-compatible server on 127.0.0.1 (moto's server, started here).

What it proves: ``vssflow.storage`` reads and writes ``s3://`` through pyarrow with the endpoint taken from the
standard ``AWS_ENDPOINT_URL`` (as for MinIO); shard writes stay atomic on an object store (temporary key, then a
server-side copy; no temporary key is left, a stale one is removed by ``recover``); and the pipelines work end to
end on a bucket: ``vssflow preprocess --out s3://...`` writes the shard set there, training reads it from the bucket
and Ray Train's checkpoints land in it (``--storage s3://...``), a resumed run continues from the bucket, MLflow
stores its artifacts there (``MLFLOW_S3_ENDPOINT_URL``), and generate-batch lists clips of the remote shard set.
"""

from __future__ import annotations

import logging

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")
mlflow = pytest.importorskip("mlflow")
boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from vssflow.data.shard_set import ShardSet  # noqa: E402
from vssflow.data.shards import ShardManifest, recover, resolve_shard_dir  # noqa: E402
from vssflow.storage import location  # noqa: E402

BUCKET = "vssflow-test"
N_CLIPS = 4
TINY_DIT = {"depth": 2, "width": 64, "heads": 2, "cross_dim": 64, "latent_dim": 64}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 and the environment a user sets for MinIO (endpoint, keys, region)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "MLFLOW_S3_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket=BUCKET)
    yield client
    mp.undo()
    server.stop()


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))


def test_atomic_writes_and_recovery_on_an_object_store(s3):
    import pyarrow as pa

    from vssflow.data.shards import write_table_atomic

    root = location(f"s3://{BUCKET}/unit")
    assert not root.is_local and root.uri == f"s3://{BUCKET}/unit"
    with pytest.raises(TypeError):  # a bucket key is never silently used as a local path
        open(root / "x")  # noqa: SIM115
    (root / "note.txt").write_text_atomic("hello")
    assert (root / "note.txt").read_text() == "hello"
    entry = write_table_atomic(pa.table({"clip_id": ["a", "b"]}), root / "v1-x" / "v2s-2s-ab.parquet")
    assert entry["rows"] == 2 and (root / "v1-x" / "v2s-2s-ab.parquet").size() == entry["bytes"]
    assert not [k for k in _keys(s3, "unit/") if ".tmp-" in k], "a temporary key was left behind"

    # A writer killed between its temporary upload and the copy leaves a hidden key: recover() removes it.
    s3.put_object(Bucket=BUCKET, Key="unit/v1-x/.v2s-2s-cd.parquet.tmp-1234", Body=b"PAR1 half")
    man = ShardManifest(root / "v1-x", config_hash="x")
    counts = recover(man)
    # (the unlisted shard has no config-hash metadata, so it is not this set's: deleted rather than adopted)
    assert counts == {"temp_removed": 1, "adopted": 0, "deleted": 1}
    assert _keys(s3, "unit/v1-x/") == ["unit/v1-x/_manifest.json"]


def test_endpoint_from_the_uri_overrides_the_environment(s3, monkeypatch):
    endpoint = s3.meta.endpoint_url
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    host = endpoint.split("://", 1)[1]
    loc = location(f"s3://{BUCKET}/unit/q.txt?endpoint_override={host}&scheme=http")
    loc.write_text_atomic("via the URI")
    assert loc.read_text() == "via the URI"


@pytest.mark.timeout(600)
def test_preprocess_train_and_track_on_a_bucket(s3, tmp_path):
    from pipelines.generate_batch import load_jobs
    from pipelines.preprocess import PreprocessConfig, run_preprocess
    from pipelines.train import run_training
    from pipelines.train_loop import TrainJobConfig
    from vssflow.features.extract import ExtractConfig
    from vssflow.synth.corpus import CorpusConfig, write_corpus

    corpus = write_corpus(CorpusConfig(out=str(tmp_path / "corpus"), clips=N_CLIPS, seed=5, duration=(1.0, 1.0),
                                       workers=1)).manifest  # fmt: skip
    shards = f"s3://{BUCKET}/shards"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.create_experiment("s3", artifact_location=f"s3://{BUCKET}/mlflow")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)  # workers inherit the env
    try:
        summary = run_preprocess(
            PreprocessConfig(manifest=str(corpus), out=shards, extract=ExtractConfig(lips=False), progress=False),
            log=lambda *_: None,
        )
        assert summary.total_rows == N_CLIPS and summary.out_dir.startswith(f"s3://{BUCKET}/shards/v")
        keys = _keys(s3, "shards/")
        assert "shards/LATEST" in keys and any(k.endswith("/_manifest.json") for k in keys)
        assert not [k for k in keys if ".tmp-" in k]
        vdir = resolve_shard_dir(shards)
        assert ShardManifest(vdir).verify() == []
        assert len(ShardSet(shards)) == N_CLIPS  # the one shard reader, from the bucket

        cfg = TrainJobConfig.from_dict(dict(data=shards, model_overrides=TINY_DIT, max_steps=2, checkpoint_every=1,
                                            eval_every=0, batch_size=1, warmup_steps=1, engine="zero2", workers=1,
                                            max_failures=0))  # fmt: skip
        storage = f"s3://{BUCKET}/ray"
        tracking = f"sqlite:///{tmp_path}/mlflow.db"
        res = run_training(cfg, out=tmp_path / "model", run_dir=tmp_path / "run", storage=storage,
                           tracking_uri=tracking, experiment="s3", register_as="s3-model")  # fmt: skip
        assert res.steps == 2 and res.checkpoint.startswith(f"{storage}/")
        ckpts = _keys(s3, "ray/")
        assert any("/step_000002/worker_0.pt" in k for k in ckpts), ckpts
        assert (tmp_path / "model" / "config.json").is_file()

        # --resume continues from the checkpoint in the bucket (Checkpoint on the S3 filesystem)
        res2 = run_training(TrainJobConfig(max_steps=3), out=None, resume=res.run_dir, register_as=None)
        assert res2.steps == 3 and res2.checkpoint.endswith("step_000003")
    finally:
        ray.shutdown()

    # MLflow wrote its artifacts (audio samples, the registered model) to the same server
    art = _keys(s3, "mlflow/")
    assert any(k.endswith(".wav") for k in art) and any(k.endswith("config.json") for k in art), art[:20]
    # generate-batch reads its clip list from the remote shard set
    jobs = load_jobs(shards)
    assert len(jobs) == N_CLIPS and all(j["file"].startswith(f"s3://{BUCKET}/shards/") for j in jobs)
