"""``vssflow generate-batch``: generate audio for a whole manifest (videos) or shard set (features) with Ray Data.

    vssflow generate-batch MANIFEST.jsonl|SHARD_DIR|FILE.parquet --model MODEL --out DIR [--steps N --cfg S --seed K]
        [--actors 2 --batch-size 4] [--mp4] [--split test] [--tasks v2s,tts]

An actor pool (``ActorPoolStrategy``) holds the generator (and, for videos, the feature extractors), loaded once per
actor; each actor takes batches of clips, builds their features, generates them together (grouped by task), and
writes ``DIR/<clip_id>.wav`` (and ``.mp4`` with ``--mp4``: the video stream copied, for rows that use the whole
video) atomically. A shard set or Parquet file may be an ``s3://``/``gs://`` URI (:mod:`vssflow.storage`); the
output directory is local.

A manifest row may give ``speech_span`` (an extra column: "START,END" or ``[start, end]``, seconds from the row's
``start``): where its words are. Without it the phonemes are laid over the mouth activity of the clip's lip
stream, else the whole clip (:func:`vssflow.inference.with_speech_span`); a malformed span fails that row.

Resumable like preprocessing: a clip whose output exists is complete (atomic writes) and is skipped, so rerunning
after a crash or a kill does only the rest. Each clip's seed is derived from ``--seed`` and its ``clip_id``, so a
resumed run writes the same audio as an uninterrupted one. Clips that fail (bad video, bad transcript) are listed in
``DIR/_failed.jsonl`` with a one-line reason and retried by the next run; ``DIR/_summary.json`` has the counts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pipelines.devices import load_actor_generator, map_on_actors
from pipelines.ray_runtime import add_ray_arguments, start_ray
from vssflow.commands.flags import add_mlflow_uri, add_model, add_tasks, mlflow_uri
from vssflow.device import DEVICE_HELP
from vssflow.errors import InputError

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class BatchConfig:
    """Options of a batch generation run (see the module docstring)."""

    source: str
    model: str
    out: str
    steps: int | None = None
    cfg: float | None = None
    seed: int = 0
    actors: int = 1
    actor_cpus: float = 1.0
    batch_size: int = 4
    mp4: bool = False
    split: str | None = None
    tasks: tuple[str, ...] | None = None
    device: str = "cpu"  # --device auto|cpu|cuda, resolved against the cluster by run_generate_batch


def clip_seed(seed: int, clip_id: str) -> int:
    """The seed of one clip: fixed by the run's seed and the clip id (not by batch, actor or resume)."""
    return (zlib.crc32(clip_id.encode()) ^ int(seed)) & 0x7FFFFFFF


def output_path(out: str | os.PathLike, clip_id: str, suffix: str = ".wav") -> Path:
    """Where a clip's audio goes (the id made safe as a file name: no directories, no dot-dot)."""
    name = _SAFE.sub("_", clip_id).strip("._") or f"clip-{zlib.crc32(clip_id.encode()):08x}"
    return Path(out) / f"{name}{suffix}"


# -------------------------------------------------------------------------------------------------------------- jobs


def _span_text(value) -> str:
    """A manifest's ``speech_span`` cell as text for the job ("" = not given); checked in the actor, so a bad one
    fails its row only."""
    if value is None or value == "":
        return ""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def load_jobs(source: str | os.PathLike, *, split: str | None = None, tasks=None) -> list[dict]:
    """One job per clip: ``{"clip_id", "kind": "video"|"shard", ...}`` from a manifest or Parquet shards."""
    src = Path(source)
    jobs = []
    if src.suffix.lower() in (".jsonl", ".json", ".csv"):
        from vssflow.data.manifest import read_manifest

        for r in read_manifest(src):
            if (split and r.split != split) or (tasks and r.task not in tasks):
                continue
            jobs.append({"clip_id": r.clip_id, "kind": "video", "video": r.video, "task": r.task,
                         "transcript": r.transcript or "", "reference_audio": r.reference_audio or "",
                         "start": float(r.start or 0.0), "end": float("nan") if r.end is None else float(r.end),
                         "speech_span": _span_text(r.extra.get("speech_span")), "file": "", "row": -1})  # fmt: skip
        return jobs
    from vssflow.data.shard_set import ShardSet

    shards = ShardSet(source, check=False)  # a shard set (listed shards, checked) or one .parquet file
    if not shards.files:
        raise InputError("no manifest (.jsonl/.csv) or Parquet shards found", source=str(src))
    for f, t in zip(shards.files, shards.tables(["clip_id", "task", "split"]), strict=True):
        cols = [t.column(c).to_pylist() for c in ("clip_id", "task", "split")]
        for i, (cid, task, sp) in enumerate(zip(*cols, strict=True)):
            if (split and sp != split) or (tasks and task not in tasks):
                continue
            jobs.append({"clip_id": cid, "kind": "shard", "video": "", "task": task, "transcript": "",
                         "reference_audio": "", "start": 0.0, "end": float("nan"), "speech_span": "", "file": f.uri,
                         "row": i})  # fmt: skip
    return jobs


