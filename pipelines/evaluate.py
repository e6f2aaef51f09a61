"""``vssflow evaluate``: generate for a test set with Ray Data, measure both tasks, write a report, log to MLflow.

    vssflow evaluate --model MODEL_DIR --data SHARDS_OR_MANIFEST --out REPORT_DIR
                     [--manifest MANIFEST] [--split test] [--max-clips 16] [--steps 16] [--cfg SCALE] [--validate 2]
                     [--asr auto] [--embedding whisper-base] [--mlflow-uri URI] [--actors 1] [--ray-address auto]

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
the conditions a user's request for it gets (:func:`vssflow.inference.prepare`, :func:`manifest_clip`; a silent
video of any length), its audio is the ground truth. With shards, the ground-truth audio comes from ``--manifest``
(matched by clip_id) when given, else from the shard's target mel through the Griffin-Lim vocoder (the report says
which).
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

from pipelines.devices import actor_gpus, load_actor_generator, resolve_ray_device
from pipelines.model_uri import resolve_model_dir
from pipelines.progress import Progress, duration
from pipelines.ray_runtime import add_ray_arguments, start_ray
from vssflow.commands.flags import LOCAL_STORE_HELP, add_mlflow_uri, add_model, add_tasks, mlflow_uri
from vssflow.constants import SPEECH_TASKS, TASKS
from vssflow.device import DEVICE_HELP
from vssflow.errors import AssetError, InputError, MissingFileError
from vssflow.files import write_text_atomic

SPEECH_SPANS = ("data", "mouth", "clip")
EVAL_EXPERIMENT = "vssflow-eval"  # where an evaluation goes when its model's training run is not in the store


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation job (defaults: a quick CPU evaluation)."""

    model: str
    data: str
    out: str
    manifest: str | None = None
    split: str | None = "test"  # falls back to every split when the split is empty
    tasks: tuple[str, ...] = TASKS
    max_clips: int = 16  # per task
    steps: int = 16
    cfg: float | None = None  # None: the model's own default guidance (its config.json)
    seed: int = 0
    validate: int = 2  # clips per task for the metric validation (0: skip)
    asr: str = "auto"
    embedding: str = "whisper-base"
    classifier: str | None = None
    actors: int = 1
    threads: int = 1
    ray_address: str | None = None
    num_cpus: int | None = None
    mlflow_uri: str | None = None
    experiment: str | None = None  # None: the training run's experiment when the store has it, else vssflow-eval
    run_name: str | None = None
    train_run_id: str | None = None  # default: the model's own (config.json info.mlflow_run_id)
    spectrograms: int = 3
    tags: dict = field(default_factory=dict)
    speech_span: str = "data"  # SPEECH_SPANS: the span the phonemes are laid over (see the module docstring)
    device: str = "cpu"  # --device: auto|cpu|cuda (an actor on cuda takes one GPU and generates in bf16)


