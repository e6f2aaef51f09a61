"""``vssflow experiment NAME``: the paper's three claims, each a config plus this runner (train -> evaluate -> verdict).

    vssflow experiment joint-vs-separate --data SHARDS --out DIR [--scale tiny|small|speaks|paper] [--seeds 3]
                       [--manifest MANIFEST] [--mlflow-uri URI] [--ray-address auto]

Experiments (every variant trained with the same model size and the same number of steps, ``--seeds`` times):

* ``joint-vs-separate``: V2S only (mix 1:0:0), VisualTTS only (0:1:0) and joint (1:1:0.5); each task's metrics
  (joint model vs the task's separate model, paired by seed) and the training-loss curves.
* ``placement``: semantics x transcript each through cross-attention or in context (four models, joint data). The
  paper's finding: cross-attention for video, in-context for the transcript.
* ``cfg``: the joint and the separate models evaluated at guidance scales 1..6. The paper: joint training
  stabilises CFG (its metrics degrade less at large scales).
* ``phoneme-layout``: VisualTTS models with the phonemes stretched over the clip (the paper), spread over the speech
  span, or laid over it by duration (``ModelConfig.phoneme_layout``); our departure, measured against the paper's.

Every experiment but ``cfg`` evaluates each model at its own saved guidance (a data-predicting model: none; the
paper preset: 3), the results key ``"model"``. Training calls :func:`pipelines.train.run_training`, evaluation
:func:`pipelines.evaluate.evaluate`; everything is
logged to the store ``train`` and ``evaluate`` use (``--mlflow-uri``, default ``$MLFLOW_TRACKING_URI``, then
``./runs/mlflow.db``), in the MLflow experiment ``experiment-NAME``, each evaluation a child run of its training.
Means and 95 % t-intervals are over seeds; a difference is called significant when the paired 95 % interval excludes
0. ``DIR/experiment.json`` and ``DIR/experiment.md`` hold the numbers and say plainly whether each claim held.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from pipelines.ray_runtime import add_ray_arguments, start_ray
from vssflow.commands.flags import LOCAL_STORE_HELP, add_mlflow_uri, mlflow_uri
from vssflow.errors import InputError
from vssflow.files import write_text_atomic
from vssflow.metrics.suite import mean_ci
from vssflow.model.config import PHONEME_LAYOUTS


@dataclass(frozen=True)
class Scale:
    """How big each training run and evaluation is."""

    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    max_steps: int = 40
    batch_size: int = 4
    workers: int = 1
    engine: str = "ddp"
    lr: float = 2e-3
    eval_clips: int = 4  # per task
    eval_steps: int = 8
    cfg_scales: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    threads: int = 0  # torch threads per training worker; 0: the node's CPUs shared among its workers


TINY_MODEL = {
    "depth": 2,
    "width": 64,
    "heads": 2,
    "cross_dim": 64,
    "lip_dim": 16,
    "phoneme_dim": 16,
    "time_freq_dim": 64,
    "latent_dim": 64,
}  # fmt: skip  (latent <= width: a full-rank output layer)
SCALES = {
    # the test suite: seconds per run
    "tiny": Scale(model_overrides=TINY_MODEL, max_steps=4, batch_size=2, eval_clips=2, eval_steps=2,
                  cfg_scales=(1.0, 4.0)),
    # this machine (2 CPU cores): under an hour per experiment
    "small": Scale(max_steps=150, eval_clips=4, eval_steps=8),  # the tiny preset (128 wide, 128-channel latent)
    # this machine, where the models speak: the demo's model and sampling, 60 % of its training samples (one worker,
    # batch 8, 1200 steps: about 6 minutes per model with its evaluation)
    "speaks": Scale(max_steps=1200, batch_size=8, eval_clips=16, eval_steps=16, cfg_scales=(1.0, 2.0, 3.0, 4.0)),
    # a GPU cluster: the paper-size backbone
    "paper": Scale(preset="paper", max_steps=200_000, batch_size=32, workers=8, engine="zero2", lr=1e-4,
                   eval_clips=500, eval_steps=25),
}  # fmt: skip

MIXES = {"v2s": (1.0, 0.0, 0.0), "tts": (0.0, 1.0, 0.0), "joint": (1.0, 1.0, 0.5)}
TASKS_OF = {"v2s": ("v2s",), "tts": ("tts",), "joint": ("v2s", "tts")}
# wer_median: the median of the clips' WER beside their mean. One clip whose generated audio sends Whisper into a
# repetition loop scores a WER of 19-23 (80-90 inserted words for a 4-word sentence); it moves the mean of 16 clips
# by more than 1 and hides every difference between the models that the median still shows.
PRIMARY = {"v2s": ("fd", "onset_f1", "class_acc"), "tts": ("wer", "mcd", "spk_sim", "wer_median")}
MEDIANS = ("wer",)  # metrics whose per-clip median is compared as well, as "<metric>_median"


def better_when_higher(metric: str) -> bool:
    from vssflow.metrics.suite import HIGHER_IS_BETTER

    return HIGHER_IS_BETTER[metric.removesuffix("_median")]


@dataclass(frozen=True)
class Variant:
    """One model to train: its name, data mix, model changes, and what it is evaluated on."""

    name: str
    mix: tuple[float, float, float]
    tasks: tuple[str, ...]
    model: dict = field(default_factory=dict)


def variants(name: str) -> list[Variant]:
    """The models an experiment trains."""
    if name in ("joint-vs-separate", "cfg"):
        return [Variant(k, MIXES[k], TASKS_OF[k]) for k in ("v2s", "tts", "joint")]
    if name == "placement":
        return [
            # the paper's placement ablation as the paper ran it: no phoneme prior (it needs phonemes in context)
            Variant(
                f"sem-{s}_phon-{p}",
                MIXES["joint"],
                ("v2s", "tts"),
                {"sem_placement": s, "phoneme_placement": p, "prior_layers": 0},
            )
            for s in ("cross", "context")
            for p in ("cross", "context")
        ]
    if name == "phoneme-layout":
        return [Variant(f"layout-{k}", MIXES["tts"], ("tts",), {"phoneme_layout": k}) for k in PHONEME_LAYOUTS]
    raise InputError(f"unknown experiment {name!r}; use one of {', '.join(EXPERIMENTS)}", source="vssflow experiment")


EXPERIMENTS = ("joint-vs-separate", "placement", "cfg", "phoneme-layout")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    data: str
    out: str
    scale: str = "small"
    seeds: int = 3
    manifest: str | None = None
    mlflow_uri: str | None = None
    ray_address: str | None = None
    asr: str = "auto"
    classifier: str | None = None
    scale_overrides: dict = field(default_factory=dict)
    eval_data: str | None = None  # held-out shards or manifest to evaluate on (default: ``data``)
    eval_split: str | None = "val"  # split of the evaluation data (None: all)
    reuse: str | None = None  # an earlier experiment directory whose trained models (same variants/seeds) are reused
    only: tuple[str, ...] | None = None  # train only these variants (smoke runs)
    eval_tasks: tuple[str, ...] | None = None  # evaluate only these tasks (smoke runs)


# ---- statistics -----------------------------------------------------------------------------------------------------
def seed_stats(values) -> dict:
    """Mean, 95 % t-interval half-width (:func:`vssflow.metrics.suite.mean_ci`), n and the finite values, over seeds."""
    finite = [float(x) for x in values if x is not None and math.isfinite(x)]
    mean, half, n = mean_ci(finite)
    return {"mean": mean, "ci95": half, "n": n, "values": finite}


def compare(a: list[float], b: list[float], higher_is_better: bool) -> dict:
    """Paired (by seed) difference a - b: mean, interval and the verdict 'better' / 'worse' / 'no difference'."""
    pairs = [(x, y) for x, y in zip(a, b, strict=False) if math.isfinite(x) and math.isfinite(y)]
    d = seed_stats([x - y for x, y in pairs])
    if not d["n"] or not math.isfinite(d["ci95"]):
        verdict = "undetermined"
    elif abs(d["mean"]) > d["ci95"]:
        good = d["mean"] > 0 if higher_is_better else d["mean"] < 0
        verdict = "better" if good else "worse"
    else:
        verdict = "no difference"
    return {**d, "verdict": verdict}


# ---- runner ---------------------------------------------------------------------------------------------------------
def _train(cfg: ExperimentConfig, scale: Scale, v: Variant, seed: int, root: Path, tracking: str):
    from pipelines.train import run_training
    from pipelines.train_loop import TrainJobConfig

    tag = f"{v.name}-s{seed}"
    job = TrainJobConfig.from_dict(
        dict(
            data=str(Path(cfg.data).resolve()),
            preset=scale.preset,
            model_overrides={**scale.model_overrides, **v.model},
            workers=scale.workers,
            engine=scale.engine,
            max_steps=scale.max_steps,
            batch_size=scale.batch_size,
            lr=scale.lr,
            warmup_steps=max(1, scale.max_steps // 10),
            v2s_weight=v.mix[0],
            tts_weight=v.mix[1],
            joint_weight=v.mix[2],
            checkpoint_every=max(1, scale.max_steps),
            eval_every=0,
            seed=seed,
            threads=scale.threads,
        )
    )  # flat keys: TrainJobConfig.from_dict puts each in its section
    return run_training(job, out=root / "models" / tag, run_dir=root / "runs" / tag, tracking_uri=tracking,
                        experiment=f"experiment-{cfg.name}", register_as=None, n_val_clips=0,
                        ray_address=cfg.ray_address)  # fmt: skip


@dataclass
class _Trained:
    out: Path
    mlflow_run_id: str
    tracking_uri: str
    steps: int
    seconds: float


def _reused(cfg: ExperimentConfig, v: Variant, seed: int) -> _Trained | None:
    """The model of (variant, seed) trained by an earlier experiment in ``cfg.reuse`` (None when absent)."""
    if not cfg.reuse:
        return None
    tag = f"{v.name}-s{seed}"
    model, run_json = Path(cfg.reuse) / "models" / tag, Path(cfg.reuse) / "runs" / tag / "run.json"
    if not (model / "config.json").is_file() or not run_json.is_file():
        return None
    state = json.loads(run_json.read_text())
    return _Trained(model, state["mlflow_run_id"], state["tracking_uri"], int(state.get("steps", 0)), 0.0)


def _evaluate(cfg: ExperimentConfig, scale: Scale, model: Path, tasks, seed: int, out: Path, tracking: str, cfg_scale):
    from pipelines.evaluate import evaluate
    from pipelines.evaluate_config import EvalConfig

    guidance = None if cfg_scale is None else float(cfg_scale)  # None: the model's own saved guidance
    ec = EvalConfig(
        model=str(model), data=cfg.eval_data or cfg.data, out=str(out), manifest=cfg.manifest, tasks=tuple(tasks),
        split=cfg.eval_split,
        max_clips=scale.eval_clips, steps=scale.eval_steps, cfg=guidance, seed=seed, validate=0,
        asr=cfg.asr, classifier=cfg.classifier, ray_address=cfg.ray_address, mlflow_uri=tracking,
        experiment=f"experiment-{cfg.name}", run_name=f"eval-{out.name}", spectrograms=1,
        tags={"experiment": cfg.name},
    )  # fmt: skip
    return evaluate(ec, log=lambda *_: None)


def _final_losses(run_id: str, tracking: str) -> dict[str, list[tuple[int, float]]]:
    from pipelines.mlflow_utils import run_metrics

    return {k: v for k, v in run_metrics(run_id, tracking_uri=tracking).items() if k.startswith("loss")}


def run_experiment(cfg: ExperimentConfig, *, log=print) -> dict:
    """Train every variant for every seed, evaluate, summarise; returns (and writes) the experiment report."""
    if cfg.scale not in SCALES:
        raise InputError(f"unknown scale {cfg.scale!r}; use one of {', '.join(SCALES)}", source="--scale")
    if cfg.seeds < 1:
        raise InputError("--seeds must be >= 1 (3 for confidence intervals)", source="--seeds")
    scale = replace(SCALES[cfg.scale], **cfg.scale_overrides)
    root = Path(cfg.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    from pipelines.mlflow_utils import store_uri

    tracking = store_uri(cfg.mlflow_uri)  # the one default of train and evaluate, not a store of its own
    t0 = time.perf_counter()

    start_ray(cfg.ray_address, num_cpus=max(os.cpu_count() or 1, scale.workers + 2))  # one Ray for the whole experiment
    vs = [v for v in variants(cfg.name) if cfg.only is None or v.name in cfg.only]
    if cfg.eval_tasks is not None:
        vs = [replace(v, tasks=tuple(t for t in v.tasks if t in cfg.eval_tasks) or v.tasks) for v in vs]
    # the cfg experiment sweeps the scale; the others evaluate each model at its own saved guidance (None)
    cfg_values = scale.cfg_scales if cfg.name == "cfg" else (None,)
    log(f"vssflow experiment {cfg.name}: {len(vs)} variants x {cfg.seeds} seeds, scale {cfg.scale} "
        f"({scale.max_steps} steps), cfg {[cfg_key(c) for c in cfg_values]}; out {root}")  # fmt: skip
    results: dict = {}  # variant -> seed -> {"train": {...}, "eval": {cfg: {task: {metric: mean}}}}
    for seed in range(cfg.seeds):
        for v in vs:
            tr = _reused(cfg, v, seed) or _train(cfg, scale, v, seed, root, tracking)
            entry = {"train": {"run_id": tr.mlflow_run_id, "steps": tr.steps, "seconds": tr.seconds,
                               "tracking_uri": tr.tracking_uri, "model": str(tr.out),
                               "losses": _final_losses(tr.mlflow_run_id, tr.tracking_uri)}, "eval": {}}  # fmt: skip
            for c in cfg_values:
                key = cfg_key(c)
                rep = _evaluate(cfg, scale, tr.out, v.tasks, seed, root / "eval" / f"{v.name}-s{seed}-cfg{key}",
                                tracking, c)  # fmt: skip
                entry["eval"][key] = {t: {**{k: m["mean"] for k, m in ms.items()},
                                          **{f"{k}_median": ms[k]["median"] for k in MEDIANS if k in ms}}
                                      for t, ms in rep["metrics"].items()}  # fmt: skip
                entry["measured_with"] = rep["measured_with"]
            results.setdefault(v.name, {})[str(seed)] = entry
            log(f"  {v.name} seed {seed}: trained {tr.steps} steps in {tr.seconds:.0f} s, evaluated")
    summary = summarise(cfg.name, results, cfg_values)
    report = {"config": asdict(cfg), "scale": asdict(scale), "tracking_uri": tracking, "results": results,
              "summary": summary, "seconds": time.perf_counter() - t0}  # fmt: skip
    write_text_atomic(root / "experiment.json", json.dumps(report, indent=1, default=str))
    write_text_atomic(root / "experiment.md", render(report))
    _plot(report, root)
    log(f"vssflow experiment {cfg.name}: {summary['claim']['verdict']} -- {root / 'experiment.md'}")
    return report


MODEL_CFG = "model"  # the key of an evaluation at the model's own saved guidance


def cfg_key(scale: float | None) -> str:
    """The results key of a guidance scale: "3" for 3.0, ``MODEL_CFG`` for the model's own (None)."""
    return MODEL_CFG if scale is None else f"{scale:g}"


