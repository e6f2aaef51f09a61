"""MLflow tracking on a real PostgreSQL server (the team setup of cluster/), not only the embedded SQLite default.

The test starts Debian's PostgreSQL on 127.0.0.1 with scripts/start_postgres.sh, then
1. logs through a ``postgresql://`` tracking URI directly (the store an `mlflow server` uses), and
2. runs a real ``mlflow server`` on that database with proxied artifacts (what cluster/ deploys) and logs through
   ``http://`` with pipelines.mlflow_utils: params, metric history, audio artifact, registered model;
and reads everything back with a fresh MlflowClient, and checks the rows are in PostgreSQL itself.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipelines.net import free_port, wait_ready

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "start_postgres.sh"


def _postgres_bin() -> str | None:
    if os.environ.get("PG_BIN"):
        return os.environ["PG_BIN"]
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name.split(".")[0]))
    dirs = [d for d in dirs if os.access(os.path.join(d, "initdb"), os.X_OK)]
    if dirs:
        return dirs[-1]
    initdb = shutil.which("initdb")
    return str(Path(initdb).parent) if initdb else None


pytestmark = pytest.mark.skipif(
    _postgres_bin() is None or not shutil.which("pg_ctl", path=_postgres_bin() or ""),
    reason="PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql",
)


def _mlflow_uri(libpq_uri: str) -> str:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; name the psycopg2 driver (psycopg2-binary) explicitly.
    return libpq_uri.replace("postgresql://", "postgresql+psycopg2://", 1)


@pytest.fixture(scope="module")
def postgres_uri():
    # Not pytest's tmp_path: its parents are private to root, and the server runs as `postgres` when we are root.
    data = tempfile.mkdtemp(prefix="vssflow-pg-")
    port = free_port()
    env = {**os.environ, "PG_BIN": _postgres_bin()}
    out = subprocess.run(
        ["bash", str(SCRIPT), "start", data, str(port)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, f"start_postgres.sh failed: {out.stderr}"
    uri = out.stdout.strip().splitlines()[-1]
    assert uri == f"postgresql://mlflow:mlflow@127.0.0.1:{port}/mlflow"
    try:
        yield uri
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", data], capture_output=True, env=env, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def _sql(uri: str, query: str, *args) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall()


def test_tracking_store_on_postgres(postgres_uri, tmp_path):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(_mlflow_uri(postgres_uri))
    exp = client.create_experiment("direct", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, run_name="pg-direct")
    rid = run.info.run_id
    losses = [1.0 / (s + 1) for s in range(5)]
    client.log_batch(
        rid,
        params=[Param("model.depth", "2"), Param("train.lr", "0.001")],
        metrics=[Metric("train/loss", v, int(time.time() * 1000), s) for s, v in enumerate(losses)],
    )
    (tmp_path / "config.json").write_text(json.dumps({"preset": "tiny"}))
    client.log_artifact(rid, str(tmp_path / "config.json"), artifact_path="model")
    client.set_terminated(rid)

    fresh = MlflowClient(_mlflow_uri(postgres_uri))
    got = fresh.get_run(rid)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"model.depth": "2", "train.lr": "0.001"}
    assert [(m.step, m.value) for m in fresh.get_metric_history(rid, "train/loss")] == list(enumerate(losses))
    assert [f.path for f in fresh.list_artifacts(rid, "model")] == ["model/config.json"]
    local = fresh.download_artifacts(rid, "model/config.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text()) == {"preset": "tiny"}
    # The rows really are in PostgreSQL (not a silent fallback to a file store).
    assert _sql(postgres_uri, "SELECT key, value FROM params WHERE run_uuid = %s ORDER BY key", rid) == [
        ("model.depth", "2"),
        ("train.lr", "0.001"),
    ]
    assert _sql(postgres_uri, "SELECT count(*) FROM metrics WHERE run_uuid = %s", rid) == [(5,)]


@pytest.fixture(scope="module")
def mlflow_server(postgres_uri):
    """``mlflow server`` on PostgreSQL with proxied artifacts, as cluster/mlflow/docker-compose.yaml runs it."""
    port = free_port()
    artifacts = Path(tempfile.mkdtemp(prefix="vssflow-mlartifacts-"))
    log = artifacts.parent / f"{artifacts.name}.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", _mlflow_uri(postgres_uri),
        "--serve-artifacts", "--artifacts-destination", artifacts.as_uri(),
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:  # a readiness bound, not a speed check: the machine may be busy
            wait_ready(url, proc, timeout=600, path="/health")
        except (RuntimeError, TimeoutError) as e:
            pytest.fail(f"mlflow server not ready ({e}): {log.read_text()[-2000:]}")
        yield url, artifacts
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(artifacts, ignore_errors=True)
        log.unlink(missing_ok=True)


def test_tracking_server_on_postgres_with_project_logging(mlflow_server, postgres_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines import mlflow_utils

    url, artifact_root = mlflow_server
    logger = mlflow_utils.RunLogger(url, experiment="vssflow-pg", run_name="server", system_metrics=False)
    logger.log_params({"model": {"depth": 2, "width": 64}, "train": {"lr": 1e-3}})
    for step in range(3):
        logger.log_metrics({"train/loss": 1.0 - 0.25 * step}, step=step)
    wav = (0.1 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16000)).astype(np.float32)
    logger.log_audio(wav, 16000, "clip0", step=2)
    logger.set_tags({"data.version": "abc123"})
    logger.end()

    from conftest_data import make_tiny_serving_model

    model_dir = make_tiny_serving_model(tmp_path / "model")  # a real model: its signature is read from its config
    model_uri = mlflow_utils.log_and_register_model(model_dir, run_id=logger.run_id, tracking_uri=url)
    assert model_uri == "models:/vssflow/1"

    client = MlflowClient(url)
    run = client.get_run(logger.run_id)
    assert run.data.params == {"model.depth": "2", "model.width": "64", "train.lr": "0.001"}
    assert run.data.tags["data.version"] == "abc123"
    assert mlflow_utils.run_metrics(logger.run_id, tracking_uri=url) == {"train/loss": [(0, 1.0), (1, 0.75), (2, 0.5)]}
    assert "samples/step_000002/clip0.wav" in mlflow_utils.run_artifacts(logger.run_id, tracking_uri=url)
    local = client.download_artifacts(logger.run_id, "samples/step_000002/clip0.wav", str(tmp_path / "dl"))
    back, sr = sf.read(local, dtype="float32")
    assert sr == 16000 and np.abs(back - wav).max() < 1e-3
    # Artifacts went through the server into its artifact destination, not to a client-side path.
    assert list(artifact_root.rglob("clip0.wav"))
    import mlflow

    mlflow.set_tracking_uri(url)
    restored = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(tmp_path / "reg")))
    configs = [p for p in restored.rglob("config.json")]
    assert [json.loads(p.read_text()) for p in configs] == [json.loads((model_dir / "config.json").read_text())]
    # Runs and the model registry live in PostgreSQL.
    assert _sql(postgres_uri, "SELECT value FROM tags WHERE run_uuid = %s AND key = 'data.version'", logger.run_id) == [
        ("abc123",)
    ]
    assert _sql(postgres_uri, "SELECT name, version FROM model_versions") == [("vssflow", 1)]
