"""`vssflow evaluate` end to end (Ray Data actor, real corpus clips, real MLflow store); the experiment runner's
tests are in test_experiment.py, the clip source's in test_evaluate_source.py, the report's and its MLflow run's in
test_evaluate_report.py.

The evaluated model is untrained (random weights): the test checks the pipeline's outputs and that the metrics put
the ground truth clearly ahead of this model.
"""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest_media import synth_corpus

ray = pytest.importorskip("ray")
pytest.importorskip("mlflow")

from pipelines.evaluate import evaluate  # noqa: E402
from pipelines.evaluate_config import EvalConfig  # noqa: E402
from pipelines.mlflow_utils import run_artifacts, run_metrics  # noqa: E402
from vssflow.audio.codec import MelCodec  # noqa: E402
from vssflow.generator import Generator  # noqa: E402
from vssflow.model import ModelConfig  # noqa: E402

TINY = {"depth": 1, "width": 32, "heads": 2, "cross_dim": 32, "lip_dim": 8, "phoneme_dim": 8, "time_freq_dim": 32,
        "latent_dim": 32}  # fmt: skip
# the evaluated model: as wide as the full 256-channel mel latent, so its (unfitted) MelCodec is lossless and the
# ground truth through codec + vocoder is the vocoder's ceiling
EVAL_MODEL = TINY | {"width": 256, "latent_dim": 256}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return synth_corpus(out, clips=4, seed=5, mix="0.5,0.5,0", extra=("--real-speech", "0"), timeout=None)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "m"
    Generator(ModelConfig(**EVAL_MODEL, sem_dim=1280), codec=MelCodec()).save_pretrained(d)
    return d


def test_evaluate_manifest_end_to_end(local_ray, corpus, model, tmp_path):
    out = tmp_path / "report"
    cfg = EvalConfig(model=str(model), data=str(corpus), out=str(out), tasks=("v2s", "tts"), max_clips=1, steps=2,
                     validate=1, split=None)  # fmt: skip
    console: list[str] = []
    report = evaluate(cfg, log=console.append)
    # a line per stage, the clips with an ETA (issue 14: evaluate was silent for minutes)
    stages = [x.removeprefix("vssflow evaluate: ").split(" ")[0] for x in console]
    assert stages == ["2", "generating", "clip", "clip", "metric", "metric", "report,", "report"], console
    assert console[2].startswith("vssflow evaluate: clip 1/2 (") and console[2].endswith("(models loaded)")
    assert console[3].startswith("vssflow evaluate: clip 2/2 (") and console[3].endswith("elapsed, ETA 0s")
    for name in ("report.json", "report.md"):
        assert (out / name).is_file()
    saved = json.loads((out / "report.json").read_text())
    assert saved["measured_with"]["asr"] == "whisper-base-ct2"
    assert saved["measured_with"]["fd_embedding"] == "FD-WhisperBase"
    md = (out / "report.md").read_text()
    assert "FD-WhisperBase" in md and "whisper-base-ct2" in md and "LSE-C/LSE-D substitute" in md
    assert "FAD-VGGish" not in md.replace("not FAD-VGGish", "")
    assert {c["task"] for c in report["clips"]} == {"v2s", "tts"}
    assert all((out / p).is_file() for p in report["plots"]) and any("spec_" in p for p in report["plots"])
    # the metric validation ran on real ground truth and every designed separation held
    val = report["validation"]
    assert val and not val["failed"], val["failed"]
    gt = val["scores"]["ground_truth"]
    # an untrained model is far from the ground truth on the metrics that matter
    tts, v2s = report["metrics"]["tts"], report["metrics"]["v2s"]
    assert tts["wer"]["mean"] >= gt["wer"] + 0.5
    assert tts["mcd"]["mean"] > gt["mcd"] + 5.0
    assert tts["lipsync_corr"]["mean"] < gt["lipsync_corr"]
    assert v2s["onset_f1"]["mean"] < gt["onset_f1"]
    _check_three_columns(report, saved, out)
    # MLflow: one finished run with the aggregates and the report
    mf = report["mlflow"]
    metrics = run_metrics(mf["run_id"], tracking_uri=mf["tracking_uri"])
    assert "tts/wer" in metrics and "v2s/onset_f1" in metrics and "validation/failed" in metrics
    arts = run_artifacts(mf["run_id"], tracking_uri=mf["tracking_uri"])
    assert "report/report.md" in arts and any(a.startswith("plots/") for a in arts)


