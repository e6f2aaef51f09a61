"""``vssflow evaluate``: generate for a test set with Ray Data, measure both tasks, write a report, log to MLflow.

    vssflow evaluate --model MODEL_DIR --data SHARDS_OR_MANIFEST --out REPORT_DIR
                     [--manifest MANIFEST] [--split test] [--max-clips 16] [--steps 16] [--cfg SCALE] [--validate 2]
                     [--asr auto] [--embedding whisper-base] [--mlflow-uri URI] [--actors 0] [--ray-address auto]

Pipeline: clip indices -> Ray Data ``map`` over an actor pool (:class:`EvalActor`: loads the generator and the metric
models once, then per clip: features + ground truth -> ``Generator.generate`` -> wav file -> metrics) -> driver:
FD / KL over the set, means with 95 % intervals per task, the metric validation (ground truth vs broken audio on a
few clips), ``report.json`` + ``report.md`` + PNG plots (spectrograms; metric-vs-step curves of the training run
when it is in the store), and one MLflow run with the aggregates and the report as artifacts, in the store training
writes to by default (``./runs/mlflow.db``; :func:`pipelines.mlflow_utils.store_uri`), as a child of the model's
training run when the store has it.

Every metric is reported three times, so a score can be read against what the model could reach at best: for the
generated audio (``metrics``), for the ground-truth mel through the model's own codec and vocoder
(``metrics_gt_vocoded``, :meth:`Generator.reconstruct`: the model's ceiling), and for the raw ground truth
(``metrics_gt_raw``, where a metric of the ground truth against itself means something: WER by the ASR, onsets,
class accuracy, lip sync, clipping). ``speech`` says how many test sentences are also training sentences and splits
WER by seen/unseen sentences and by held-out/training voices (:mod:`vssflow.metrics.held_out`).

``--speech-span`` chooses the span the phonemes are laid over (:attr:`EvalConfig.speech_span`): ``data`` the span
stored with the clip's features (its manifest timing, or the voice activity of its speech), ``mouth`` the mouth
activity of its lip crops (what inference without a user's span does), ``clip`` none (the whole clip); the report
records the mode and each clip's span.

``--data`` is a shard set (``vssflow preprocess`` output) or a manifest (.jsonl/.csv): each row's video then gets
the conditions a user's request for it gets (:func:`vssflow.inference.prepare`,
:func:`pipelines.evaluate_source.manifest_clip`; a silent video of any length), its audio is the ground truth. With
shards, the ground-truth audio comes from ``--manifest`` (matched by clip_id) when given, else from the shard's
target mel through the Griffin-Lim vocoder (the report says which).

The job, one concept a module: :mod:`pipelines.evaluate_config` (:class:`EvalConfig`, what one evaluation runs),
:mod:`pipelines.evaluate_source` (where the clips and their ground truth come from), this module (the actor that
scores one clip, the driver over Ray Data, the command line) and :mod:`pipelines.evaluate_report` (report.json,
report.md, the plots and the MLflow run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from pipelines.devices import actor_gpus, load_actor_generator, resolve_ray_device
from pipelines.evaluate_config import EVAL_EXPERIMENT, SPEECH_SPANS, EvalConfig, parse_max_clips
from pipelines.evaluate_report import PRIMARY, log_to_mlflow, write_plots, write_report
from pipelines.evaluate_source import ClipSource, ground_truth_mel
from pipelines.model_uri import resolve_model_dir
from pipelines.progress import Progress, duration
from pipelines.ray_runtime import add_ray_arguments, start_ray
from vssflow.commands.flags import LOCAL_STORE_HELP, add_mlflow_uri, add_model, add_tasks, mlflow_uri
from vssflow.constants import TASKS
from vssflow.device import DEVICE_HELP
from vssflow.errors import InputError


# ---- the Ray actor ---------------------------------------------------------------------------------------------------
class EvalActor:
    """Loads the generator, the clip source and the metric models once; ``__call__`` evaluates one clip."""

    def __init__(self, cfg: EvalConfig):
        from vssflow.metrics.suite import MetricSuite

        self.cfg = cfg
        self.gen = load_actor_generator(cfg.model, cfg.device, threads=cfg.threads)
        self.source = ClipSource(cfg, sem_dim=self.gen.config.sem_dim, model_info=self.gen.info)
        self.suite = MetricSuite(asr=cfg.asr, embedding=cfg.embedding, classifier=cfg.classifier, threads=cfg.threads)
        self.audio_dir = Path(cfg.out) / "audio"
        self.audio_dir.mkdir(parents=True, exist_ok=True)
        self._vocoded = (f"the ground truth's mel through the model's codec ({type(self.gen.codec).__name__}) and "
                         f"vocoder ({type(self.gen.vocoder).__name__}): Generator.reconstruct")  # fmt: skip

    def __call__(self, row: dict) -> dict:
        from vssflow.audio.io import write_audio

        i = int(row["idx"])
        feats, ref = self.source.load(i)
        feats = speech_span_for(feats, self.cfg.speech_span)
        t0, guarded = time.perf_counter(), self.gen.peak_guarded
        wav = self.gen.generate(feats, steps=self.cfg.steps, cfg=self.cfg.cfg, seed=self.cfg.seed + i)
        gen_s, guarded = time.perf_counter() - t0, self.gen.peak_guarded - guarded
        # the ceiling: the ground truth's own mel through the model's codec and vocoder (the same decode path)
        vocoded = self.gen.reconstruct(ground_truth_mel(feats, ref), ref.duration_s)
        write_audio(self.audio_dir / f"{ref.clip_id}.wav", wav)
        write_audio(self.audio_dir / f"{ref.clip_id}.gt.wav", ref.wav)
        write_audio(self.audio_dir / f"{ref.clip_id}.gt_vocoded.wav", vocoded)
        m = self.suite.clip_metrics(wav, ref)
        m["peak_guarded"] = float(guarded > 0)  # the generator's last guard had to scale this clip down
        m_voc = self.suite.clip_metrics(vocoded, ref)
        m_raw = {k: v for k, v in self.suite.clip_metrics(ref.wav, ref, with_embedding=False).items()
                 if k not in SELF_TRIVIAL}  # fmt: skip
        real = {"embedding": self.suite.embedding.embed([ref.wav])[0]}
        if "class_probs" in m:
            real["class_probs"] = self.suite.classifier.event_probs(ref.wav, [t for t, _ in ref.events]).mean(0)
        return {
            "idx": i,
            "clip_id": ref.clip_id,
            "task": ref.task,
            "metrics_json": json.dumps({**_scalars(m), "transcript": ref.transcript}),
            "metrics_gt_vocoded_json": json.dumps(_scalars(m_voc)),
            "metrics_gt_raw_json": json.dumps(_scalars(m_raw)),
            "facts_json": json.dumps({**self.source.clip_facts(ref.clip_id), **_span_facts(feats)}),
            "gen_embedding": np.asarray(m["embedding"], np.float64),
            "voc_embedding": np.asarray(m_voc["embedding"], np.float64),
            "real_embedding": np.asarray(real["embedding"], np.float64),
            "gen_probs": np.asarray(m.get("class_probs", np.zeros(0)), np.float64),
            "voc_probs": np.asarray(m_voc.get("class_probs", np.zeros(0)), np.float64),
            "real_probs": np.asarray(real.get("class_probs", np.zeros(0)), np.float64),
            "generate_s": gen_s,
            "describe_json": json.dumps({**self.suite.describe(), "gt_vocoded": self._vocoded}),
        }


def speech_span_for(feats, mode: str):
    """``feats`` with the speech span of ``mode``: "data" as stored, "mouth" from its lip crops, "clip" none."""
    from vssflow.inference import with_speech_span

    if mode == "data":
        return replace(feats, meta={**feats.meta, "speech_span_source": "data" if feats.speech_span else "clip"})
    if mode == "mouth":
        return with_speech_span(replace(feats, speech_span=None))
    return replace(feats, speech_span=None, meta={**feats.meta, "speech_span_source": "clip"})


def _span_facts(feats) -> dict:
    if feats.phonemes is None:
        return {"speech_span": None, "speech_span_source": None}
    span = None if feats.speech_span is None else [round(float(x), 3) for x in feats.speech_span]
    return {"speech_span": span, "speech_span_source": feats.meta.get("speech_span_source")}


# metrics of the ground truth against itself, exactly 0 by construction: not reported for the raw ground truth
SELF_TRIVIAL = ("mcd", "duration_err_s", "speech_span_err_s", "level_db_diff", "level_db_abs")
VARIANTS = {"generated": "metrics", "gt_vocoded": "metrics_gt_vocoded", "gt_raw": "metrics_gt_raw"}


def _scalars(m: dict) -> dict:
    """The JSON-able part of clip_metrics: scalars and the ASR hypothesis."""
    out = {k: float(v) for k, v in m.items() if isinstance(v, float | int) and not isinstance(v, bool)}
    return {**out, "hypothesis": m.get("hypothesis")}


# ---- driver ----------------------------------------------------------------------------------------------------------
CLIPS_PER_ACTOR = 8  # automatic actor count: no more actors than this many clips each would keep busy


def eval_actors(requested: int, n_clips: int, resources: dict) -> int:
    """Evaluation actors: ``requested`` when > 0; else (0, automatic) one per CPU of the cluster (each actor runs
    single-threaded on one CPU), but no more than one per ``CLIPS_PER_ACTOR`` clips, since every actor first loads
    the generator and the metric models."""
    if requested > 0:
        return requested
    per_cpu = max(1, int(resources.get("GPU", 0)) or int(resources.get("CPU", 1)))
    return max(1, min(per_cpu, n_clips // CLIPS_PER_ACTOR))


def _run_clips(cfg: EvalConfig, n: int, progress: Progress | None = None) -> list[dict]:
    import ray

    started = start_ray(cfg.ray_address, num_cpus=cfg.num_cpus or max(2, os.cpu_count() or 1), log_to_driver=False)
    try:
        device = resolve_ray_device(cfg.device)
        cfg = replace(cfg, device=str(device), actors=eval_actors(cfg.actors, n, ray.cluster_resources()))
        if progress is not None:
            progress.stage(f"generating and scoring {n} clips on {cfg.actors} actor(s) (each loads the model, ASR "
                           f"{cfg.asr} and embedding {cfg.embedding} first)")  # fmt: skip
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"idx": i} for i in range(n)], override_num_blocks=max(1, min(n, 4 * cfg.actors)))
        ds = ds.map(
            EvalActor,
            fn_constructor_kwargs={"cfg": cfg},
            compute=ray.data.ActorPoolStrategy(size=cfg.actors),
            num_cpus=1,
            num_gpus=actor_gpus(device),
        )
        rows = []
        for row in ds.iter_rows():  # streamed, one progress line per clip as it completes
            rows.append(row)
            if progress is not None:
                progress.advance(1, f" ({row['task']})")
        return sorted(rows, key=lambda r: r["idx"])
    finally:
        if started:
            ray.shutdown()


def aggregate(rows: list[dict], variant: str = "generated") -> dict[str, dict]:
    """Per task: every metric's mean, 95 % interval and median, FD and KL against the ground truth of the same clips.

    Args:
        variant: "generated", "gt_vocoded" (the ground truth through the model's codec and vocoder) or "gt_raw" (the
            ground truth itself: no FD / KL, which would be 0).
    """
    from vssflow.metrics.suite import MetricSuite

    col, emb, probs = {"generated": ("metrics_json", "gen_embedding", "gen_probs"),
                       "gt_vocoded": ("metrics_gt_vocoded_json", "voc_embedding", "voc_probs"),
                       "gt_raw": ("metrics_gt_raw_json", None, None)}[variant]  # fmt: skip
    out = {}
    for task in TASKS:
        sel = [r for r in rows if r["task"] == task]
        if not sel:
            continue
        gen, real = [], []
        for r in sel:
            g = {k: v for k, v in json.loads(r[col]).items() if isinstance(v, float | int)}
            rr = {"embedding": np.asarray(r["real_embedding"])}
            if emb:
                g["embedding"] = np.asarray(r[emb])
            if probs and len(r[probs]):
                g["class_probs"], rr["class_probs"] = np.asarray(r[probs]), np.asarray(r["real_probs"])
            gen.append(g)
            real.append(rr)
        out[task] = MetricSuite.aggregate(gen, real if emb else None)
    return out


def _validation(cfg: EvalConfig, source: ClipSource) -> dict | None:
    if cfg.validate <= 0:
        return None
    from vssflow.metrics.perturb import validate_metrics
    from vssflow.metrics.suite import MetricSuite

    picked, per_task = [], {}
    for i in range(len(source)):
        t = source.task(i)
        if per_task.get(t, 0) < cfg.validate:
            picked.append(i)
            per_task[t] = per_task.get(t, 0) + 1
    refs = [source.load(i)[1] for i in picked]
    suite = MetricSuite(asr=cfg.asr, embedding=cfg.embedding, classifier=cfg.classifier, threads=cfg.threads)
    return validate_metrics(refs, suite)


def _clip_entry(r: dict) -> dict:
    """One clip of the report: facts, the generated audio's values at the top level, the ground truth's nested."""
    return {"clip_id": r["clip_id"], "task": r["task"], **json.loads(r["facts_json"]), "generate_s": r["generate_s"],
            **json.loads(r["metrics_json"]), "gt_vocoded": json.loads(r["metrics_gt_vocoded_json"]),
            "gt_raw": json.loads(r["metrics_gt_raw_json"])}  # fmt: skip


def evaluate(cfg: EvalConfig, *, log=print) -> dict:
    """Run one evaluation (see the module docstring); returns the report dict (also written to report.json)."""
    from pipelines.mlflow_utils import store_uri
    from vssflow.metrics.held_out import sentence_key, speech_breakdown
    from vssflow.model_dir import read_model_config

    t0 = time.perf_counter()
    if cfg.speech_span not in SPEECH_SPANS:
        raise InputError(f"{cfg.speech_span!r}: choose one of {', '.join(SPEECH_SPANS)}", source="--speech-span")
    cfg = replace(cfg, mlflow_uri=store_uri(cfg.mlflow_uri))  # the store training writes to by default, too
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = read_model_config(cfg.model)
    if cfg.cfg is None:  # the guidance the model was saved with (as generate and serve use)
        cfg = replace(cfg, cfg=float(model_cfg.get("sampling", {}).get("cfg_scale", 3.0)))
    sem_dim = int(model_cfg["model"].get("sem_dim", 0)) or None
    source = ClipSource(cfg, sem_dim=sem_dim, model_info=model_cfg.get("info"))
    if not len(source):
        raise InputError(f"no clip of tasks {list(cfg.tasks)} in the evaluation data", source=cfg.data)
    log(f"vssflow evaluate: {len(source)} clips of {cfg.data} with {cfg.model} ({cfg.steps} steps, cfg {cfg.cfg})")
    progress = Progress(len(source), log, what="vssflow evaluate", unit="clip")
    rows = _run_clips(cfg, len(source), progress)
    describe = json.loads(rows[0]["describe_json"])
    clips = [_clip_entry(r) for r in rows]
    train_sentences = source.train_sentences()
    for c in clips:  # None: no transcript to compare
        key = sentence_key(c.get("transcript"))
        c["transcript_in_train"] = (key in train_sentences) if key else None
    if cfg.validate > 0:
        t_val = time.perf_counter()
        progress.stage(f"metric validation: perturbed ground truth of {cfg.validate} clip(s) per task")
    validation = _validation(cfg, source)
    if cfg.validate > 0:
        progress.stage(f"metric validation done in {duration(time.perf_counter() - t_val)}")
    report = {
        "config": {k: v for k, v in asdict(cfg).items()},
        "model": {
            "dir": str(cfg.model),
            "step": model_cfg.get("step"),
            "model": model_cfg.get("model"),
            "info": model_cfg.get("info", {}),
        },  # fmt: skip
        "measured_with": {**describe, "ground_truth_audio": source.ground_truth_source},
        **{key: aggregate(rows, variant) for variant, key in VARIANTS.items()},
        "speech": speech_breakdown(clips, train_sentences),
        "clips": clips,
        "validation": validation,
        "seconds": time.perf_counter() - t0,
    }
    progress.stage("report, plots and the MLflow run")
    plots = write_plots(report, out, cfg)
    report["plots"] = plots
    tracking = cfg.mlflow_uri
    report["mlflow"] = {"tracking_uri": tracking}
    write_report(report, out)
    report["mlflow"]["run_id"] = log_to_mlflow(report, out, cfg, tracking)
    write_report(report, out)
    log(f"vssflow evaluate: report {out / 'report.md'} ({report['seconds']:.0f} s); MLflow {tracking}")
    return report


# ---- CLI -------------------------------------------------------------------------------------------------------------
def _max_clips_arg(text: str) -> int | dict:
    try:
        return parse_max_clips(text)
    except InputError as e:  # argparse prints an ArgumentTypeError's own message (it hides a ValueError's)
        raise argparse.ArgumentTypeError(str(e).removeprefix("--max-clips: ")) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = EvalConfig(model="", data="", out="")
    add_model(p)
    p.add_argument("--data", required=True, help="shard directory (vssflow preprocess --out) or a manifest")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--manifest", default=None, help="with shards: the manifest, for the ground-truth audio")
    p.add_argument("--split", default=d.split, help="split to evaluate ('' = all); falls back to all when empty")
    add_tasks(p, default=d.tasks)
    p.add_argument("--max-clips", type=_max_clips_arg, default=d.max_clips,
                   help="clips per task: N, or TASK=N,... (e.g. v2s=48,tts=16,joint=24; tasks not named: 16)")
    p.add_argument("--steps", type=int, default=d.steps, help="ODE solver steps")
    p.add_argument("--cfg", type=float, default=d.cfg, help="classifier-free guidance scale (default: the model's own)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--speech-span", choices=SPEECH_SPANS, default=d.speech_span,
                   help="span the phonemes are laid over: the data's (manifest timing), the mouth activity of the "
                   "lip crops, or the whole clip")  # fmt: skip
    p.add_argument("--validate", type=int, default=d.validate, help="clips per task for the metric validation")
    p.add_argument("--asr", default=d.asr, choices=("auto", "whisper", "pocketsphinx"))
    p.add_argument("--embedding", default=d.embedding, help="'whisper-base' or 'torchscript:/path/model.pt'")
    p.add_argument("--classifier", default=None, help="saved sound classifier (.npz); default: cached/trained")
    p.add_argument("--actors", type=int, default=d.actors,
                   help="evaluation actors, each loads the models once (default 0: one per CPU, or per GPU, of the "
                        "cluster, at most one per 8 clips)")
    add_ray_arguments(p)
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP}; cuda: one GPU per actor, bf16")
    add_mlflow_uri(p, local=LOCAL_STORE_HELP)
    p.add_argument("--experiment", default=d.experiment,
                   help=f"MLflow experiment (default: the model's training run's, as its child run, when the store "
                        f"has it, else {EVAL_EXPERIMENT})")  # fmt: skip
    p.add_argument("--train-run-id", default=None, help="MLflow run of the training (curves); default: the model's")


def run(args: argparse.Namespace) -> int:
    from pipelines.mlflow_utils import store_uri

    tasks = args.tasks or TASKS
    model = resolve_model_dir(args.model, tracking_uri=store_uri(mlflow_uri(args)))  # models:/ from the same store
    cfg = EvalConfig(
        model=str(model), data=args.data, out=args.out, manifest=args.manifest, split=args.split or None, tasks=tasks,
        max_clips=args.max_clips, steps=args.steps, cfg=args.cfg, seed=args.seed, validate=args.validate,
        asr=args.asr, embedding=args.embedding, classifier=args.classifier, actors=args.actors,
        ray_address=args.ray_address, num_cpus=args.num_cpus, mlflow_uri=mlflow_uri(args),
        experiment=args.experiment, train_run_id=args.train_run_id, speech_span=args.speech_span, device=args.device,
    )  # fmt: skip
    report = evaluate(cfg)
    for task, m in report["metrics"].items():
        shown = ", ".join(f"{k} {m[k]['mean']:.3f}" for k in PRIMARY[task] if k in m and math.isfinite(m[k]["mean"]))
        print(f"  {task}: {shown}")
        voc = report["metrics_gt_vocoded"].get(task, {})
        shown = ", ".join(f"{k} {voc[k]['mean']:.3f}" for k in PRIMARY[task] if k in voc and math.isfinite(
            voc[k]["mean"]))  # fmt: skip
        print(f"  {task} (ground truth through codec + vocoder): {shown}")
    val = report.get("validation")
    if val:
        print(f"  metric validation: {'all designed separations hold' if not val['failed'] else val['failed']}")
    print(f"  report: {Path(cfg.out) / 'report.md'}")
    return 0
