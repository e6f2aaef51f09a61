"""`vssflow dub-batch` (pipelines/dub_batch.py) on real Ray Data (actor pool), with a tiny untrained model: a
manifest of two good videos with their subtitles (the 35 s two-speaker video of test_dub with a speakers file, and
4 s of it with a reference voice) among bad rows of every kind. The good ones are dubbed (muxed video as long as the
input, timing report with each cue's voice), each bad one is quarantined with its stage, reason and one line and the
job goes on; a rerun skips what is finished; a row whose report was lost (killed before its last write) is dubbed
again, to the same result."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest_media import VCODEC_ARGS, dub_video

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None,
                                reason="needs ffmpeg and espeak-ng")  # fmt: skip


def _duration(path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", "-show_streams", str(path)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return {s["codec_type"]: float(s["duration"]) for s in json.loads(out)["streams"]}["audio"]


@pytest.fixture(scope="module")
def setup(local_ray, tmp_path_factory):
    from conftest_data import make_tiny_serving_model

    root = tmp_path_factory.mktemp("dubbatch")
    data = root / "data"
    video = dub_video(data / "film")
    short = data / "short.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-t", "4", "-i", str(video["video"]), "-an",
                    *VCODEC_ARGS["h264"], str(short)], check=True)  # fmt: skip
    (data / "short.srt").write_text("1\n00:00:00,400 --> 00:00:01,600\nthe red ball\n\n"
                                    "2\n00:00:02,000 --> 00:00:03,400\n[ALICE] open the door\n")  # fmt: skip
    (data / "backwards.srt").write_text("1\n00:00:02,000 --> 00:00:01,000\nbackwards\n")
    (data / "junk.mp4").write_bytes(b"not a video" * 100)
    (root / "outside.srt").write_text((data / "short.srt").read_text())
    speakers = data / "speakers.yaml"
    speakers.write_text("".join(f"{n}: {p.relative_to(data)}\n" for n, p in video["refs"].items()))
    ref = video["refs"]["BOB"].relative_to(data)
    rows = [
        {"id": "film", "video": "film/dub.mp4", "subtitles": "film/dub.srt", "voices": "speakers.yaml"},
        {"id": "short", "video": "short.mp4", "subtitles": "short.srt", "reference_voice": str(ref)},
        {"id": "backwards", "video": "short.mp4", "subtitles": "backwards.srt"},
        {"id": "junk", "video": "junk.mp4", "subtitles": "short.srt"},
        {"id": "missing", "video": "nowhere.mp4", "subtitles": "short.srt"},
        {"id": "escape", "video": "short.mp4", "subtitles": "../outside.srt"},
        {"id": "film", "video": "short.mp4", "subtitles": "short.srt"},
        {"id": "typo", "video": "short.mp4", "subtitle": "short.srt"},
    ]
    manifest = data / "dubs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]) + "{not json\n" +
                        "".join(json.dumps(r) + "\n" for r in rows[4:]))  # fmt: skip
    model = make_tiny_serving_model(root / "model")
    yield {"root": root, "manifest": manifest, "model": model, "video": video, "short": short}


def test_manifest_dubbed_bad_rows_quarantined_rerun_skips_and_resumes(setup, tmp_path):
    from pipelines.dub_batch import DubBatchConfig, outputs, run_dub_batch

    out = tmp_path / "out"
    config = DubBatchConfig(manifest=str(setup["manifest"]), model=str(setup["model"]), out=str(out), steps=2,
                            seed=3, stems=True)  # fmt: skip
    s1 = run_dub_batch(config)
    assert (s1["rows"], s1["dubbed"], s1["skipped"], s1["quarantined"]) == (9, 2, 0, 7), s1
    quarantine = {q["clip_id"]: q for q in map(json.loads, (out / "_quarantine.jsonl").read_text().splitlines())}
    got = {k: (q["stage"], q["reason"]) for k, q in quarantine.items()}
    assert got == {"backwards": ("inputs", "bad_subtitles"), "junk": ("inputs", "bad_video"),
                   "line:5": ("manifest", "bad_manifest"), "missing": ("manifest", "missing_file"),
                   "escape": ("manifest", "path_escape"), "film#line:8": ("manifest", "bad_manifest"),
                   "typo": ("manifest", "bad_manifest")}, got  # fmt: skip
    assert "cue 1 (line 2): ends" in quarantine["backwards"]["message"]
    assert "id 'film' is used twice" in quarantine["film#line:8"]["message"]
    assert "unknown column(s) ['subtitle']" in quarantine["typo"]["message"]
    assert all("\n" not in q["message"] for q in quarantine.values())

    film, short = outputs(out, "film", stems=True), outputs(out, "short", stems=True)
    assert all(p.is_file() for p in (*film.values(), *short.values()))
    assert abs(_duration(film["video"]) - setup["video"]["duration"]) <= 0.05  # as long as the video
    reports = {k: json.loads(p["report"].read_text()) for k, p in (("film", film), ("short", short))}
    assert [c["voice"] for c in reports["film"]["cues"]] == [f"speaker {w}" for _, _, w, _ in setup["video"]["cues"]]
    assert [c["voice"] for c in reports["short"]["cues"]] == ["reference voice"] * 2  # ALICE: no speakers file
    assert reports["film"]["sampling"]["seed"] != reports["short"]["sampling"]["seed"]  # per video, from its id

    # a rerun: the finished rows are skipped (untouched), the bad ones tried and quarantined again
    kept = {p: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith("_")}
    s2 = run_dub_batch(config)
    assert (s2["dubbed"], s2["skipped"], s2["quarantined"]) == (0, 2, 7), s2
    assert {p: p.stat().st_mtime_ns for p in kept} == kept

    # killed before its last write: the report of a row is missing, so that row (only) is dubbed again, the same
    short["report"].unlink()
    s3 = run_dub_batch(config)
    assert (s3["dubbed"], s3["skipped"]) == (1, 1), s3
    again = json.loads(short["report"].read_text())
    assert [c["measured"] for c in again["cues"]] == [c["measured"] for c in reports["short"]["cues"]]
    assert film["report"].stat().st_mtime_ns == kept[film["report"]]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_cli_refuses_a_missing_manifest_in_one_line(setup, tmp_path):
    import sys

    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "dub-batch", str(tmp_path / "none.jsonl"), "--model",
                        str(setup["model"]), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip().endswith("none.jsonl: manifest not found; check the path"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