# ------------------------------------------------------------------------------------------------------------- actor


class GenerateActor:
    """Ray Data actor: loads the generator once; per batch of jobs: features -> generate (by task) -> files."""

    def __init__(self, config: BatchConfig):
        self.config = config
        self.gen = load_actor_generator(config.model, config.device, threads=config.actor_cpus)
        self._table: tuple[str, object] | None = None

    def _features(self, job: dict):
        from vssflow.inference import check_speech_span, with_speech_span
        from vssflow.windows import slice_features

        if job["kind"] == "shard":
            from vssflow.data.schema import row_to_features, table_to_rows
            from vssflow.data.shard_set import read_shard

            if self._table is None or self._table[0] != job["file"]:
                self._table = (job["file"], read_shard(job["file"]))
            f = row_to_features(table_to_rows(self._table[1].slice(int(job["row"]), 1))[0])
            f.mel = None
            f.sem = None if f.sem is None else np.asarray(f.sem, np.float32)
            return with_speech_span(f, f.speech_span, given_as="features")  # the stored span, else the mouth's
        from vssflow.inference import prepare

        where = f"{job['clip_id']}: speech_span"
        span = str(job.get("speech_span") or "") or None
        check_speech_span(span, source=where)  # a malformed span fails the row before any decoding
        f = prepare(job["video"], task=job["task"], transcript=job["transcript"] or None,
                    reference_voice=job["reference_audio"] or None, extractors=self.gen.extractors,
                    clip_id=job["clip_id"])  # fmt: skip
        start, end = float(job["start"]), float(job["end"])
        end = f.duration_s if math.isnan(end) else min(end, f.duration_s)
        if start > 0 or end < f.duration_s - 1e-6:
            whole = f
            f = slice_features(f, start, end, layout=self.gen.config.phoneme_layout)
            # the row's transcript is what is said in the row's clip: all of its phonemes, not a share by time
            f = replace(f, phonemes=whole.phonemes, phoneme_durations=whole.phoneme_durations)
        return with_speech_span(f, span, source=where)  # the row's span (seconds from start), else the mouth's

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vssflow.audio.io import write_audio

        jobs = [{k: batch[k][i] for k in batch} for i in range(len(batch["clip_id"]))]
        status, error, path, seconds = [""] * len(jobs), [""] * len(jobs), [""] * len(jobs), [0.0] * len(jobs)
        feats: dict[int, object] = {}
        for i, job in enumerate(jobs):
            try:
                feats[i] = self._features(job)
            except InputError as e:
                status[i], error[i] = "failed", str(e).splitlines()[0]
        by_task: dict[str, list[int]] = {}
        for i in feats:
            by_task.setdefault(feats[i].task, []).append(i)
        for idx in by_task.values():
            t0 = time.perf_counter()
            try:
                seeds = [clip_seed(self.config.seed, str(jobs[i]["clip_id"])) for i in idx]
                clips = [feats[i] for i in idx]
                wavs = self.gen.generate(clips, steps=self.config.steps, cfg=self.config.cfg, seed=seeds)
            except InputError as e:
                for i in idx:
                    status[i], error[i] = "failed", str(e).splitlines()[0]
                continue
            dt = (time.perf_counter() - t0) / len(idx)
            for i, wav in zip(idx, wavs, strict=True):
                cid = str(jobs[i]["clip_id"])
                whole = "window" not in feats[i].meta  # slice_features marks a cut clip
                if self.config.mp4 and jobs[i]["kind"] == "video" and whole:  # a cut clip has no video to copy
                    from vssflow.media.mux import mux_audio

                    mux_audio(str(jobs[i]["video"]), wav, output_path(self.config.out, cid, ".mp4"))
                path[i] = str(write_audio(output_path(self.config.out, cid), wav))  # last: marks the clip done
                status[i], seconds[i] = "ok", dt
        return {"clip_id": np.array([str(j["clip_id"]) for j in jobs]), "status": np.array(status),
                "error": np.array(error), "path": np.array(path), "seconds": np.array(seconds)}  # fmt: skip