def _values(results: dict, variant: str, cfg: str, task: str, metric: str) -> list[float]:
    out = []
    for _seed, e in sorted(results.get(variant, {}).items()):
        out.append(float(e["eval"].get(cfg, {}).get(task, {}).get(metric, float("nan"))))
    return out


def summarise(name: str, results: dict, cfg_values) -> dict:
    """Per-variant means with intervals, the comparisons the claim rests on, and the verdict."""
    c0 = cfg_key(cfg_values[0])
    table = {}
    for v, seeds in results.items():
        for c in {k for e in seeds.values() for k in e["eval"]}:
            for task in ("v2s", "tts"):
                for metric in PRIMARY[task]:
                    vals = _values(results, v, c, task, metric)
                    if any(math.isfinite(x) for x in vals):
                        table.setdefault(v, {}).setdefault(c, {}).setdefault(task, {})[metric] = seed_stats(vals)
    comparisons, claim = {}, {}
    evaluated = {t for seeds in results.values() for e in seeds.values() for c in e["eval"].values() for t in c}
    if name == "joint-vs-separate":
        for task in sorted(evaluated & {"v2s", "tts"}):
            for metric in PRIMARY[task]:
                a, b = _values(results, "joint", c0, task, metric), _values(results, task, c0, task, metric)
                comparisons[f"{task}/{metric}: joint vs {task}-only"] = compare(a, b, better_when_higher(metric))
        claim = _verdict(comparisons, "joint training is at least as good as separate training on both tasks")
    elif name == "placement":
        for task, metric, good, bad in (
            ("v2s", "fd", "sem-cross", "sem-context"),
            ("v2s", "onset_f1", "sem-cross", "sem-context"),
            ("tts", "wer", "phon-context", "phon-cross"),
            ("tts", "wer_median", "phon-context", "phon-cross"),
            ("tts", "mcd", "phon-context", "phon-cross"),
        ):
            # average over the other condition's placement, paired by seed
            comparisons[f"{task}/{metric}: {good} vs {bad}"] = compare(
                _side(results, good, c0, task, metric), _side(results, bad, c0, task, metric), better_when_higher(metric)
            )
        claim = _verdict(comparisons, "cross-attention for video semantics and in-context for the transcript are best")
    elif name == "phoneme-layout":
        for layout in ("span", "duration"):
            for metric in PRIMARY["tts"]:
                a, b = _values(results, f"layout-{layout}", c0, "tts", metric), _values(results, "layout-clip", c0,
                                                                                      "tts", metric)  # fmt: skip
                comparisons[f"tts/{metric}: {layout} vs clip"] = compare(a, b, better_when_higher(metric))
        claim = _verdict(comparisons, "phonemes laid over the speech span beat the paper's stretch over the clip")
    elif name == "cfg":
        spreads = {}
        for v in results:
            for task in TASKS_OF[v]:
                for metric in PRIMARY[task][:2]:
                    per_seed = []
                    for s in sorted(results[v]):
                        ys = [results[v][s]["eval"].get(cfg_key(c), {}).get(task, {}).get(metric, float("nan"))
                              for c in cfg_values]  # fmt: skip
                        ys = [y for y in ys if math.isfinite(y)]
                        per_seed.append(max(ys) - min(ys) if ys else float("nan"))
                    spreads[(v, task, metric)] = per_seed
        for task in ("v2s", "tts"):
            for metric in PRIMARY[task][:2]:
                a, b = spreads.get(("joint", task, metric)), spreads.get((task, task, metric))
                if a and b:  # a smaller spread over guidance scales = more stable: "higher is better" of -spread
                    comparisons[f"{task}/{metric} spread over cfg: joint vs {task}-only"] = compare(
                        [-x for x in a], [-x for x in b], True
                    )
        claim = _verdict(comparisons, "joint training makes the metrics less sensitive to the guidance scale")
    return {"table": table, "comparisons": comparisons, "claim": claim}


