"""pipelines/evaluate_report.py: report.md and report.json of an evaluation, and its MLflow run.

The report is built the way ``vssflow evaluate`` builds it (MetricSuite.aggregate over per-clip metrics,
speech_breakdown over the clip entries); the end-to-end report of a real evaluation is checked in test_evaluate.py.
"""

import json

import numpy as np
import pytest

from pipelines.evaluate_config import EVAL_EXPERIMENT, EvalConfig
from pipelines.evaluate_report import PRIMARY, log_to_mlflow, render_markdown, write_report
from vssflow.metrics.held_out import speech_breakdown
from vssflow.metrics.suite import MetricSuite


def _report() -> dict:
    clips = [
        {"clip_id": "a", "task": "tts", "transcript": "the red ball bounces", "held_out_voice": False, "wer": 0.5,
         "level_db_diff": -3.0, "clip_fraction": 0.0, "gt_vocoded": {"wer": 0.25}, "gt_raw": {"wer": 0.0}},
        {"clip_id": "b", "task": "tts", "transcript": "open the blue door", "held_out_voice": True, "wer": 1.0,
         "level_db_diff": -1.0, "clip_fraction": 0.002, "gt_vocoded": {"wer": 0.5}, "gt_raw": {"wer": 0.25}},
    ]  # fmt: skip
    per_clip = [{k: c[k] for k in ("wer", "level_db_diff", "clip_fraction")} for c in clips]
    return {
        "config": {"data": "shards/", "steps": 2, "cfg": 1.5, "seed": 0, "speech_span": "mouth"},
        "model": {"dir": "models/m", "step": np.int64(40), "info": {}},
        "measured_with": {
            "asr": "whisper-base-ct2",
            "fd_embedding": "FD-WhisperBase",
            "kl_posteriors": "probs",
            "speaker": "resemblyzer",
            "lipsync": "LSE-C/LSE-D substitute",
            "classifier": "knn",
            "ground_truth_audio": "source audio",
            "gt_vocoded": "Generator.reconstruct",
        },
        "metrics": {"tts": MetricSuite.aggregate(per_clip)},
        "metrics_gt_vocoded": {"tts": MetricSuite.aggregate([c["gt_vocoded"] for c in clips])},
        "metrics_gt_raw": {"tts": MetricSuite.aggregate([c["gt_raw"] for c in clips])},
        "speech": speech_breakdown(clips, {"the red ball bounces"}),
        "clips": clips,
        "validation": {
            "clips": ["a", "b"],
            "failed": ["wer/wrong_words"],
            "table": {"wer": {"wrong_words": {"gt": 0.0, "broken": 0.9, "separates": False, "expected": True}}},
        },
        "plots": ["plots/spec_a.png"],
        "mlflow": {"tracking_uri": "sqlite:///x.db", "run_id": "r1"},
        "seconds": 12.0,
        "embedding": np.arange(3, dtype=np.float32),  # numpy values reach the JSON as plain numbers
    }


def test_the_markdown_report_has_the_three_columns_seen_sentences_and_the_validation_verdict():
    md = render_markdown(_report())
    assert "phonemes over the speech span of: mouth." in md and "`models/m` (step 40)" in md
    # one row per reported metric, in PRIMARY's order: generated | GT through codec + vocoder | raw GT
    rows = [line for line in md.split("### tts")[1].split("##")[0].splitlines() if line.startswith("| ")][1:]
    reported = [k for k in PRIMARY["tts"] if k in ("wer", "level_db_diff", "clip_fraction")]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == reported
    wer = rows[0].split(" | ")
    assert wer[1] == "lower" and wer[2].startswith("0.750 ± ") and wer[2].endswith("(n=2)")
    assert wer[3].startswith("0.375 ± ") and wer[4].startswith("0.125 ± ")
    assert ", median -2.000 (n=2)" in rows[1] and rows[1].endswith("| – | – |")  # only the generated audio has it
    # seen vs unseen sentences and voices: the seen sentence's WER 0.5, the unseen one's 1.0
    speech = md.split("## Speech: seen vs unseen")[1].split("##")[0]
    assert "| tts | 2 | 1 (50%) | seen sentences | 1 | 0.500 (n=1) | 0.250 (n=1) | 0.000 (n=1) |" in speech
    assert "| | | | unseen sentences | 1 | 1.000 (n=1) |" in speech and "held_out voices" in speech
    # columns: silence, shift200, wrong_speaker, wrong_words (bold: designed to catch it), wrong_sound
    assert "| wer | 0.000 | – | – | – | **0.900 ✗** | – |" in md
    assert "Validation verdict: FAILED: wer/wrong_words." in md
    assert "![spec_a](plots/spec_a.png)" in md and "run `r1`. Time: 12 s." in md


def test_write_report_writes_the_json_and_the_markdown_of_the_same_report(tmp_path):
    report = _report()
    write_report(report, tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["model"]["step"] == 40 and saved["embedding"] == [0.0, 1.0, 2.0]
    assert saved["metrics"]["tts"]["wer"]["mean"] == pytest.approx(0.75)
    assert (tmp_path / "report.md").read_text() == render_markdown(report)


def test_an_evaluation_run_whose_logging_fails_ends_failed_not_running(tmp_path):
    """A real SQLite store; the report directory cannot be created (its parent is a file): the run the failed
    evaluation created is FAILED, not left RUNNING."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "file").write_text("not a directory")
    report = {"config": {"steps": 2}, "measured_with": {}, "model": {"step": 3},
              "metrics": {"v2s": {"onset_f1": {"mean": 0.5, "median": 0.5}}}}  # fmt: skip
    cfg = EvalConfig(model="m", data="d", out=str(tmp_path / "file" / "report"), run_name="fails")
    with pytest.raises(OSError):
        log_to_mlflow(report, tmp_path / "file" / "report", cfg, uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.experiment or EVAL_EXPERIMENT)  # no training run in this store
    runs = client.search_runs([experiment.experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("fails", "FAILED")]