def test_a_manifest_clip_gets_a_users_conditions_a_silent_video_longer_than_training_clips(
    local_ray, corpus, model, tmp_path
):
    """Evaluate's manifest mode prepares a clip as a user's request (vssflow.inference.prepare, issue 14): a silent
    video of 12 s, its soundtrack in a separate file, which the training extractor refuses (> 10 s), is evaluated
    as a whole, generated in windows."""
    import subprocess

    from vssflow.audio.io import read_audio, write_audio
    from vssflow.data.manifest import Event, read_manifest, write_manifest
    from vssflow.errors import ClipTooLongError
    from vssflow.features.extract import decode_clip, row_dict
    from vssflow.media.video import probe, read_audio_track

    clip = next(r for r in read_manifest(corpus) if r.task == "v2s")
    step, copies = probe(clip.video).duration, 6
    (tmp_path / "list.txt").write_text(f"file '{clip.video}'\n" * copies)
    video = tmp_path / "long.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i",
                    str(tmp_path / "list.txt"), "-an", "-c:v", "copy", str(video)], check=True)  # fmt: skip
    write_audio(tmp_path / "long.wav", np.tile(read_audio_track(clip.video), copies))
    events = tuple(Event(e.time + k * step, e.cls) for k in range(copies) for e in clip.events)
    row = replace(clip, clip_id="long-v2s", video=str(video), audio=str(tmp_path / "long.wav"), end=None,
                  split="test", events=events)  # fmt: skip
    manifest = write_manifest([row], tmp_path / "manifest.jsonl")
    long = read_manifest(manifest)[0]
    info = probe(long.video)
    assert not info.has_audio and info.duration >= 11.5, info
    with pytest.raises(ClipTooLongError):  # what evaluate's manifest mode used to go through
        decode_clip(row_dict(long))

    out = tmp_path / "report"
    cfg = EvalConfig(model=str(model), data=str(manifest), out=str(out), tasks=("v2s",), max_clips=1, steps=2,
                     validate=0, split=None)  # fmt: skip
    report = evaluate(cfg, log=lambda line: None)
    [entry] = report["clips"]
    assert entry["clip_id"] == "long-v2s" and entry["task"] == "v2s"
    for name in ("long-v2s.wav", "long-v2s.gt.wav", "long-v2s.gt_vocoded.wav"):  # the whole clip, not 10 s of it
        assert len(read_audio(out / "audio" / name)) == pytest.approx(info.duration * 16000, abs=400), name
    assert math.isfinite(entry["level_db_diff"]) and math.isfinite(entry["gt_vocoded"]["level_db_diff"])
    assert 0.0 <= entry["onset_f1"] <= 1.0 and report["metrics"]["v2s"]["onset_f1"]["n"] == 1


def _check_three_columns(report: dict, saved: dict, out: Path) -> None:
    """Generated vs ground truth through the model's codec + vocoder vs raw ground truth, loudness, seen sentences."""
    from pipelines.demo import _quality_summary

    gen, voc, raw = (saved[k] for k in ("metrics", "metrics_gt_vocoded", "metrics_gt_raw"))
    for task in ("v2s", "tts"):
        for m in (gen, voc):
            d = m[task]["level_db_diff"]
            assert math.isfinite(d["mean"]) and math.isfinite(d["median"]) and d["n"] == 1, (task, d)
            assert 0.0 <= m[task]["clip_fraction"]["mean"] <= 1.0
        assert gen[task]["level_db_diff"]["median"] != voc[task]["level_db_diff"]["median"]
        assert "level_db_diff" not in raw[task] and "clip_fraction" in raw[task]  # GT vs itself is 0: not reported
        assert (out / "audio" / f"{next(c['clip_id'] for c in saved['clips'] if c['task'] == task)}.gt_vocoded.wav"
                ).is_file()  # fmt: skip
    assert math.isfinite(voc["tts"]["wer"]["mean"]) and voc["tts"]["wer"]["mean"] != gen["tts"]["wer"]["mean"]
    assert math.isfinite(raw["tts"]["wer"]["mean"]) and "mcd" not in raw["tts"] and "mcd" in voc["tts"]
    assert "onset_f1" in voc["v2s"] and "class_acc" in voc["v2s"] and "kl" in voc["v2s"] and "kl" not in raw["v2s"]
    # the ceiling is far closer to the ground truth than an untrained model
    assert voc["tts"]["mcd"]["mean"] < gen["tts"]["mcd"]["mean"] - 5.0
    assert "Generator.reconstruct" in saved["measured_with"]["gt_vocoded"]
    # per clip: the three variants, the split, whether the sentence is a training sentence
    tts_clip = next(c for c in saved["clips"] if c["task"] == "tts")
    assert {"gt_vocoded", "gt_raw", "split", "held_out_voice", "transcript_in_train"} <= set(tts_clip)
    assert saved["config"]["speech_span"] == "data" and tts_clip["speech_span_source"] == "data"  # manifest timing
    assert isinstance(tts_clip["transcript_in_train"], bool) and "wer" in tts_clip["gt_vocoded"]
    sp = saved["speech"]["tts"]
    assert sp["sentences"] == 1 and 0.0 <= sp["fraction_seen"] <= 1.0
    assert sp["seen_in_train"] == int(tts_clip["transcript_in_train"])
    [(words, part)] = sp["by_words"].items()  # one clip: its sentence is of known words or has a new one
    assert (words == "new") == (sp["new_words"] == 1) and part["generated"]["wer"]["n"] == 1
    md = (out / "report.md").read_text()
    assert ("No training transcripts" in md) == (sp["train_sentences"] == 0)
    if tts_clip["held_out_voice"] is not None:  # the corpus marks held-out voices: WER per voice group
        group = "held_out" if tts_clip["held_out_voice"] else "training"
        assert sp["by_voice"][group]["generated"]["wer"]["mean"] == pytest.approx(tts_clip["wer"])
        assert sp["by_voice"][group]["gt_vocoded"]["wer"]["mean"] == pytest.approx(tts_clip["gt_vocoded"]["wer"])
    assert "GT through codec + vocoder" in md and "raw GT" in md and "Speech: seen vs unseen" in md
    assert "median" in md.split("### tts")[1].split("###")[0]
    metrics = run_metrics(report["mlflow"]["run_id"], tracking_uri=report["mlflow"]["tracking_uri"])
    assert "tts/gt_vocoded/wer" in metrics and "v2s/level_db_diff_median" in metrics
    lines = _quality_summary(out / "report.json")
    assert len(lines) == 2 and lines[0].startswith("TTS") and "WER" in lines[0] and "level diff" in lines[0]
    assert lines[1].startswith("V2S") and "class acc" in lines[1] and "onset F1" in lines[1]


