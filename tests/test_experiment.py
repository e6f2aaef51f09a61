"""`vssflow experiment` (pipelines/experiment.py): seeds, t-intervals and paired verdicts, and the runner end to end
(train + evaluate per variant and seed, one MLflow store). The full tiny CFG experiment is marked slow; the smoke
variant runs one experiment on one variant pair with 2 seeds and 2 training steps."""

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

ray = pytest.importorskip("ray")
pytest.importorskip("mlflow")

from pipelines.experiment import ExperimentConfig, compare, run_experiment, seed_stats  # noqa: E402
from pipelines.mlflow_utils import run_metrics  # noqa: E402

TINY = {"depth": 1, "width": 32, "heads": 2, "cross_dim": 32, "lip_dim": 8, "phoneme_dim": 8, "time_freq_dim": 32,
        "latent_dim": 32}  # fmt: skip


def test_confidence_intervals_and_verdicts():
    from vssflow.metrics.suite import mean_ci

    m = seed_stats([1.0, 2.0, 3.0])
    assert m["mean"] == 2.0 and m["ci95"] == pytest.approx(4.303 * 1.0 / 3**0.5, rel=1e-3)
    # the one interval of reports and experiments is Student's t at every n (t(11) = 2.201, not z = 1.96)
    twelve = [float(i % 4) for i in range(12)]
    assert mean_ci(twelve) == pytest.approx((1.5, 2.201 * np.std(twelve, ddof=1) / 12**0.5, 12), rel=1e-3)
    assert mean_ci([2.0, float("nan"), None])[1:] == (pytest.approx(float("nan"), nan_ok=True), 1)
    assert compare([0.1, 0.12, 0.11], [0.5, 0.52, 0.49], higher_is_better=False)["verdict"] == "better"
    assert compare([0.5, 0.52, 0.49], [0.1, 0.12, 0.11], higher_is_better=False)["verdict"] == "worse"
    assert compare([0.1, 0.5, 0.3], [0.3, 0.1, 0.5], higher_is_better=False)["verdict"] == "no difference"


def test_phoneme_layout_experiment_compares_each_layout_with_the_papers():
    from pipelines.experiment import summarise, variants

    assert [(v.name, v.model) for v in variants("phoneme-layout")] == [
        ("layout-clip", {"phoneme_layout": "clip"}), ("layout-span", {"phoneme_layout": "span"}),
        ("layout-duration", {"phoneme_layout": "duration"}),
    ]  # fmt: skip
    wer = {"layout-clip": [1.0, 1.1, 0.9], "layout-span": [0.98, 1.12, 0.91], "layout-duration": [0.5, 0.6, 0.4]}
    results = {v: {s: {"eval": {"model": {"tts": {"wer": w[s], "mcd": 40.0 + s, "spk_sim": 0.5}}}} for s in range(3)}
               for v, w in wer.items()}  # fmt: skip
    comps = summarise("phoneme-layout", results, [None])["comparisons"]
    assert comps["tts/wer: duration vs clip"]["verdict"] == "better"
    assert comps["tts/wer: span vs clip"]["verdict"] == "no difference"


def test_a_whisper_repetition_loop_on_one_clip_moves_the_mean_wer_but_not_the_median():
    """Joint vs separate with the joint model's mean WER blown up by one hallucinated clip in two seeds (as measured
    at the 'speaks' scale): the mean difference is +0.74 (joint worse), the medians' -0.23 (joint better); at three
    seeds neither interval excludes 0."""
    from pipelines.experiment import better_when_higher, summarise

    assert better_when_higher("wer_median") is False and better_when_higher("onset_f1") is True
    tts = {"joint": ([0.35, 1.59, 1.70], [0.18, 0.27, 0.18]), "tts": ([0.46, 0.33, 0.63], [0.45, 0.27, 0.60])}
    results = {v: {s: {"eval": {"model": {"tts": {"wer": m[s], "wer_median": med[s], "mcd": 27.0, "spk_sim": 0.66}}}}
                   for s in range(3)} for v, (m, med) in tts.items()}  # fmt: skip
    comps = summarise("joint-vs-separate", results, [None])["comparisons"]
    mean, median = comps["tts/wer: joint vs tts-only"], comps["tts/wer_median: joint vs tts-only"]
    assert mean["mean"] == pytest.approx(0.74, abs=0.01) and median["mean"] == pytest.approx(-0.23, abs=0.01)
    assert mean["verdict"] == median["verdict"] == "no difference"


