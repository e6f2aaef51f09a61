"""`vssflow preprocess` on real files with real Ray: columns vs the library, kill -9 + rerun, quarantine, two nodes
(the stages alone, without Ray: tests/test_preprocess_stages.py).

One local Ray (2 CPUs) is shared by the module; the two-node test runs last on its own ray.cluster_utils.Cluster.
The corpus is the embedded synthetic one (8 clips of 2 s); the semantic encoder is a tiny CLIP built here.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from pipelines.preprocess import PreprocessConfig, run_preprocess  # noqa: E402
from vssflow.data.manifest import read_manifest  # noqa: E402
from vssflow.data.schema import SCHEMA_VERSION  # noqa: E402
from vssflow.data.shard_set import ShardSet  # noqa: E402
from vssflow.data.shards import ShardManifest, resolve_shard_dir  # noqa: E402
from vssflow.features.extract import ExtractConfig, Extractors, extract_clip  # noqa: E402

N_CLIPS = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from vssflow.synth.corpus import CorpusConfig, write_corpus

    out = tmp_path_factory.mktemp("corpus")
    report = write_corpus(CorpusConfig(out=str(out), clips=N_CLIPS, seed=3, duration=(2.0, 2.0), workers=1))
    return report.manifest


class _MemoryWarnings(logging.Handler):
    """Ray Data's warnings that a stage uses more memory than it asked for (its high-memory issue detector)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        if "memory=" in record.getMessage():
            self.messages.append(record.getMessage())


def _cfg(manifest, out, encoder, **kw) -> PreprocessConfig:
    return PreprocessConfig(
        manifest=str(manifest), out=str(out), extract=ExtractConfig(encoder=encoder), progress=False, **kw
    )


def test_pipeline_columns_match_the_library(local_ray, corpus, tiny_clip, tmp_path):
    console: list[str] = []
    import ray.data  # noqa: F401 - its logging config, applied at import, would drop a handler added before

    warnings = _MemoryWarnings()
    logging.getLogger("ray.data").addHandler(warnings)
    try:
        summary = run_preprocess(_cfg(corpus, tmp_path / "out", tiny_clip, rows_per_shard=3), log=console.append)
    finally:
        logging.getLogger("ray.data").removeHandler(warnings)
    assert summary.written == N_CLIPS and not summary.quarantined
    assert warnings.messages == []  # the stages ask Ray for the memory they use (issue 16)
    # where it is, in lines a person reads (issue 14): the stage, the first clips after the models loaded, the last
    clips = [x for x in console if x.startswith("vssflow preprocess: clip ")]
    # 2 CPUs: an encoder actor per CPU, each decoding its own clips, the frames of several per call (issue 16)
    assert "vssflow preprocess: decoding and encoding on 2 encoder actor(s) (cpu, 4 clips per call)" in console
    assert clips[0].endswith("(models loaded)")
    assert clips[-1].startswith(f"vssflow preprocess: clip {N_CLIPS}/{N_CLIPS} (")
    assert len(clips) == 1 or clips[-1].endswith("elapsed, ETA 0s"), clips
    ds = ShardSet(tmp_path / "out", float32=False)
    assert len(ds) == N_CLIPS
    got = {ds[i].meta["clip_id"]: ds[i] for i in range(len(ds))}
    man = ShardManifest(resolve_shard_dir(tmp_path / "out"))
    assert man.verify() == []
    for e in man.shards:  # one task and one bucket per shard, recorded in the file metadata
        md = pq.read_schema(man.vdir / e["file"]).metadata
        assert (
            md[b"vssflow.task"].decode() == e["task"] and md[b"vssflow.config_hash"].decode() == man.data["config_hash"]
        )
        assert set(pq.read_table(man.vdir / e["file"], columns=["task"]).column(0).to_pylist()) == {e["task"]}

    ex = Extractors.load(ExtractConfig(encoder=tiny_clip))
    for row in read_manifest(corpus):
        want, have = extract_clip(row, ex), got[row.clip_id]
        assert have.task == want.task and have.duration_s == pytest.approx(want.duration_s)
        np.testing.assert_allclose(have.sem.astype(np.float32), want.sem, rtol=2e-3, atol=2e-3)  # float16 column
        np.testing.assert_allclose(have.mel.astype(np.float32), want.mel, rtol=2e-3, atol=1e-2)
        for name in ("lip", "phonemes", "speaker"):
            w, h = getattr(want, name), getattr(have, name)
            assert (w is None) == (h is None), (row.clip_id, name)
            if w is not None:
                np.testing.assert_allclose(h, w, rtol=0, atol=1e-6 if name == "speaker" else 0)
        assert (want.lip is not None) == (row.task in ("tts", "joint"))
        for k in ("split", "transcript", "speaker_id", "source", "licence", "events"):
            assert have.meta[k] == want.meta[k], k
        assert have.meta["decode_node"] and have.meta["encode_node"]

    # the Ray Data path of Ray Train reads the same rows: the training split of the same files
    from pipelines.train_shards import build_dataset

    rds = build_dataset(ds, seed=0)
    train = sorted(cid for cid, f in got.items() if f.meta["split"] == "train")
    assert train and sorted(r["clip_id"] for r in rds.select_columns(["clip_id"]).take_all()) == train

    # rerun: nothing to do, nothing duplicated
    again = run_preprocess(_cfg(corpus, tmp_path / "out", tiny_clip), log=lambda *_: None)
    assert again.written == 0 and again.skipped == N_CLIPS and again.total_rows == N_CLIPS
    # another config: a new version directory, never mixed into the first (one clip is enough to show it)
    one = corpus.parent / "one.jsonl"  # beside the corpus: its relative paths stay valid
    one.write_text(corpus.read_text().splitlines()[0] + "\n")
    other = _cfg(one, tmp_path / "out", tiny_clip)
    other = PreprocessConfig(**{**other.__dict__, "extract": ExtractConfig(encoder=tiny_clip, lips=False)})
    summary2 = run_preprocess(other, log=lambda *_: None)
    assert summary2.out_dir != summary.out_dir and summary2.written == 1
    assert len(ShardSet(summary.out_dir)) == N_CLIPS and len(ShardSet(tmp_path / "out")) == 1  # LATEST


