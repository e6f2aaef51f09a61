"""``vssflow preprocess``: a Ray Data pipeline from a manifest of videos to Parquet feature shards.

Same code on a laptop (a local Ray started here) and on a cluster (``--ray-address``). This module is the job: its
config, the driver and the CLI. The stages, thin adapters over :mod:`vssflow.features.extract`, are
:mod:`pipelines.preprocess_stages`; how they are spread over the cluster is :mod:`pipelines.preprocess_plan`::

    manifest rows (not yet in a complete shard)
      -> decode   (probe, frames at 10/25 fps, target audio, reference voice)  \
      -> phonemes (transcript -> ids)                                           > cpu_stages
      -> mel      (target audio -> log-mel)                                    /
      -> encode   (actor pool: semantic encoder + mouth crops + speaker; models load once per actor; the frames
                   of several clips per call)
      -> write    (tasks: rows grouped by task and duration bucket -> atomic Parquet shards + quarantine)
      -> driver   (lists complete shards in _manifest.json; prints the summary)

On CPUs each encoder actor (one per CPU) runs cpu_stages on its own clips, so the frames never leave the process
that decodes them; on GPUs decode tasks on the CPUs feed actors that share the GPUs.

A row that fails a stage carries its error to the writer and lands in ``quarantine/``; the job goes on. Rerunning
the same command skips clips already in a listed shard (or quarantine), so a crash or ``kill -9`` at any moment is
finished by a rerun with no duplicate and no missing row. See ``docs/data.md``.

``--out`` is a local directory or an ``s3://``/``gs://`` URI (:mod:`vssflow.storage`; the S3 endpoint of MinIO from
``AWS_ENDPOINT_URL``): writers on any node put shards straight into it, atomically.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from pipelines.devices import resolve_ray_device
from pipelines.preprocess_plan import encoder_plan, parse_actors
from pipelines.preprocess_stages import EncodeActor, ShardWriter, cpu_stages
from pipelines.progress import Progress
from pipelines.quarantine import read_manifest_lenient, write_quarantine
from pipelines.ray_runtime import add_ray_arguments, start_ray
from vssflow.commands.flags import add_mlflow_uri, mlflow_uri
from vssflow.data import schema as S
from vssflow.data.shards import (
    ShardManifest,
    config_hash,
    done_clip_ids,
    recover,
    set_latest,
    version_dir,
    write_table_atomic,
)
from vssflow.device import DEVICE_HELP
from vssflow.features.extract import ExtractConfig, Extractors, row_dict
from vssflow.files import exclusive_lock
from vssflow.storage import Location, location

PREPROCESS_LOCK = ".preprocess.lock"  # in --out: one job at a time (run_preprocess)


@dataclass(frozen=True)
class PreprocessConfig:
    """One preprocessing job. ``extract`` decides the features (and the config hash); the rest is execution."""

    manifest: str
    out: str
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    ray_address: str | None = None
    num_cpus: int | None = None  # local Ray only
    actors: int | tuple[int, int] | None = None  # encoder actors: N or (MIN, MAX) (None: preprocess_plan decides)
    encoder_gpus: float | None = None  # GPUs of the encoder pool in all (cuda; None: the cluster's)
    encode_batch: int | None = None  # clips per encoder call (None: 8 on cuda, 4 on CPU)
    rows_per_shard: int = 64
    row_group_rows: int = 32
    clips_per_task: int = 4
    mlflow_uri: str | None = None
    progress: bool = True


# ------------------------------------------------------------------------------------------------ driver
@dataclass
class Summary:
    rows_in: int = 0
    skipped: int = 0  # already in a complete shard or quarantine
    written: int = 0
    quarantined: Counter = field(default_factory=Counter)
    shards: int = 0
    seconds: float = 0.0
    pipeline_seconds: float = 0.0  # Ray Data execution only (no Ray start, no driver-side model check)
    timeline: list = field(default_factory=list)  # (seconds into the execution, clips done) at each result
    total_rows: int = 0  # rows in the whole shard set after this run
    out_dir: str = ""
    recovered: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        q = ", ".join(f"{k}={v}" for k, v in sorted(self.quarantined.items())) or "none"
        rate = self.written / self.seconds if self.seconds else 0.0
        return [
            f"rows in: {self.rows_in}  already done: {self.skipped}  written: {self.written}  "
            f"quarantined: {sum(self.quarantined.values())} ({q})",
            f"shards written: {self.shards}  shard set: {self.total_rows} rows  time: {self.seconds:.1f} s "
            f"({rate:.2f} clips/s)",
            f"output: {self.out_dir}",
        ]


def _dedupe(entry: dict, seen: set[str], vdir: str | os.PathLike | Location) -> dict | None:
    """A shard whose clips are already listed (a retried task): rewrite it without them, or drop it."""
    import pyarrow.parquet as pq

    dup = set(entry["clip_ids"]) & seen
    if not dup:
        return entry
    path = location(vdir) / entry["file"]
    with path.open_input() as f:
        table = pq.read_table(f)
    keep = [i for i, c in enumerate(table.column("clip_id").to_pylist()) if c not in dup]
    if not keep:
        path.unlink(missing_ok=True)
        return None
    new = write_table_atomic(table.take(keep), path)
    return {**entry, **new, "clip_ids": [c for c in entry["clip_ids"] if c not in dup]}


@functools.lru_cache(maxsize=4)
def _describe(extract: ExtractConfig) -> tuple[dict, int]:
    """Load every model once on the driver: fails fast on a missing asset, and names what made the features."""
    probe = Extractors.load(replace(extract, device="cpu"), parts=("visual", "mouth", "speaker", "g2p"))
    return probe.describe(), probe.sem_dim


def run_preprocess(cfg: PreprocessConfig, *, log=print) -> Summary:
    """Run one preprocessing job (resumable); return its summary. See the module docstring.

    Two jobs on one local ``--out`` would delete each other's files (:func:`~vssflow.data.shards.recover` removes
    the temporary and unlisted files it finds): the second refuses at once, in one line. The lock is an ``flock``
    on ``<out>/.preprocess.lock``, dropped by the kernel when its holder dies. An object-store ``--out`` has no lock:
    one job per ``--out`` there is the operator's rule (docs/security.md).
    """
    out = location(cfg.out)
    if not out.is_local:
        return _run_preprocess(cfg, log=log)
    with exclusive_lock(os.path.join(out.path, PREPROCESS_LOCK), wait=False, what="another `vssflow preprocess`"):
        return _run_preprocess(cfg, log=log)


def _run_preprocess(cfg: PreprocessConfig, *, log=print) -> Summary:
    t0 = time.perf_counter()
    rows, bad = read_manifest_lenient(cfg.manifest)
    summary = Summary(rows_in=len(rows) + len(bad))
    described, sem_dim = _describe(cfg.extract)
    hashed = {"schema_version": S.SCHEMA_VERSION, "extract": cfg.extract.to_dict(), "extractors": described}
    chash = config_hash(hashed)
    vdir = version_dir(cfg.out, chash)
    man = ShardManifest(vdir, config_hash=chash, config=hashed)
    man.data["extractors"] = described
    summary.recovered = recover(man)
    done = done_clip_ids(man)
    summary.out_dir = str(vdir)
    todo = [row_dict(r) for r in rows if r.clip_id not in done]
    bad = [b for b in bad if b["clip_id"] not in done]
    summary.skipped = summary.rows_in - len(todo) - len(bad)
    set_latest(cfg.out, vdir)
    man.save()
    log(f"vssflow preprocess: {summary.rows_in} rows ({summary.skipped} already done) -> {vdir}")
    if bad:
        e = write_quarantine(bad, vdir)
        man.add(e, kind="quarantine")
        summary.quarantined.update(e["reasons"])
        man.save()
    if todo:
        _run_ray(cfg, todo, vdir, man, summary, sem_dim=sem_dim, described=described, chash=chash, config=hashed,
                 log=log)  # fmt: skip
    man.save()
    summary.total_rows = man.data["rows"]
    summary.seconds = time.perf_counter() - t0
    for line in summary.lines():
        log(line)
    if cfg.mlflow_uri:
        log_to_mlflow(cfg, summary, hashed)
    return summary


def _run_ray(cfg, todo, vdir, man, summary, *, sem_dim, described, chash, config, log=print) -> None:
    import ray

    started = start_ray(cfg.ray_address, num_cpus=cfg.num_cpus, log_to_driver=False)
    try:
        ctx = ray.data.DataContext.get_current()
        # Ray Data's bars on a terminal; in a log (a pipe, a file) it would print a 9-line block every 10 s instead,
        # so there the lines of Progress below say how far it is
        ctx.enable_progress_bars = cfg.progress and sys.stdout.isatty()
        device = resolve_ray_device(cfg.extract.device)
        plan = encoder_plan(ray.cluster_resources(), device=device, actors=cfg.actors, encoder_gpus=cfg.encoder_gpus,
                            clips_per_call=cfg.encode_batch).for_job(len(todo))  # fmt: skip
        todo = sorted(todo, key=lambda r: (r["task"], r["end"], r["clip_id"]))  # neighbours share a bucket
        per_block = plan.clips_per_call if plan.decode_in_actors else max(1, cfg.clips_per_task)
        blocks = max(1, min(len(todo), -(-len(todo) // per_block)))
        ec = replace(cfg.extract, device=str(device))  # what each encoder actor loads its models on
        file_md = S.file_metadata(
            config_hash=chash, config=config, extractors=described, created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")
        )
        ds = ray.data.from_items(todo, override_num_blocks=blocks)
        if not plan.decode_in_actors:
            # GPU encoders: the CPU stages run as tasks on the CPUs the actors leave (Ray Data spreads them over the
            # nodes), kept out of the actor pool (Ray Data fuses a task stage into the next actor pool only when
            # their resource requests are equal; the memory requests differ)
            ds = ds.map(cpu_stages, fn_kwargs={"config": ec}, num_cpus=plan.cpus_per_task, memory=plan.task_memory,
                        concurrency=plan.decode_tasks)  # fmt: skip
        sizes = ({"size": plan.min_actors} if plan.min_actors == plan.max_actors
                 else {"min_size": plan.min_actors, "max_size": plan.max_actors})  # fmt: skip
        pool = ray.data.ActorPoolStrategy(**sizes, max_tasks_in_flight_per_actor=plan.batches_in_flight)
        ds = ds.map_batches(
            EncodeActor,
            fn_constructor_kwargs={
                "config": ec,
                "decode": plan.decode_in_actors,
                "sem_dim": sem_dim,
                "threads": max(1, int(plan.cpus_per_actor)),
            },  # fmt: skip
            compute=pool,
            batch_size=plan.clips_per_call,
            batch_format="numpy",
            num_cpus=plan.cpus_per_actor,
            num_gpus=plan.gpus_per_actor,  # a share of a GPU: several actors (fed by CPU decode tasks) per GPU
            memory=plan.actor_memory,
        )
        wkw = {"vdir": vdir, "sem_dim": sem_dim, "lip_dim": 0, "file_md": file_md}
        # writers are actors: a task in a worker beyond the CPUs the encoders hold ran in a fresh process each time
        # (Ray ends idle workers over its soft limit after a second), importing the feature code anew (~1.7 CPU s)
        ds = ds.map_batches(
            ShardWriter,
            fn_constructor_kwargs={**wkw, "row_group_rows": cfg.row_group_rows},
            compute=ray.data.ActorPoolStrategy(size=plan.writers),
            batch_size=cfg.rows_per_shard,
            batch_format="numpy",
            num_cpus=plan.writer_cpus,
            memory=plan.task_memory,
        )
        seen = done_clip_ids(man)
        done0 = set(seen)
        last_save = t_exec = time.monotonic()
        progress = Progress(len(todo), log, what="vssflow preprocess", unit="clip")
        progress.stage(plan.describe(device))
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            before = len(seen)
            for raw in batch["entry"]:
                e = json.loads(raw)
                if e["kind"] == "quarantine":
                    man.add(e, kind="quarantine")
                    summary.quarantined.update(e["reasons"])
                    seen.update(e["clip_ids"])
                    continue
                e = _dedupe(e, seen, vdir)
                if e is None:
                    continue
                man.add(e)
                seen.update(e["clip_ids"])
                summary.written += e["rows"]
                summary.shards += 1
            progress.advance(len(seen) - before, f" ({summary.shards} shards written)")
            summary.timeline.append((time.monotonic() - t_exec, len(seen) - len(done0)))
            if time.monotonic() - last_save > 2.0:  # unlisted complete shards are adopted by recover() anyway
                man.save()
                last_save = time.monotonic()
        summary.pipeline_seconds = time.monotonic() - t_exec
    finally:
        if started:
            ray.shutdown()


def log_to_mlflow(cfg: PreprocessConfig, summary: Summary, config: dict) -> None:
    """Optional hook: one MLflow run with the counts, timings and config (only with ``--mlflow-uri``)."""
    import mlflow

    from pipelines.mlflow_utils import get_or_create_experiment

    mlflow.set_tracking_uri(cfg.mlflow_uri)
    # created with its artifacts beside a SQLite store; set_experiment(name) would put them in ./mlruns of the cwd
    mlflow.set_experiment(experiment_id=get_or_create_experiment(cfg.mlflow_uri, "vssflow-preprocess"))
    with mlflow.start_run(run_name=f"preprocess-{location(summary.out_dir).name}"):
        flat = {f"extract.{k}": v for k, v in config["extract"].items()}
        mlflow.log_params({**flat, "manifest": cfg.manifest, "out": summary.out_dir, "actors": str(cfg.actors)})
        metrics = {
            "rows_in": summary.rows_in,
            "rows_skipped": summary.skipped,
            "rows_written": summary.written,
            "rows_quarantined": sum(summary.quarantined.values()),
            "shards_written": summary.shards,
            "seconds": summary.seconds,
            "clips_per_s": summary.written / summary.seconds if summary.seconds else 0.0,
        }
        metrics.update({f"quarantined.{k}": v for k, v in summary.quarantined.items()})
        mlflow.log_metrics(metrics)
        mlflow.log_dict(config, "preprocess_config.json")


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="manifest of clips (.jsonl or .csv)")
    p.add_argument("--out", required=True,
                   help="shard directory or s3:// / gs:// URI (a versioned subdirectory per config)")  # fmt: skip
    add_ray_arguments(p)
    p.add_argument("--encoder", default="mobilenetv2", help="'mobilenetv2' or a local CLIPVisionModel directory")
    p.add_argument("--speaker-encoder", default="resemblyzer", help="'resemblyzer' or a trained encoder directory")
    p.add_argument("--g2p", default="espeak", choices=("espeak", "gruut", "cmudict"), help="G2P backend")
    p.add_argument("--no-lips", action="store_true", help="do not extract mouth crops")
    p.add_argument("--no-sync", action="store_true", help="do not extract the 25 fps sync thumbnails")
    p.add_argument("--device", default="auto", help=f"encoders: {DEVICE_HELP} (decoding stays on CPUs)")
    p.add_argument(
        "--encoder-actors",
        "--actors",
        dest="actors",
        default=None,
        help="encoder actors (models load once per actor): N, or MIN,MAX to autoscale (default one per CPU on "
        "CPU, each decoding its own clips; 4 per GPU on cuda)",
    )
    p.add_argument(
        "--encoder-gpus",
        type=float,
        default=None,
        help="cuda: GPUs the encoder actors share in all (default: every GPU of the cluster)",
    )
    p.add_argument(
        "--encode-batch",
        type=int,
        default=None,
        help="clips per encoder call, frames batched across them (default 8 on cuda, 4 on CPU)",
    )
    p.add_argument("--rows-per-shard", type=int, default=64, help="clips written together (per task and bucket)")
    p.add_argument("--row-group-rows", type=int, default=32, help="Parquet row group size (rows)")
    p.add_argument("--clips-per-task", type=int, default=4, help="clips per decode task (cuda)")
    add_mlflow_uri(p, local="no logging")  # counts, timings and config
    p.add_argument("--no-progress", action="store_true", help="hide Ray Data progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = PreprocessConfig(
        manifest=args.manifest,
        out=args.out,
        extract=ExtractConfig(
            encoder=args.encoder,
            speaker_encoder=args.speaker_encoder,
            g2p_backend=args.g2p,
            lips=not args.no_lips,
            sync=not args.no_sync,
            device=args.device,
        ),
        ray_address=args.ray_address,
        num_cpus=args.num_cpus,
        actors=parse_actors(args.actors),
        encoder_gpus=args.encoder_gpus,
        encode_batch=args.encode_batch,
        rows_per_shard=args.rows_per_shard,
        row_group_rows=args.row_group_rows,
        clips_per_task=args.clips_per_task,
        mlflow_uri=mlflow_uri(args),
        progress=not args.no_progress,
    )
    summary = run_preprocess(cfg)
    if summary.total_rows == 0:
        print("vssflow preprocess: error: no clip could be processed; see the quarantine reasons", file=sys.stderr)
        return 1
    return 0