def test_speech_span_option(corpus, tmp_path):
    """--speech-span data|mouth|clip: the span the clip's phonemes are laid over (manifest timing, mouth activity of
    the lip crops, none), recorded per clip; a bad mode fails before any work."""
    import argparse

    from pipelines.evaluate import _span_facts, add_arguments, speech_span_for
    from pipelines.evaluate_source import ClipSource
    from vssflow.errors import InputError

    cfg = EvalConfig(model="", data=str(corpus), out=str(tmp_path), tasks=("tts",), max_clips=1, split=None)
    source = ClipSource(cfg)
    feats, _ = source.load(0)
    row = source.items[0]
    truth = (row.phonemes[0].start, row.phonemes[-1].end)  # the manifest's timing: the "data" span
    data = speech_span_for(feats, "data")
    np.testing.assert_allclose(data.speech_span, truth, atol=1e-3)
    mouth = speech_span_for(feats, "mouth")
    assert mouth.meta["speech_span_source"] == "mouth" and mouth.speech_span != data.speech_span
    assert np.abs(np.subtract(mouth.speech_span, truth)).max() <= 0.15, (mouth.speech_span, truth)
    whole = speech_span_for(feats, "clip")
    assert whole.speech_span is None and _span_facts(whole) == {"speech_span": None, "speech_span_source": "clip"}
    assert _span_facts(data)["speech_span_source"] == "data"
    p = argparse.ArgumentParser()
    add_arguments(p)
    base = ["--model", "m", "--data", "d", "--out", "o"]
    assert p.parse_args(base).speech_span == "data" and p.parse_args([*base, "--speech-span", "mouth"]).speech_span
    with pytest.raises(InputError, match="--speech-span"):
        evaluate(EvalConfig(model="", data=str(corpus), out=str(tmp_path / "x"), speech_span="lips"))
    assert not (tmp_path / "x").exists()


def test_train_and_evaluate_share_the_default_store_and_the_evaluation_is_a_child_of_the_training(
    local_ray, tmp_path, monkeypatch
):
    """No --mlflow-uri and no $MLFLOW_TRACKING_URI: a real training and `vssflow evaluate --model models:/...@champion`
    both log to ./runs/mlflow.db, the evaluation as a child run of the training in its experiment (issue 14)."""
    from conftest_data import TOY_MODEL, make_toy_shards
    from mlflow.tracking import MlflowClient

    from pipelines.cli import main
    from pipelines.mlflow_utils import store_uri
    from pipelines.train import run_training
    from pipelines.train_loop import TrainJobConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    shards = str(make_toy_shards(tmp_path / "shards", n_v2s=8, n_tts=8, n_val=1))
    cfg = TrainJobConfig.from_dict(dict(data=shards, model_overrides=TOY_MODEL, workers=1, engine="ddp", max_steps=2,
                                        checkpoint_every=2, eval_every=0, warmup_steps=1))  # fmt: skip
    res = run_training(cfg, out=tmp_path / "model", run_dir=tmp_path / "train", n_val_clips=0)
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert res.tracking_uri == uri == store_uri() and res.model_uri == "models:/vssflow/1"

    argv = ["evaluate", "--model", "models:/vssflow@champion", "--data", shards, "--out", str(tmp_path / "report"),
            "--tasks", "v2s", "--max-clips", "1", "--steps", "2", "--validate", "0"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["mlflow"]["tracking_uri"] == uri
    client = MlflowClient(uri)
    train_run, eval_run = client.get_run(res.mlflow_run_id), client.get_run(report["mlflow"]["run_id"])
    assert eval_run.data.tags["mlflow.parentRunId"] == res.mlflow_run_id
    assert eval_run.info.experiment_id == train_run.info.experiment_id
    assert eval_run.info.status == "FINISHED" and "v2s/level_db_diff" in eval_run.data.metrics
    assert "plots/training_curves.png" in report["plots"]  # the training's losses, found in the same store