# ---- the clip source (shards or manifest), usable on the driver and inside actors ------------------------------------
class ClipSource:
    """Indexable clips: ``features(i)`` -> ClipFeatures and ``reference(i)`` -> metrics.Reference."""

    def __init__(self, cfg: EvalConfig, *, sem_dim: int | None = None, model_info: dict | None = None):
        self.cfg = cfg
        self._sem_dim, self._model_info = sem_dim, model_info or {}
        path = Path(cfg.data)
        if not path.exists():
            raise MissingFileError("evaluation data not found; pass a shard directory or a manifest", source=str(path))
        self.is_manifest = path.is_file()
        self._extractors = None
        self._manifest_rows = None
        if self.is_manifest:
            from vssflow.data.manifest import read_manifest

            self._manifest_rows = {r.clip_id: r for r in read_manifest(path)}
            rows = [r for r in self._manifest_rows.values() if r.task in cfg.tasks]
            self.items = _select(rows, cfg, key=lambda r: (r.task, r.split, r.clip_id))
        else:
            from vssflow.data.shard_set import ShardSet

            # per task: the wanted split when the task has clips in it, else every split of that task
            full = ShardSet(path, tasks=cfg.tasks, sem_dim=sem_dim, check=False)
            part = full
            if cfg.split:
                part = ShardSet(path, tasks=cfg.tasks, split=cfg.split, sem_dim=sem_dim, check=False)
            have = {part.keys[i][0] for i in range(len(part))}
            keys = [_ShardKey(part.keys[i][0], i, part) for i in range(len(part))]
            keys += [_ShardKey(full.keys[i][0], i, full) for i in range(len(full)) if full.keys[i][0] not in have]
            self.items = _select(keys, replace(cfg, split=None), key=lambda k: (k.task, k.index))
            if cfg.manifest:
                from vssflow.data.manifest import read_manifest

                self._manifest_rows = {r.clip_id: r for r in read_manifest(cfg.manifest)}

    def __len__(self) -> int:
        return len(self.items)

    def clip_facts(self, clip_id: str) -> dict:
        """What the manifest says about a clip beyond its features: split, speaker, held-out voice (None: unknown)."""
        row = (self._manifest_rows or {}).get(clip_id)
        if row is None:
            return {"split": None, "speaker_id": None, "held_out_voice": None}
        held = row.extra.get("held_out_voice")
        if isinstance(held, str):  # a CSV cell
            held = held.strip().lower() in ("1", "true", "yes")
        held = None if held is None else bool(held)
        return {"split": row.split, "speaker_id": row.speaker_id, "held_out_voice": held}

    def train_sentences(self) -> set[str]:
        """Normalised transcripts of every training clip (all tasks) of the same manifest, or of the same shards."""
        from vssflow.metrics.held_out import sentence_set

        if self._manifest_rows:
            return sentence_set(r.transcript for r in self._manifest_rows.values() if r.split == "train")
        from vssflow.data.shard_set import ShardSet

        tables = ShardSet(self.cfg.data, check=False).tables(["transcript"], split="train")
        return sentence_set(x for t in tables for x in t.column("transcript").to_pylist())

    def task(self, i: int) -> str:
        return self.items[i].task

    def _loaded_extractors(self):
        """The feature extractors the model was trained with (its config.json info; the defaults without it)."""
        from vssflow.features.extract import Extractors
        from vssflow.inference import extract_config_for

        if self._extractors is None:
            self._extractors = Extractors.load(extract_config_for(self._model_info))
            if self._sem_dim and self._extractors.sem_dim != self._sem_dim:
                raise AssetError(f"visual encoder {self._extractors.config.encoder!r} gives "
                                 f"{self._extractors.sem_dim}-d features but the model expects sem_dim "
                                 f"{self._sem_dim}; record the training encoder in config.json info['extractors']",
                                 source=self.cfg.model)  # fmt: skip
        return self._extractors

    def load(self, i: int):
        """(ClipFeatures, Reference) of item ``i``."""
        from vssflow.metrics.references import reference_from_features, reference_from_row

        item = self.items[i]
        if self.is_manifest:
            return manifest_clip(item, self._loaded_extractors())
        feats = item.ds[item.index]
        cid = str(feats.meta.get("clip_id"))
        row = (self._manifest_rows or {}).get(cid)
        if row is not None:
            ref = reference_from_row(row, lip=feats.lip)
        else:
            ref = reference_from_features(feats)
        return feats, ref

    @property
    def ground_truth_source(self) -> str:
        if self._manifest_rows:
            return "source audio of the clips (video track / audio file)"
        return "the shards' target mel vocoded with Griffin-Lim (no --manifest given)"