# ------------------------------------------------------------------------------------------------------------ driver


def _atomic_json(path: Path, obj, *, lines: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = "".join(json.dumps(o) + "\n" for o in obj) if lines else json.dumps(obj, indent=2)
    tmp.write_text(text)
    os.replace(tmp, path)


def run_generate_batch(config: BatchConfig, *, log=print) -> dict:
    """Generate every clip of ``config.source`` not already in ``config.out``. Ray must be initialised (or is
    started locally). Returns the summary written to ``out/_summary.json``."""

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = load_jobs(config.source, split=config.split, tasks=config.tasks)
    todo = [j for j in jobs if not output_path(out, j["clip_id"]).exists()]
    log(f"vssflow generate-batch: {len(jobs)} clips in {config.source}; {len(jobs) - len(todo)} already done; "
        f"{len(todo)} to generate with {config.actors} actor(s) -> {out}")  # fmt: skip
    t0 = time.perf_counter()
    results = []
    if todo:
        config, rows = map_on_actors(todo, GenerateActor, config, batch_size=config.batch_size)
        for r in rows:
            results.append(r)
            if len(results) % 10 == 0 or len(results) == len(todo):
                log(f"  {len(results)}/{len(todo)} clips")
    failed = [r for r in results if r["status"] != "ok"]
    _atomic_json(out / "_failed.jsonl", [{"clip_id": r["clip_id"], "error": r["error"]} for r in failed], lines=True)
    summary = {"clips": len(jobs), "skipped": len(jobs) - len(todo), "generated": len(results) - len(failed),
               "failed": len(failed), "seconds": round(time.perf_counter() - t0, 2),
               "config": {**asdict(config), "tasks": list(config.tasks or [])}}  # fmt: skip
    _atomic_json(out / "_summary.json", summary)
    log(f"vssflow generate-batch: generated {summary['generated']}, skipped {summary['skipped']}, failed "
        f"{summary['failed']} in {summary['seconds']:.1f} s; outputs in {out}"
        + (f"; failures in {out / '_failed.jsonl'}" if failed else ""))  # fmt: skip
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        help="manifest (.jsonl/.csv) of videos, or a shard set / Parquet file of features "
        "(a local path or an s3:// / gs:// URI)",
    )
    add_model(p)
    add_mlflow_uri(p, local="none (only an MLflow URI given as --model needs one)", old="--tracking-uri")
    p.add_argument("--out", required=True, help="output directory (<clip_id>.wav; rerun to resume)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--actors", type=int, default=1, help="generator actors (each loads the model once)")
    p.add_argument("--actor-cpus", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=4, help="clips per actor call")
    p.add_argument("--mp4", action="store_true", help="also write <clip_id>.mp4 (video copied + new audio)")
    p.add_argument("--split", default=None, help="only rows of this split (e.g. test)")
    add_tasks(p)
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP}; cuda: one GPU per actor, bf16")
    add_ray_arguments(p)


def run(args: argparse.Namespace) -> int:

    from pipelines.model_uri import resolve_model_dir
    from vssflow.model_dir import read_model_config

    tasks = args.tasks
    model = resolve_model_dir(args.model, tracking_uri=mlflow_uri(args))
    read_model_config(model)
    start_ray(args.ray_address, num_cpus=args.num_cpus)
    config = BatchConfig(source=args.source, model=str(Path(model).resolve()), out=args.out, steps=args.steps,
                         cfg=args.cfg, seed=args.seed, actors=args.actors, actor_cpus=args.actor_cpus,
                         batch_size=args.batch_size, mp4=args.mp4, split=args.split, tasks=tasks,
                         device=args.device)  # fmt: skip
    summary = run_generate_batch(config)
    return 0 if summary["failed"] == 0 else 1