def _side(results: dict, tag: str, c0: str, task: str, metric: str) -> list[float]:
    """Per seed: the metric averaged over the variants whose name contains ``tag`` (the other placement varies)."""
    cols = [_values(results, v, c0, task, metric) for v in results if tag in v]
    return [float(np.nanmean(x)) if np.isfinite(x).any() else float("nan") for x in zip(*cols, strict=True)]


def _verdict(comparisons: dict, statement: str) -> dict:
    verdicts = [c["verdict"] for c in comparisons.values()]
    if not verdicts or all(v == "undetermined" for v in verdicts):
        word = "undetermined (too few seeds or metrics to test it)"
    elif any(v == "worse" for v in verdicts):
        word = "did not hold"
    elif any(v == "better" for v in verdicts):
        word = "held"
    else:
        word = "not shown (no significant difference)"
    return {"statement": statement, "verdict": word, "counts": {v: verdicts.count(v) for v in set(verdicts)}}


def _fmt(d: dict) -> str:
    if not d or not math.isfinite(d.get("mean", float("nan"))):
        return "–"
    ci = d.get("ci95", float("nan"))
    return f"{d['mean']:.3f}" + (f" ± {ci:.3f}" if math.isfinite(ci) else "")


def render(report: dict) -> str:
    s, cfg = report["summary"], report["config"]
    mw = next((e.get("measured_with") for v in report["results"].values() for e in v.values()), {}) or {}
    lines = [f"# Experiment `{cfg['name']}` (scale {cfg['scale']}, {cfg['seeds']} seeds)", "",
             f"**Claim:** {s['claim']['statement']}. **Result here: {s['claim']['verdict']}.**", "",
             f"Training: {report['scale']['max_steps']} steps, preset {report['scale']['preset']} "
             f"{report['scale']['model_overrides'] or ''}; evaluation: {report['scale']['eval_clips']} clips per task, "
             f"{report['scale']['eval_steps']} solver steps. ASR {mw.get('asr')}, {mw.get('fd_embedding')}, "
             f"lip sync {mw.get('lipsync', '')}.", "",
             "## Comparisons (paired by seed, 95 % t-interval)", "", "| comparison | difference | verdict |",
             "|---|---|---|"]  # fmt: skip
    for k, c in s["comparisons"].items():
        lines.append(f"| {k} | {_fmt(c)} | {c['verdict']} |")
    lines += ["", "## Metrics per variant (mean ± 95 % interval over seeds)", ""]
    for v, by_cfg in s["table"].items():
        for c, by_task in sorted(by_cfg.items(), key=lambda kv: (kv[0] == MODEL_CFG, kv[0])):
            cells = [f"{t}/{m} {_fmt(d)}" for t, ms in by_task.items() for m, d in ms.items()]
            lines.append(f"- **{v}** (cfg {c}): " + "; ".join(cells))
    lines += ["", "## Training losses (final value per seed)", ""]
    for v, seeds in report["results"].items():
        finals = {}
        for e in seeds.values():
            for k, pts in e["train"]["losses"].items():
                finals.setdefault(k, []).append(pts[-1][1] if pts else float("nan"))
        lines.append(f"- **{v}**: " + "; ".join(f"{k} {_fmt(seed_stats(x))}" for k, x in sorted(finals.items())))
    lines += [
        "",
        "![curves](curves.png)",
        "",
        f"MLflow: `{report['tracking_uri']}`. Time: {report['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def _plot(report: dict, root: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    is_cfg = report["config"]["name"] == "cfg"
    fig, axes = plt.subplots(1, 2 if is_cfg else 1, figsize=(10 if is_cfg else 6, 3.5), squeeze=False)
    axes = axes[0]
    for v, seeds in report["results"].items():
        for k in ("loss/v2s", "loss/tts"):
            curves = [dict(e["train"]["losses"].get(k, [])) for e in seeds.values()]
            steps = sorted(set().union(*curves)) if curves else []
            if steps:
                ys = [np.nanmean([c.get(s, np.nan) for c in curves]) for s in steps]
                axes[0].plot(steps, ys, label=f"{v} {k}")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss (mean over seeds)")
    axes[0].legend(fontsize=7)
    if is_cfg:  # V2S FD on the left axis, TTS WER on the right one (different scales)
        twin = axes[1].twinx()
        for v, by_cfg in report["summary"]["table"].items():
            for task, ax, style in (("v2s", axes[1], "-o"), ("tts", twin, "--s")):
                metric = PRIMARY[task][0]
                xs = sorted(float(c) for c in by_cfg if metric in by_cfg[c].get(task, {}))
                if xs:
                    ax.plot(xs, [by_cfg[f"{x:g}"][task][metric]["mean"] for x in xs], style,
                            label=f"{v} {task}/{metric}")  # fmt: skip
        axes[1].set_xlabel("guidance scale")
        axes[1].set_ylabel(f"V2S {PRIMARY['v2s'][0]} (solid)")
        twin.set_ylabel(f"TTS {PRIMARY['tts'][0]} (dashed)")
        lines = axes[1].get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        axes[1].legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "curves.png", dpi=80)
    plt.close(fig)


