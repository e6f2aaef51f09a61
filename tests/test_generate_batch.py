"""`vssflow generate-batch` on real Ray Data (actor pool): a synth manifest with one broken clip, resume after
deleting an output, and Parquet shard input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from conftest_media import synth_corpus

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


@pytest.fixture(scope="module")
def setup(local_ray, tmp_path_factory):
    from conftest_data import make_tiny_serving_model

    root = tmp_path_factory.mktemp("batch")
    corpus = root / "corpus"
    synth_corpus(corpus, clips=3, seed=4, mix="0.34,0.33,0.33")
    (corpus / "clips" / "broken.mp4").write_bytes(b"not a video" * 100)
    lines = (corpus / "manifest.jsonl").read_text().splitlines()
    lines.append(json.dumps({"clip_id": "broken", "video": "clips/broken.mp4", "task": "v2s", "split": "test"}))
    (corpus / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    model = make_tiny_serving_model(root / "model")
    yield {"root": root, "manifest": corpus / "manifest.jsonl", "model": model,
           "rows": [json.loads(x) for x in lines]}  # fmt: skip


def test_manifest_run_then_resume(setup, tmp_path):
    from pipelines.generate_batch import BatchConfig, output_path, run_generate_batch

    out = tmp_path / "out"
    config = BatchConfig(source=str(setup["manifest"]), model=str(setup["model"]), out=str(out), steps=2, seed=3,
                         batch_size=2, mp4=True)  # fmt: skip
    s1 = run_generate_batch(config)
    assert (s1["clips"], s1["generated"], s1["failed"], s1["skipped"]) == (4, 3, 1, 0), s1
    failed = [json.loads(x) for x in (out / "_failed.jsonl").read_text().splitlines()]
    assert [f["clip_id"] for f in failed] == ["broken"] and "broken.mp4" in failed[0]["error"]
    good = [r for r in setup["rows"] if r["clip_id"] != "broken"]
    for r in good:
        wav, sr = sf.read(output_path(out, r["clip_id"]), dtype="float32")
        assert sr == 16000 and len(wav) == round((r["end"] - r.get("start", 0.0)) * 16000) and wav.std() > 0
    # rows cut with start/end get no mp4 (no video to copy); the synth rows end at the video's end
    assert sorted(p.suffix for p in out.iterdir() if not p.name.startswith("_")) == [".mp4"] * 3 + [".wav"] * 3

    # resume: one output lost; only that clip is generated again, to the same audio; the others are untouched
    victim = output_path(out, good[1]["clip_id"])
    before = victim.read_bytes()
    victim.unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    s2 = run_generate_batch(config)
    assert (s2["generated"], s2["skipped"], s2["failed"]) == (1, 2, 1), s2
    assert victim.read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_parquet_features_input(setup, tmp_path):
    import pyarrow.parquet as pq
    from conftest_data import random_features

    from pipelines.generate_batch import BatchConfig, output_path, run_generate_batch
    from vssflow.data.schema import build_schema, features_to_row, rows_to_table

    rows = []
    for i, task in enumerate(["v2s", "tts"]):
        f = random_features(32, 1.2 + i * 0.4, task, seed=i)
        f.mel = np.zeros((round(f.duration_s * 100), 64), np.float32)
        f.meta = {"clip_id": f"feat-{i}", "split": "test"}
        rows.append(features_to_row(f))
    path = tmp_path / "shard.parquet"
    pq.write_table(rows_to_table(rows, build_schema(sem_dim=32)), path)
    out = tmp_path / "out"
    s = run_generate_batch(BatchConfig(source=str(path), model=str(setup["model"]), out=str(out), steps=2))
    assert (s["generated"], s["failed"]) == (2, 0), s
    for i in range(2):
        wav, _ = sf.read(output_path(out, f"feat-{i}"), dtype="float32")
        assert len(wav) == round((1.2 + i * 0.4) * 16000)


def test_speech_span_column_reaches_the_model(setup, tmp_path, monkeypatch):
    """A manifest's speech_span column ("START,END" text or a [start, end] list, seconds from the row's start) is the
    span the generator's collate() puts into the condition batch (a spy that wraps the real collate); a row without
    one gets the mouth activity of its clip; a malformed one fails its row only, with the reason."""
    import vssflow.generator
    from pipelines.generate_batch import BatchConfig, GenerateActor, load_jobs

    row = next(r for r in setup["rows"] if r["task"] in ("tts", "joint"))
    truth = (row["phonemes"][0][1], row["phonemes"][-1][2])
    cells = {"span": ("", "", '"0.3,1.2"'), "list": ("", "", '"[0.4, 1.0]"'), "cut": ("0.2", "1.9", '"0.1,1.0"'),
             "bad": ("", "", '"1.0,0.2"'), "mouth": ("", "", "")}  # fmt: skip
    lines = ["clip_id,video,task,transcript,start,end,speech_span"]
    lines += [f'{name},{row["video"]},{row["task"]},"{row["transcript"]}",{s},{e},{span}'
              for name, (s, e, span) in cells.items()]  # fmt: skip
    manifest = setup["manifest"].with_name("spans.csv")
    manifest.write_text("\n".join(lines) + "\n")
    jobs = load_jobs(manifest)
    assert [j["speech_span"] for j in jobs] == ["0.3,1.2", "0.4,1.0", "0.1,1.0", "1.0,0.2", ""]

    seen = []
    real = vssflow.generator.collate

    def spy(clips, cfg, **kw):
        batch = real(clips, cfg, **kw)
        seen.append((tuple(c.meta["clip_id"] for c in clips), batch.speech_span.numpy().copy()))
        return batch

    monkeypatch.setattr(vssflow.generator, "collate", spy)
    actor = GenerateActor(BatchConfig(source=str(manifest), model=str(setup["model"]), out=str(tmp_path), steps=2))
    res = actor({k: np.array([j[k] for j in jobs]) for k in jobs[0]})
    status = dict(zip(res["clip_id"], res["status"], strict=True))
    assert status == {"span": "ok", "list": "ok", "cut": "ok", "bad": "failed", "mouth": "ok"}, res["error"]
    error = res["error"][list(res["clip_id"]).index("bad")]
    assert error.startswith("bad: speech_span: ") and "START < END" in error and "\n" not in error
    assert len(seen) == 1  # one task, one batch
    spans = dict(zip(seen[0][0], seen[0][1] / 25.0, strict=True))  # latent frames -> seconds
    np.testing.assert_allclose(spans["span"], [0.3, 1.2], atol=1e-4)
    np.testing.assert_allclose(spans["list"], [0.4, 1.0], atol=1e-4)
    np.testing.assert_allclose(spans["cut"], [0.1, 1.0], atol=1e-4)  # from the row's start (0.2 s in the video)
    assert abs(spans["mouth"][0] - truth[0]) <= 0.15 and abs(spans["mouth"][1] - truth[1]) <= 0.15, spans["mouth"]
