"""Serve on a multi-node Ray cluster whose nodes do not share their temporary directories (issue 15): no path
crosses deployments.

A ``ray.cluster_utils.Cluster`` head and three worker nodes, each ``ray start`` in its own mount namespace with a
private tmpfs as ``$TMPDIR`` (the same path, different contents on each node: what separate Kubernetes pods are).
The API, the feature extractor and the generator are pinned to different nodes (custom resources), and the model is
an MLflow URI. Before, the API replica handed the extractor a directory of its own node (every upload: 500) and the
driver downloaded the model into its own temporary directory and handed that path on (no replica could load it);
now bytes travel between deployments and each replica downloads the model where it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("mlflow")


def _private_tmp_works() -> bool:
    """Mount namespaces (``unshare -m``, root) are there: a tmpfs mounted inside one is invisible outside."""
    if shutil.which("unshare") is None or shutil.which("ffmpeg") is None:
        return False
    probe = Path(tempfile.mkdtemp(prefix="vssflow-ns-"))
    try:
        cmd = f"mount -t tmpfs tmpfs {probe} && touch {probe}/inside"
        ok = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True).returncode == 0
        return ok and not (probe / "inside").exists()
    finally:
        shutil.rmtree(probe, ignore_errors=True)


pytestmark = pytest.mark.skipif(not _private_tmp_works(), reason="needs ffmpeg and mount namespaces (unshare -m)")
NODES = ("api", "extractor", "generator")


@contextlib.contextmanager
def _mlflow_server(root: Path):
    """``mlflow server`` with proxied artifacts, as the cluster runs it: a model is downloaded over HTTP into a
    temporary directory of whoever asks (a local file store would hand out its own path instead)."""
    from pipelines.net import free_port, stop_process_group, wait_ready

    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
           "--artifacts-destination", (root / "artifacts").as_uri()]  # fmt: skip
    with open(root / "mlflow.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=600, path="/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    node_tmp = Path(tempfile.mkdtemp(prefix="vssflow-node-tmp-"))  # empty here; a private tmpfs on each node
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    env = {**os.environ, "TMPDIR": str(node_tmp), "RAY_TMPDIR": tempfile.gettempdir()}  # Ray's own files: shared
    logs = tmp_path_factory.mktemp("nodes")
    procs = []
    try:
        ray.init(address=head.address, log_to_driver=False)
        for name in NODES:  # one at a time: raylets starting together time out on a small machine
            resources = json.dumps({f"{name}_node": 1})
            start = (f"mount -t tmpfs tmpfs {node_tmp} && exec {Path(sys.executable).parent / 'ray'} start "
                     f"--address={head.address} --num-cpus=1 --resources='{resources}' --block")  # fmt: skip
            log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - the node's output, for a failure's message
            procs.append(subprocess.Popen(["unshare", "-m", "sh", "-c", start], env=env, start_new_session=True,
                                          stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
            deadline = time.monotonic() + 180
            while sum(n["Alive"] for n in ray.nodes()) < 1 + len(procs):
                assert time.monotonic() < deadline, f"the {name} node did not join; see {log.name}"
                assert procs[-1].poll() is None, f"the {name} node exited; see {log.name}"
                time.sleep(1)
        root = tmp_path_factory.mktemp("serve-cluster")
        with _mlflow_server(root) as tracking_uri:
            yield {"node_tmp": node_tmp, "root": root, "tracking_uri": tracking_uri}
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        for p in procs:  # only the process groups this fixture started (`ray start --block` drains on SIGTERM)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=90)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        head.shutdown()
        shutil.rmtree(node_tmp, ignore_errors=True)


def test_generation_succeeds_when_the_deployments_run_on_nodes_that_share_no_temporary_directory(
    cluster, tmp_path, monkeypatch
):
    import ray
    from conftest_data import make_tiny_serving_model
    from ray import serve

    from pipelines.mlflow_utils import create_run, log_and_register_model
    from pipelines.net import free_port, wait_ready
    from pipelines.serve import Scaling, ServeConfig, build_app

    root = cluster["root"]
    uri = cluster["tracking_uri"]
    model_uri = log_and_register_model(make_tiny_serving_model(root / "model"), run_id=create_run(uri, run_name="t"),
                                       tracking_uri=uri, registered_name="tiny-serve")  # fmt: skip
    # this driver's temporary files go where the nodes see only their own tmpfs (a download here is not theirs)
    monkeypatch.setattr(tempfile, "tempdir", str(cluster["node_tmp"]))
    config = ServeConfig(
        model=model_uri, tracking_uri=uri, max_video_seconds=8.0,
        ingress=Scaling(num_cpus=0, max_ongoing_requests=100, resources={"api_node": 1}),
        extractor=Scaling(num_cpus=1, resources={"extractor_node": 1}),
        generator=Scaling(num_cpus=1, resources={"generator_node": 1}),
    )  # fmt: skip
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name="cluster", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout=300)

    # each deployment on its own node
    nodes = {a["Name"].split("#")[1]: a["Address"]["NodeID"] for a in ray._private.state.actors().values()
             if a["State"] == "ALIVE" and (a.get("Name") or "").startswith("SERVE_REPLICA::cluster#")}  # fmt: skip
    assert set(nodes) == {"Api", "FeatureExtractor", "GeneratorServer"} and len(set(nodes.values())) == 3, nodes

    video = tmp_path / "v.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:d=1",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)], check=True)  # fmt: skip
    for output in ("wav", "mp4"):
        r = httpx.post(f"{url}/v1/generate", files={"video": ("v.mp4", video.read_bytes())},
                       data={"task": "v2s", "steps": "2", "seed": "1", "output": output}, timeout=300)  # fmt: skip
        assert r.status_code == 200, r.text[:300]
        assert r.headers["content-type"] == ("audio/wav" if output == "wav" else "video/mp4")
    assert list(cluster["node_tmp"].iterdir()) == [], "a node's file showed up outside it"
    serve.delete("cluster")