# ---- CLI ------------------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=EXPERIMENTS)
    p.add_argument("--data", required=True, help="shard directory (vssflow preprocess --out)")
    p.add_argument("--out", required=True, help="experiment directory")
    p.add_argument("--scale", default="small", choices=sorted(SCALES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--eval-data", default=None, help="held-out shards (or manifest) to evaluate on (default --data)")
    p.add_argument("--eval-split", default="val", help="split of the evaluation data ('' = all)")
    p.add_argument("--manifest", default=None, help="manifest of the evaluation clips (ground-truth audio)")
    p.add_argument("--max-steps", type=int, default=None, help="override the scale's training steps")
    p.add_argument("--eval-clips", type=int, default=None, help="override the scale's clips per task")
    p.add_argument("--reuse", default=None, help="experiment directory whose trained models to reuse (e.g. for cfg)")
    p.add_argument("--cfg-scales", default=None, help="comma-separated guidance scales (cfg experiment)")
    p.add_argument("--asr", default="auto", choices=("auto", "whisper", "pocketsphinx"))
    add_mlflow_uri(p, local=LOCAL_STORE_HELP)
    add_ray_arguments(p, num_cpus=False)


def run(args: argparse.Namespace) -> int:
    over = {k: v for k, v in (("max_steps", args.max_steps), ("eval_clips", args.eval_clips)) if v is not None}
    if args.cfg_scales:
        over["cfg_scales"] = tuple(float(x) for x in args.cfg_scales.split(","))
    cfg = ExperimentConfig(name=args.name, data=args.data, out=args.out, scale=args.scale, seeds=args.seeds,
                           manifest=args.manifest, mlflow_uri=mlflow_uri(args), ray_address=args.ray_address,
                           asr=args.asr, scale_overrides=over, eval_data=args.eval_data,
                           eval_split=args.eval_split or None, reuse=args.reuse)  # fmt: skip
    report = run_experiment(cfg)
    for k, c in report["summary"]["comparisons"].items():
        print(f"  {k}: {_fmt(c)} ({c['verdict']})")
    print(f"  claim: {report['summary']['claim']['statement']}: {report['summary']['claim']['verdict']}")
    return 0