HOLD_LOCK = """
import sys, time
from vssflow.files import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_preprocess_on_the_same_out_refuses_and_deletes_nothing(corpus, tiny_clip, tmp_path):
    """While a job holds --out (its lock, taken by a live process), a second run on it refuses in one line before
    touching anything: the first job's temporary shard, which recover() would delete, is still there."""
    from pipelines.preprocess import PREPROCESS_LOCK, _describe
    from vssflow.data import schema as S
    from vssflow.data.shards import config_hash, version_dir
    from vssflow.errors import InputError

    cfg = _cfg(corpus, tmp_path / "out", tiny_clip)
    described, _ = _describe(cfg.extract)
    hashed = {"schema_version": S.SCHEMA_VERSION, "extract": cfg.extract.to_dict(), "extractors": described}
    vdir = version_dir(cfg.out, config_hash(hashed))  # where the first job writes
    Path(vdir.path).mkdir(parents=True)
    in_flight = Path(vdir.path) / ".tts-2s-0123456789abcdef.parquet.tmp-1234abcd"
    in_flight.write_bytes(b"PAR1 being written")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "out" / PREPROCESS_LOCK)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match="in use by another `vssflow preprocess`") as err:
            run_preprocess(cfg, log=lambda *_: None)
        assert "\n" not in str(err.value) and str(tmp_path / "out") in str(err.value)
        assert in_flight.is_file() and not (Path(vdir.path) / "_manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_kill_9_midway_then_rerun_gives_exactly_one_row_per_clip(corpus, tiny_clip, tmp_path):
    out = tmp_path / "out"
    manifest = corpus.parent / "kill.jsonl"  # 5 clips (beside the corpus, so its relative paths hold)
    manifest.write_text("\n".join(corpus.read_text().splitlines()[:5]) + "\n")
    cmd = [sys.executable, "-m", "pipelines.cli", "preprocess", str(manifest), "--out", str(out), "--num-cpus", "2"]
    cmd += ["--encoder", tiny_clip, "--rows-per-shard", "1", "--clips-per-task", "1", "--no-progress"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p for p in out.glob(f"v{SCHEMA_VERSION}-*/*.parquet") if not p.name.startswith(".")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed"
        victims = [proc.pid] + _descendants(proc.pid)  # the driver and the local Ray it started
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    vdir = next(out.glob(f"v{SCHEMA_VERSION}-*"))
    visible = [p for p in vdir.glob("*.parquet")]
    assert 1 <= len(visible) < 5, "killed midway: some shards, not all"
    for p in visible:  # whatever is visible is a complete Parquet file
        assert pq.read_table(p).num_rows == 1

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already done" in done.stdout
    ds = ShardSet(out, check=True)
    ids = [ds[i].meta["clip_id"] for i in range(len(ds))]
    assert sorted(ids) == sorted(r.clip_id for r in read_manifest(manifest))  # each clip exactly once
    man = ShardManifest(resolve_shard_dir(out))
    assert man.verify() == [] and man.data["rows"] == 5
    assert not [p for p in vdir.rglob(".*")], "no temporary file left behind"


def _make_bad_files(corpus: Path, tmp: Path) -> dict[str, str]:
    """Broken inputs next to the corpus: clip_id -> video path."""
    rows = read_manifest(corpus)
    good_mp4 = Path(rows[0].video)
    data = good_mp4.read_bytes()
    (tmp / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "notvideo.mp4").write_text("this is a text file, not a video\n" * 20)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(good_mp4), "-an", "-c:v", "copy", str(tmp / "mute.mp4")]
    subprocess.run(cmd, check=True)
    return {
        "bad-truncated": str(tmp / "truncated.mp4"),
        "bad-empty": str(tmp / "empty.mp4"),
        "bad-notvideo": str(tmp / "notvideo.mp4"),
        "bad-mute": str(tmp / "mute.mp4"),
    }


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_mixed_manifest_quarantines_each_bad_row_with_its_reason(local_ray, corpus, tiny_clip, tmp_path):
    import json

    from vssflow.data.manifest import row_to_dict

    rows = read_manifest(corpus)
    good = [row_to_dict(r) for r in rows[:4]]
    work = corpus.parent / "mixed"  # inside the corpus directory: manifest paths may not leave it
    work.mkdir()
    bad_files = _make_bad_files(corpus, work)
    v2s = next(row_to_dict(r) for r in rows if r.task == "v2s")
    tts = next(row_to_dict(r) for r in rows if r.task == "tts")
    bad = [{**v2s, "clip_id": cid, "video": path, "end": None} for cid, path in bad_files.items()]
    bad.append({**tts, "clip_id": "bad-transcript", "transcript": "你好，世界"})  # not English: no phonemes
    manifest = corpus.parent / "mixed.jsonl"
    lines = [json.dumps(d) for d in good + bad] + ['{"clip_id": "bad-line", "video": "x.mp4"}']  # no task
    manifest.write_text("\n".join(lines) + "\n")

    summary = run_preprocess(_cfg(manifest, tmp_path / "out", tiny_clip, rows_per_shard=4), log=lambda *_: None)
    assert summary.written == len(good)
    vdir = resolve_shard_dir(tmp_path / "out")
    q = pq.read_table([vdir / e["file"] for e in ShardManifest(vdir).quarantine][0]).to_pylist()
    man = ShardManifest(vdir)
    q = [r for e in man.quarantine for r in pq.read_table(vdir / e["file"]).to_pylist()]
    reasons = {r["clip_id"]: (r["stage"], r["reason"]) for r in q}
    assert reasons == {
        "bad-truncated": ("decode", "bad_video"),
        "bad-empty": ("decode", "empty_file"),
        "bad-notvideo": ("decode", "bad_video"),
        "bad-mute": ("decode", "no_audio_track"),
        "bad-transcript": ("phonemes", "bad_transcript"),
        "bad-line": ("manifest", "bad_manifest"),
    }
    assert all(r["message"] and "\n" not in r["message"] for r in q)
    assert sum(summary.quarantined.values()) == 6 and summary.quarantined["bad_video"] == 2
    ds = ShardSet(tmp_path / "out")
    assert sorted(ds[i].meta["clip_id"] for i in range(len(ds))) == sorted(d["clip_id"] for d in good)
    # a rerun does not retry quarantined rows nor rewrite anything
    again = run_preprocess(_cfg(manifest, tmp_path / "out", tiny_clip), log=lambda *_: None)
    assert again.written == 0 and not again.quarantined and again.skipped == len(good) + len(bad) + 1


def test_two_node_cluster_does_work_on_both_nodes(corpus, tiny_clip, tmp_path):
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the module's local Ray (if any): this test owns its own cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2
        cfg = _cfg(corpus, tmp_path / "out", tiny_clip, ray_address=cluster.address, actors=2, clips_per_task=1)
        summary = run_preprocess(cfg, log=lambda *_: None)
        assert summary.written == N_CLIPS
        rows = [ShardSet(tmp_path / "out")[i].meta for i in range(N_CLIPS)]
        decode_nodes = {m["decode_node"] for m in rows}
        encode_nodes = {m["encode_node"] for m in rows}
        assert decode_nodes | encode_nodes == nodes, (decode_nodes, encode_nodes)
        assert decode_nodes == nodes  # decode tasks are spread over both nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_mlflow_hook_logs_counts_timings_and_config(tmp_path):
    """The optional --mlflow-uri hook: one run with the summary counts, the timings and the config."""
    from collections import Counter

    mlflow = pytest.importorskip("mlflow")
    from pipelines.preprocess import Summary, log_to_mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = Summary(rows_in=5, skipped=1, written=3, quarantined=Counter(bad_video=1), shards=2, seconds=2.0)
    summary.out_dir = str(tmp_path / "out" / "v1-abc")
    config = {"extract": ExtractConfig().to_dict(), "extractors": {}}
    log_to_mlflow(_cfg("m.jsonl", tmp_path / "out", "mobilenetv2", mlflow_uri=uri), summary, config)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("vssflow-preprocess")
    (run,) = client.search_runs([exp.experiment_id])
    m = run.data.metrics
    assert (m["rows_in"], m["rows_written"], m["rows_quarantined"], m["quarantined.bad_video"]) == (5, 3, 1, 1)
    assert m["clips_per_s"] == pytest.approx(1.5) and run.data.params["extract.encoder"] == "mobilenetv2"


def test_a_shard_repeating_listed_clips_is_rewritten_without_them(tmp_path):
    """A retried write task with other neighbours must not duplicate rows: the driver drops the repeats."""
    from pipelines.preprocess import _dedupe
    from vssflow.data import schema as S
    from vssflow.data.shards import write_table_atomic
    from vssflow.types import ClipFeatures

    def clip(cid):
        sem, mel = np.zeros((20, 4), np.float32), np.zeros((200, 64), np.float32)
        return ClipFeatures(2.0, "v2s", sem=sem, mel=mel, meta={"clip_id": cid})

    table = S.rows_to_table([S.features_to_row(clip(c)) for c in ("a", "b")], S.build_schema(sem_dim=4))
    e = {**write_table_atomic(table, tmp_path / "v2s-2s-x.parquet"), "clip_ids": ["a", "b"]}
    kept = _dedupe(e, {"a"}, tmp_path)
    assert kept["clip_ids"] == ["b"] and kept["rows"] == 1
    assert pq.read_table(tmp_path / "v2s-2s-x.parquet").column("clip_id").to_pylist() == ["b"]
    assert _dedupe(kept, {"b"}, tmp_path) is None and not (tmp_path / "v2s-2s-x.parquet").exists()