def manifest_clip(row, extractors):
    """(ClipFeatures, Reference) of a manifest row: the conditions a user's request for the row's video gets
    (:func:`vssflow.inference.prepare`, no audio track needed, any length), cut to the row's [start, end).

    The request is what the manifest gives: the task, the transcript (speech tasks), the reference voice (the row's
    ``reference_audio``, else its speech stem, else its own speech, as training takes it) and the speech span of
    the data (:func:`vssflow.features.extract.data_speech_span`: the row's timing, else the voice activity of its
    speech; none known: the whole clip). The ground truth (:func:`reference_from_row`) is the row's audio; its mel,
    for the ground truth through the model's codec and vocoder, is :func:`ground_truth_mel` of it.
    """
    from vssflow.features.extract import data_speech_span, row_dict
    from vssflow.generator import slice_features
    from vssflow.inference import prepare
    from vssflow.media.video import probe
    from vssflow.metrics.references import reference_from_row
    from vssflow.metrics.suite import Reference

    ref = reference_from_row(row)  # the ground truth, cut to [start, end)
    speech = row.task in SPEECH_TASKS
    voice = next((w for w in (ref.speaker_ref, ref.speech_stem, ref.wav) if w is not None), None) if speech else None
    span = data_speech_span(row_dict(row), ref.duration_s, ref.wav) if speech else None
    info = probe(row.video)
    feats = prepare(row.video, task=row.task, transcript=row.transcript if speech else None, reference_voice=voice,
                    speech_span=None if span is None else (row.start + span[0], row.start + span[1]),
                    extractors=extractors, info=info, clip_id=row.clip_id)  # fmt: skip
    if row.start > 0 or ref.duration_s < info.duration - 1e-3:  # the row is a part of its video
        cut = slice_features(feats, row.start, row.start + ref.duration_s)
        feats = replace(cut, phonemes=feats.phonemes, phoneme_durations=feats.phoneme_durations, meta=feats.meta)
    feats = replace(feats, duration_s=ref.duration_s, speech_span=span)  # None: the data knows no span
    opening = Reference.opening_from_crops(feats.lip)  # the mouth of the lip crops, when they are there
    return feats, ref if opening is None else replace(ref, mouth_opening=opening)


def ground_truth_mel(feats, ref) -> np.ndarray:
    """(T_mel, 64) log-mel of the ground truth: the shard's target mel, else (a manifest clip, whose conditions, as
    a user's, carry none) the mel of the row's ground-truth audio."""
    from vssflow.audio.mel import log_mel

    return np.asarray(feats.mel if feats.mel is not None else log_mel(ref.wav), np.float32)


@dataclass
class _ShardKey:
    task: str
    index: int
    ds: object  # the ShardSet the index refers to


