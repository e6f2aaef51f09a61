"""`vssflow evaluate` end to end (Ray Data actor, real corpus clips, real MLflow store) and the experiment runner.

The evaluated model is untrained (random weights): the test checks the pipeline's outputs and that the metrics put
the ground truth clearly ahead of this model. The full tiny experiment (train + evaluate, 2 seeds) is marked slow;
its smoke variant runs one experiment on one variant pair with 2 seeds and 2 training steps.
"""

import json
from pathlib import Path

import pytest
from conftest_media import synth_corpus

ray = pytest.importorskip("ray")
pytest.importorskip("mlflow")

from pipelines.evaluate import EvalConfig, evaluate  # noqa: E402
from pipelines.experiment import ExperimentConfig, compare, mean_ci, run_experiment  # noqa: E402
from pipelines.mlflow_utils import run_artifacts, run_metrics  # noqa: E402
from vssflow.generator import Generator  # noqa: E402
from vssflow.model import ModelConfig  # noqa: E402

TINY = {"depth": 1, "width": 32, "heads": 2, "cross_dim": 32, "lip_dim": 8, "phoneme_dim": 8, "time_freq_dim": 32}


@pytest.fixture(scope="module")
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return synth_corpus(out, clips=4, seed=5, mix="0.5,0.5,0", extra=("--real-speech", "0"), timeout=None)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "m"
    Generator(ModelConfig(**TINY, sem_dim=1280)).save_pretrained(d)
    return d


def test_evaluate_manifest_end_to_end(cluster, corpus, model, tmp_path):
    out = tmp_path / "report"
    cfg = EvalConfig(model=str(model), data=str(corpus), out=str(out), tasks=("v2s", "tts"), max_clips=1, steps=2,
                     validate=1, split=None)  # fmt: skip
    report = evaluate(cfg)
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
    # MLflow: one finished run with the aggregates and the report
    mf = report["mlflow"]
    metrics = run_metrics(mf["run_id"], tracking_uri=mf["tracking_uri"])
    assert "tts/wer" in metrics and "v2s/onset_f1" in metrics and "validation/failed" in metrics
    arts = run_artifacts(mf["run_id"], tracking_uri=mf["tracking_uri"])
    assert "report/report.md" in arts and any(a.startswith("plots/") for a in arts)


def test_confidence_intervals_and_verdicts():
    m = mean_ci([1.0, 2.0, 3.0])
    assert m["mean"] == 2.0 and m["ci95"] == pytest.approx(4.303 * 1.0 / 3**0.5, rel=1e-3)
    assert compare([0.1, 0.12, 0.11], [0.5, 0.52, 0.49], higher_is_better=False)["verdict"] == "better"
    assert compare([0.5, 0.52, 0.49], [0.1, 0.12, 0.11], higher_is_better=False)["verdict"] == "worse"
    assert compare([0.1, 0.5, 0.3], [0.3, 0.1, 0.5], higher_is_better=False)["verdict"] == "no difference"


def _toy_shards(root: Path) -> Path:
    from bench.bench_train import make_toy_shards

    return make_toy_shards(root / "shards", n_v2s=6, n_tts=6, n_val=2)  # 2 val clips per task: FD needs 2


def _check_experiment(rep: dict, root: Path, n_variants: int, seeds: int) -> None:
    assert (
        (root / "experiment.md").is_file() and (root / "experiment.json").is_file() and (root / "curves.png").is_file()
    )
    assert len(rep["results"]) == n_variants and all(len(v) == seeds for v in rep["results"].values())
    claim = rep["summary"]["claim"]
    assert claim["verdict"] and claim["verdict"] in (root / "experiment.md").read_text()
    for comp in rep["summary"]["comparisons"].values():
        assert comp["verdict"] in ("better", "worse", "no difference", "undetermined")
    # every training run and every evaluation is in the experiment's MLflow store
    for seeds_ in rep["results"].values():
        for e in seeds_.values():
            losses = run_metrics(e["train"]["run_id"], tracking_uri=rep["tracking_uri"])
            assert any(k.startswith("loss") for k in losses)


def test_experiment_smoke(cluster, tmp_path):
    """joint-vs-separate restricted to V2S evaluation, 2 seeds, 2 training steps: the whole runner, quickly."""
    data = _toy_shards(tmp_path)
    cfg = ExperimentConfig(name="joint-vs-separate", data=str(data), out=str(tmp_path / "exp"), scale="tiny", seeds=2,
                           only=("v2s", "joint"), eval_tasks=("v2s",), scale_overrides={
                               "max_steps": 2, "eval_steps": 1, "model_overrides": TINY | {"sem_dim": 32}})  # fmt: skip
    rep = run_experiment(cfg)
    _check_experiment(rep, tmp_path / "exp", 2, 2)
    fd = rep["summary"]["comparisons"]["v2s/fd: joint vs v2s-only"]
    assert fd["n"] == 2 and fd["verdict"] in ("better", "worse", "no difference")
    assert not any(k.startswith("tts/") for k in rep["summary"]["comparisons"])  # TTS was not evaluated
    assert rep["summary"]["table"]["joint"]["3"]["v2s"]["fd"]["n"] == 2


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_experiment_cfg_tiny_end_to_end(cluster, tmp_path):
    """The CFG experiment at the tiny scale: the joint and the V2S-only model, 2 seeds, guidance 1 and 4."""
    data = _toy_shards(tmp_path)
    cfg = ExperimentConfig(name="cfg", data=str(data), out=str(tmp_path / "exp"), scale="tiny", seeds=2,
                           only=("v2s", "joint"), eval_tasks=("v2s",),
                           scale_overrides={"model_overrides": TINY | {"sem_dim": 32}})  # fmt: skip
    rep = run_experiment(cfg)
    _check_experiment(rep, tmp_path / "exp", 2, 2)
    table = rep["summary"]["table"]
    assert set(table["joint"]) == {"1", "4"} and table["joint"]["4"]["v2s"]["fd"]["n"] == 2
    spread = rep["summary"]["comparisons"]["v2s/fd spread over cfg: joint vs v2s-only"]
    assert spread["n"] == 2 and spread["verdict"] in ("better", "worse", "no difference")