def _toy_shards(root: Path) -> Path:
    from conftest_data import make_toy_shards

    return make_toy_shards(root / "shards", n_v2s=6, n_tts=6, n_val=2)  # 2 val clips per task: FD needs 2


def _check_experiment(rep: dict, root: Path, n_variants: int, seeds: int) -> None:
    assert (
        (root / "experiment.md").is_file() and (root / "experiment.json").is_file() and (root / "curves.png").is_file()
    )
    assert len(rep["results"]) == n_variants and all(len(v) == seeds for v in rep["results"].values())
    claim = rep["summary"]["claim"]
    assert claim["verdict"] and claim["verdict"] in (root / "experiment.md").read_text()
    from pipelines.experiment import better_when_higher

    for key, comp in rep["summary"]["comparisons"].items():  # each verdict follows from its own interval
        metric = key.split("/", 1)[1].split(":", 1)[0]
        if not math.isfinite(comp["ci95"]):
            expected = "undetermined"
        elif abs(comp["mean"]) <= comp["ci95"]:
            expected = "no difference"
        else:
            expected = "better" if (comp["mean"] > 0) == better_when_higher(metric) else "worse"
        assert comp["verdict"] == expected, (key, comp)
    # every training run and every evaluation is in the experiment's MLflow store
    for seeds_ in rep["results"].values():
        for e in seeds_.values():
            losses = run_metrics(e["train"]["run_id"], tracking_uri=rep["tracking_uri"])
            assert any(k.startswith("loss") for k in losses)


def test_experiment_smoke(local_ray, tmp_path, monkeypatch):
    """joint-vs-separate restricted to V2S evaluation, 2 seeds, 2 training steps: the whole runner, quickly. Without
    --mlflow-uri or $MLFLOW_TRACKING_URI it logs to ./runs/mlflow.db, the store of train and evaluate (issue 14)."""
    from mlflow.tracking import MlflowClient

    from pipelines.mlflow_utils import store_uri

    data = _toy_shards(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    cfg = ExperimentConfig(name="joint-vs-separate", data=str(data), out=str(tmp_path / "exp"), scale="tiny", seeds=2,
                           only=("v2s", "joint"), eval_tasks=("v2s",), scale_overrides={
                               "max_steps": 2, "eval_steps": 1, "model_overrides": TINY | {"sem_dim": 32}})  # fmt: skip
    rep = run_experiment(cfg)
    _check_experiment(rep, tmp_path / "exp", 2, 2)
    # the one local store (no store of its own in the experiment directory); each evaluation a child of its training
    assert rep["tracking_uri"] == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}" == store_uri()
    assert not (tmp_path / "exp" / "mlflow").exists()
    client = MlflowClient(rep["tracking_uri"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "experiment-joint-vs-separate"]
    runs = client.search_runs([experiment.experiment_id])
    trained = {e["train"]["run_id"] for seeds in rep["results"].values() for e in seeds.values()}
    assert {r.info.run_id for r in runs if r.data.tags.get("kind") != "evaluation"} == trained and len(trained) == 4
    evals = [r for r in runs if r.data.tags.get("kind") == "evaluation"]
    assert len(evals) == 4 and {r.data.tags.get("mlflow.parentRunId") for r in evals} == trained
    fd = rep["summary"]["comparisons"]["v2s/fd: joint vs v2s-only"]
    # the comparison recomputed from the per-seed results: paired differences, a t interval with 1 degree of freedom
    joint, alone = ([rep["results"][v][s]["eval"]["model"]["v2s"]["fd"] for s in sorted(rep["results"][v])]
                    for v in ("joint", "v2s"))  # fmt: skip
    d = np.subtract(joint, alone)
    half = scipy.stats.t.ppf(0.975, df=1) * d.std(ddof=1) / np.sqrt(2)
    assert fd["n"] == 2 and fd["mean"] == pytest.approx(d.mean()) and fd["ci95"] == pytest.approx(half, rel=1e-3)
    expected = "no difference" if abs(d.mean()) <= half else "better" if d.mean() < 0 else "worse"  # lower FD is better
    assert fd["verdict"] == expected
    assert not any(k.startswith("tts/") for k in rep["summary"]["comparisons"])  # TTS was not evaluated
    assert rep["summary"]["table"]["joint"]["model"]["v2s"]["fd"]["n"] == 2


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_experiment_cfg_tiny_end_to_end(local_ray, tmp_path):
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