def _select(rows, cfg: EvalConfig, key):
    """Up to max_clips per task from the wanted split (every split when that one is empty), in a fixed order."""
    chosen = []
    for task in cfg.tasks:
        pool = sorted([r for r in rows if r.task == task], key=key)
        split = [r for r in pool if cfg.split is None or r.split == cfg.split]
        chosen += (split or pool)[: cfg.max_clips]
    return chosen


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
def _run_clips(cfg: EvalConfig, n: int, progress: Progress | None = None) -> list[dict]:
    import ray

    started = start_ray(cfg.ray_address, num_cpus=cfg.num_cpus or max(2, os.cpu_count() or 1), log_to_driver=False)
    try:
        device = resolve_ray_device(cfg.device)
        cfg = replace(cfg, device=str(device))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"idx": i} for i in range(n)], override_num_blocks=max(1, min(n, 4 * cfg.actors)))
        ds = ds.map(
            EvalActor,
            fn_constructor_kwargs={"cfg": cfg},
            compute=ray.data.ActorPoolStrategy(size=max(1, cfg.actors)),
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
    from vssflow.generator import read_model_config
    from vssflow.metrics.held_out import sentence_key, speech_breakdown

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
    progress.stage(f"generating and scoring {len(source)} clips on {max(1, cfg.actors)} actor(s) (each loads the "
                   f"model, ASR {cfg.asr} and embedding {cfg.embedding} first)")  # fmt: skip
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


# ---- report ----------------------------------------------------------------------------------------------------------
def _fmt(v: dict | None, *, with_median: bool = False) -> str:
    if not v or v.get("mean") is None or not math.isfinite(v["mean"]):
        return "–"
    ci, med = v.get("ci95"), v.get("median")
    text = f"{v['mean']:.3f}" + (f" ± {ci:.3f}" if ci is not None and math.isfinite(ci) else "")
    if with_median and med is not None and math.isfinite(med):
        text += f", median {med:.3f}"
    return text + f" (n={v['n']})"


# user-level checks every task gets (issue 13: level within +-2 dB median over clips, <= 0.1 % samples at full scale)
LEVEL = ["level_db_diff", "level_db_abs", "clip_fraction"]
WITH_MEDIAN = ("level_db_diff", "level_db_abs")


PRIMARY = {
    "v2s": ["fd", "kl", "onset_f1", "onset_f1_chance", "onset_f1_over_chance", "onset_precision", "onset_recall",
            "av_offset_abs_s", "class_acc"],
    "tts": ["wer", "cer", "spk_sim", "mcd", "lipsync_corr", "lipsync_conf", "lipsync_offset_abs_s",
            "speech_span_err_s", "duration_err_s", "fd"],
    "joint": ["wer", "cer", "spk_sim", "mcd", "lipsync_corr", "lipsync_offset_abs_s", "onset_f1", "onset_f1_chance",
              "onset_f1_over_chance", "av_offset_abs_s", "class_acc", "kl", "fd"],
}  # fmt: skip
PRIMARY = {task: names + LEVEL for task, names in PRIMARY.items()}


def write_report(report: dict, out: Path) -> None:
    """report.json and report.md, atomically."""
    write_text_atomic(out / "report.json", json.dumps(report, indent=1, default=_json_default))
    write_text_atomic(out / "report.md", render_markdown(report))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def render_markdown(report: dict) -> str:
    from vssflow.metrics.suite import better

    w = report["measured_with"]
    lines = [
        "# vssflow evaluation report",
        "",
        f"Model: `{report['model']['dir']}` (step {report['model']['step']}); data: `{report['config']['data']}`; "
        f"{report['config']['steps']} solver steps, cfg {report['config']['cfg']}, seed {report['config']['seed']}; "
        f"phonemes over the speech span of: {report['config'].get('speech_span', 'data')}.",
        "",
        "## Measured with",
        "",
        f"- ASR (WER/CER): **{w['asr']}**",
        f"- Audio embedding (FD): **{w['fd_embedding']}** (not FAD-VGGish; not comparable to published FAD values)",
        f"- KL: {w['kl_posteriors']}",
        f"- Speaker similarity: {w['speaker']}",
        f"- Lip sync: {w['lipsync']}",
        f"- Sound classes: {w['classifier']}",
        f"- Ground-truth audio: {w['ground_truth_audio']}",
        f"- Ground truth through codec + vocoder: {w.get('gt_vocoded', '–')}",
        "",
        "## Results (mean ± 95 % interval over clips)",
        "",
        "Each metric for the generated audio, for the ground truth through the model's own codec and vocoder (the "
        "best this model can sound) and for the raw ground truth (– where a comparison with itself is 0 by "
        "construction). `level_db_diff`: active-region RMS of the audio minus that of the ground truth (dB; goal "
        "within ±2 dB median); `clip_fraction`: share of samples at full scale (goal ≤ 0.001).",
    ]
    for task, m in report["metrics"].items():
        voc = (report.get("metrics_gt_vocoded") or {}).get(task, {})
        raw = (report.get("metrics_gt_raw") or {}).get(task, {})
        lines += ["", f"### {task}", "", "| metric | better | generated | GT through codec + vocoder | raw GT |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for k in PRIMARY[task]:
            if k in m:
                cells = [_fmt(d.get(k), with_median=k in WITH_MEDIAN) for d in (m, voc, raw)]
                lines.append(f"| {k} | {better(k)} | " + " | ".join(cells) + " |")
    lines += _speech_lines(report.get("speech") or {})
    val = report.get("validation")
    if val:
        lines += ["", "## Metric validation: ground truth vs deliberately broken audio", "",
                  f"Clips: {', '.join(val['clips'])}. A cell is **bold** when the metric is designed to catch that "
                  "breakage; ✓ = the ground truth scores better by the metric's margin.", ""]  # fmt: skip
        perts = ["silence", "shift200", "wrong_speaker", "wrong_words", "wrong_sound"]
        lines += ["| metric | ground truth | " + " | ".join(perts) + " |", "|---" * (2 + len(perts)) + "|"]
        for metric, row in val["table"].items():
            gt = next(iter(row.values()))["gt"]
            cells = []
            for p in perts:
                c = row.get(p)
                if c is None:
                    cells.append("–")
                    continue
                s = f"{c['broken']:.3f} {'✓' if c['separates'] else '✗'}"
                cells.append(f"**{s}**" if c["expected"] else s)
            lines.append(f"| {metric} | {gt:.3f} | " + " | ".join(cells) + " |")
        verdict = "every designed separation holds" if not val["failed"] else f"FAILED: {', '.join(val['failed'])}"
        lines += ["", f"Validation verdict: {verdict}."]
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report["plots"]]
    mf = report.get("mlflow") or {}
    lines += ["", f"MLflow: `{mf.get('tracking_uri')}` run `{mf.get('run_id')}`. Time: {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _speech_lines(speech: dict) -> list[str]:
    """Seen vs unseen sentences and voices (report.md)."""
    if not speech:
        return []
    lines = ["", "## Speech: seen vs unseen", "",
             "A test sentence is *seen* when its normalised transcript is also a training transcript of the same data. "
             "WER of the generated audio / the ground truth through codec + vocoder / the raw ground truth.", "",
             "| task | test sentences | seen in training | group | n | WER generated | WER GT vocoded | WER raw GT |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for task, e in speech.items():
        head = f"| {task} | {e['sentences']} | {e['seen_in_train']} ({e['fraction_seen']:.0%}) |"
        groups = [(f"{p} sentences", g) for p, g in e.get("by_sentence", {}).items()]
        groups += [(f"{p} voices", g) for p, g in e.get("by_voice", {}).items()]
        for name, g in groups:
            wer = [g[v]["wer"] for v in ("generated", "gt_vocoded", "gt_raw")]
            lines.append(f"{head} {name} | {wer[0]['n']} | " + " | ".join(_fmt(x) for x in wer) + " |")
            head = "| | | |"
    if not any(e["train_sentences"] for e in speech.values()):
        lines += ["", "No training transcripts found in the data: every sentence counts as unseen."]
    if not any("by_voice" in e for e in speech.values()):
        lines += ["", "The manifest does not mark held-out voices (`extra.held_out_voice`): no per-voice split."]
    return lines


def write_plots(report: dict, out: Path, cfg: EvalConfig) -> list[str]:
    """Spectrograms (ground truth vs generated) of a few clips and the training run's curves; relative paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vssflow.audio.io import read_audio
    from vssflow.audio.mel import log_mel

    plots = []
    (out / "plots").mkdir(exist_ok=True)
    shown = {}
    for c in report["clips"]:
        if shown.get(c["task"], 0) >= max(1, cfg.spectrograms // len(cfg.tasks)) and sum(shown.values()) > 0:
            continue
        shown[c["task"]] = shown.get(c["task"], 0) + 1
        panels = [("ground truth", "gt"), ("ground truth through codec + vocoder", "gt_vocoded"), ("generated", "")]
        panels = [(t, read_audio(out / "audio" / f"{c['clip_id']}{'.' + s if s else ''}.wav")) for t, s in panels]
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.2 * len(panels)), squeeze=False)
        for ax, (title, w) in zip(axes[:, 0], panels, strict=True):
            ax.imshow(np.asarray(log_mel(w)).T, origin="lower", aspect="auto", cmap="magma")
            ax.set_title(f"{c['clip_id']} ({c['task']}): {title}", fontsize=9)
            ax.set_ylabel("mel bin")
        axes[-1, 0].set_xlabel("frame (10 ms)")
        fig.tight_layout()
        name = f"plots/spec_{c['clip_id']}.png"
        fig.savefig(out / name, dpi=80)
        plt.close(fig)
        plots.append(name)
        if sum(shown.values()) >= cfg.spectrograms:
            break
    curves = _training_curves(report, cfg)
    if curves:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for k, pts in sorted(curves.items()):
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=k)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "plots/training_curves.png", dpi=80)
        plt.close(fig)
        plots.append("plots/training_curves.png")
    return plots


def _training_curves(report: dict, cfg: EvalConfig) -> dict[str, list[tuple[int, float]]]:
    run_id = cfg.train_run_id or (report["model"].get("info") or {}).get("mlflow_run_id")
    if not run_id or not cfg.mlflow_uri:
        return {}
    try:
        from pipelines.mlflow_utils import run_metrics

        m = run_metrics(run_id, tracking_uri=cfg.mlflow_uri)
    except Exception:  # the training store is elsewhere: curves are optional
        return {}
    return {k: v for k, v in m.items() if k.startswith("loss")}


def log_to_mlflow(report: dict, out: Path, cfg: EvalConfig, tracking_uri: str) -> str:
    """One run: params (config, model, measured-with), metrics ``<task>/<metric>``, report.

    When the store holds the training run of the model (``--train-run-id``, else the model's own), the evaluation is
    a child run of it, in its experiment (unless ``cfg.experiment`` names one): the UI shows the training with its
    evaluations under it. Otherwise it goes to ``cfg.experiment`` or ``vssflow-eval``."""
    from pipelines import mlflow_utils

    params = {"eval": {k: v for k, v in report["config"].items() if k != "tags"}, "measured_with":
              report["measured_with"], "model_step": report["model"]["step"]}  # fmt: skip
    tags = {"kind": "evaluation", **{k: str(v) for k, v in cfg.tags.items()}}
    train_run = cfg.train_run_id or (report["model"].get("info") or {}).get("mlflow_run_id")
    train_experiment = mlflow_utils.run_experiment(train_run, tracking_uri=tracking_uri) if train_run else None
    if train_experiment is not None:
        tags |= {"mlflow.parentRunId": train_run, "vssflow.train_run_id": train_run}
    run_id = mlflow_utils.create_run(
        tracking_uri, experiment=cfg.experiment or train_experiment or EVAL_EXPERIMENT,
        run_name=cfg.run_name or f"eval-{Path(cfg.model).name}", params=params, tags=tags,
    )  # fmt: skip
    with mlflow_utils.failed_on_error(run_id, tracking_uri=tracking_uri):  # not left RUNNING when logging fails
        _log_report(run_id, report, out, tracking_uri)
    mlflow_utils.finish_run(run_id, tracking_uri=tracking_uri)
    return run_id


def _log_report(run_id: str, report: dict, out: Path, tracking_uri: str) -> None:
    from pipelines import mlflow_utils

    flat = {f"{t}/{k}": v["mean"] for t, m in report["metrics"].items() for k, v in m.items()}
    flat |= {f"{t}/gt_vocoded/{k}": v["mean"] for t, m in report.get("metrics_gt_vocoded", {}).items()
             for k, v in m.items()}  # fmt: skip
    flat |= {f"{t}/{k}_median": m[k]["median"] for t, m in report["metrics"].items() for k in WITH_MEDIAN if k in m}
    if report.get("validation"):
        flat["validation/failed"] = float(len(report["validation"]["failed"]))
    mlflow_utils.log_run_metrics(run_id, flat, tracking_uri=tracking_uri, step=int(report["model"]["step"] or 0))
    mlflow_utils.log_run_artifacts(run_id, out / "plots", tracking_uri=tracking_uri, artifact_path="plots")
    write_report(report, out)
    for name in ("report.json", "report.md"):
        mlflow_utils.log_run_file(run_id, out / name, tracking_uri=tracking_uri, artifact_path="report")


# ---- CLI -------------------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = EvalConfig(model="", data="", out="")
    add_model(p)
    p.add_argument("--data", required=True, help="shard directory (vssflow preprocess --out) or a manifest")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--manifest", default=None, help="with shards: the manifest, for the ground-truth audio")
    p.add_argument("--split", default=d.split, help="split to evaluate ('' = all); falls back to all when empty")
    add_tasks(p, default=d.tasks)
    p.add_argument("--max-clips", type=int, default=d.max_clips, help="clips per task")
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
    p.add_argument("--actors", type=int, default=d.actors, help="evaluation actors (each loads the models once)")
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
