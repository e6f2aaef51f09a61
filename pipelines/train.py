"""``vssflow train``: joint V2S + VisualTTS training with Ray Train (TorchTrainer) + DeepSpeed, tracked in MLflow.

    vssflow train --data SHARDS_DIR --preset tiny --workers 2 --max-steps 200 --out MODEL_DIR
                  [--deepspeed zero0|zero1|zero2|zero3|ddp] [--mlflow-uri URI] [--ray-address auto]
                  [--resume RUN_DIR] [--init MODEL_DIR [--lora-rank 8]]

The driver (this module) resolves the config once, fits the latent codec's statistics on the training mels (the shard
set and what is fitted to it: :mod:`pipelines.train_shards`), opens the MLflow run (params: the resolved config and
the data version), builds the Ray dataset of the shards and the ``TorchTrainer``; the workers run
:func:`pipelines.train_loop.train_loop_per_worker`. At the end the EMA model is written with ``save_pretrained`` and
registered in the MLflow model registry.

A run directory (``runs/<name>`` by default) holds ``run.json`` (what ``--resume`` needs), Ray Train's checkpoints
(``ray/<name>/step_*``) and the codec statistics. MLflow: ``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``, else
``./runs/mlflow.db``, the store ``vssflow evaluate`` also writes to by default
(:func:`pipelines.mlflow_utils.store_uri`).

Shared storage by URI (:mod:`vssflow.storage`): ``--data`` may be an ``s3://``/``gs://`` URI of a shard set, and
``--storage`` puts Ray Train's checkpoints there instead of ``<run-dir>/ray`` (``RunConfig(storage_path=...,
storage_filesystem=...)``), so a worker group restarted on another node resumes from the bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.devices import resolve_ray_device
from pipelines.ray_runtime import add_ray_arguments, start_ray
from pipelines.train_config import RunContext, TrainJobConfig
from pipelines.train_loop import ENGINES, train_loop_per_worker
from pipelines.train_shards import (
    build_dataset,
    fit_batches_to_data,
    fit_codec,
    fit_model_to_data,
    open_shards,
    train_task_counts,
    validation_clips,
)
from vssflow.commands.flags import LOCAL_STORE_HELP, add_deprecated, add_mix, add_mlflow_uri, mlflow_uri
from vssflow.device import DEVICE_HELP, Device, resolve_device
from vssflow.errors import InputError, MissingFileError
from vssflow.model.config import PRESETS
from vssflow.storage import Location, location

RUN_JSON = "run.json"
# RAY_TRAIN_ENABLE_PRINT_PATCH=0: a worker's print goes to its stdout once. Ray Train's patched print logs it through
# the root logger (a console handler) and also tees it to sys.stdout when that is wrapped, as it is in our workers:
# every "vssflow train: step" line (and DeepSpeed's prints) reached the console twice.
WORKER_ENV = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0", "TOKENIZERS_PARALLELISM": "false",
              "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}  # fmt: skip
# Ray Train's own console lines at WARNING and above: a failure, a restart and a slow collective are still said; the
# four "Checkpoint successfully created" / "Reporting training result" lines of every checkpoint are not.
RAY_TRAIN_LOG_LEVEL = "WARNING"


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    out: Path | None
    mlflow_run_id: str
    tracking_uri: str
    model_uri: str | None
    checkpoint: str | None
    steps: int
    engine: str
    seconds: float


# ---- the job -------------------------------------------------------------------------------------------------------


def training_device(spec: str | Device, ray_address: str | None) -> Device:
    """``--device`` of a training job. A local Ray trains on this machine's GPUs; on a cluster (``ray_address``)
    ``auto`` asks the cluster for GPUs (connecting to it) and ``cuda`` is taken as given. Ray Train hands each
    worker its own GPU, so ``cuda:N`` is refused."""
    if isinstance(spec, Device) or spec.strip().lower() not in ("auto", "cpu", "cuda"):
        return resolve_ray_device(spec, cluster_gpus=1.0)  # a Device as it is; cuda:N or a typo refused in one line
    if ray_address is None:
        return resolve_device(spec)
    if spec.strip().lower() == "auto":
        start_ray(ray_address)
        return resolve_ray_device(spec)
    return resolve_ray_device(spec, cluster_gpus=1.0)


def worker_plan(cfg: TrainJobConfig) -> dict:
    """What every Ray Train worker is given, derived from the job's device (:attr:`TrainJobConfig.device`): its
    environment (``DS_ACCELERATOR``: DeepSpeed's CPU accelerator only for a CPU job) and its resources."""
    device = cfg.device
    return {
        "env_vars": {**WORKER_ENV, "DS_ACCELERATOR": device.accelerator},
        "use_gpu": device.is_cuda,
        "resources_per_worker": {"CPU": 1},  # with use_gpu Ray adds one GPU per worker
    }


def _latest_checkpoint(storage: Location) -> Location | None:
    steps = [p for p in storage.glob("step_*") if p.glob("worker_*.pt")]
    return steps[-1] if steps else None


def run_training(
    cfg: TrainJobConfig,
    *,
    out: str | os.PathLike | None,
    run_dir: str | os.PathLike | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = "vssflow",
    register_as: str | None = "vssflow",
    resume: str | os.PathLike | None = None,
    ray_address: str | None = None,
    n_val_clips: int = 2,
    device: str | Device | None = None,
) -> TrainResult:
    """Train (or continue, with ``resume``) and return where everything went. See the module docstring.

    ``device`` (``--device``; :func:`training_device`) sets ``cfg.use_gpu``; None keeps ``cfg``'s. A resumed run
    keeps the device it was started with."""
    import ray
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    from pipelines import mlflow_utils

    t0 = time.perf_counter()
    state: dict = {}
    if device is not None and resume is None:
        cfg = replace(cfg, use_gpu=training_device(device, ray_address).is_cuda)
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / RUN_JSON).is_file():
            raise MissingFileError(f"no {RUN_JSON} here; pass the run directory printed by `vssflow train`",
                                   source=str(run_dir))  # fmt: skip
        state = json.loads((run_dir / RUN_JSON).read_text())
        stored = TrainJobConfig.from_dict(state["config"])  # the flat keys of older run.json files too
        # A resumed run keeps its config; only how far to go and where to stop may change.
        cfg = replace(stored, max_steps=cfg.max_steps or stored.max_steps, stop_after=cfg.stop_after)
        out = out or state.get("out")
        storage = storage or state.get("storage")
        tracking_uri = tracking_uri or state["tracking_uri"]
    name = state.get("name") or f"train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir = Path(run_dir or Path("runs") / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = mlflow_utils.store_uri(tracking_uri)
    if cfg.preset not in PRESETS:
        raise InputError(f"unknown preset {cfg.preset!r}; use one of {sorted(PRESETS)}", source="--preset")
    if cfg.engine not in ENGINES:
        raise InputError(f"unknown engine {cfg.engine!r}; use one of {ENGINES}", source="--deepspeed")

    shards = open_shards(cfg.data)
    data_version, lip_dim = shards.version, shards.lip_dim
    data_mb = sum(p.size() for p in shards.files) / 2**20
    cfg = fit_batches_to_data(cfg, train_task_counts(shards))
    if not state.get("config"):
        cfg = fit_model_to_data(cfg, shards)
    codec_dir = run_dir / "codec"
    if not (codec_dir / "codec.json").is_file():
        codec = fit_codec(shards, codec_dir, cfg.model_config().latent_dim)
        print(
            f"vssflow train: latent codec {codec.latent_dim} channels, "
            f"{100 * codec.explained_variance:.2f} % of the mel variance kept"
        )
    val = validation_clips(shards, n_val_clips)

    if "mlflow_run_id" not in state:
        params = {"config": cfg.to_dict(), "model": cfg.model_config().to_dict(), "data_version": data_version,
                  "data_dir": str(cfg.data), "shards": len(shards.files)}  # fmt: skip
        state["mlflow_run_id"] = mlflow_utils.create_run(
            tracking_uri, experiment=experiment, run_name=name, params=params, tags={"data_version": data_version}
        )
    storage = location(storage or run_dir / "ray")  # Ray Train's checkpoints: <storage>/<name>/step_*
    state.update({"name": name, "config": cfg.to_dict(), "tracking_uri": tracking_uri, "data_version": data_version,
                  "out": None if out is None else str(Path(out).resolve()), "storage": storage.uri})  # fmt: skip
    _write_json(run_dir / RUN_JSON, state)
    print(f"vssflow train: {cfg.preset} preset, {cfg.workers} workers on {cfg.device} ({cfg.device.dtype}), "
          f"engine {cfg.engine}, "
          f"{cfg.max_steps} steps, data {data_version} ({len(shards.files)} shards); run dir {run_dir}; "
          f"checkpoints {storage.uri}")  # fmt: skip

    # logical CPUs beyond the training workers leave room for the Ray Data read/shuffle tasks
    start_ray(ray_address, num_cpus=max(os.cpu_count() or 1, cfg.workers + 2))
    run = RunContext(
        run_dir=str(run_dir),
        codec_dir=str(codec_dir),
        lip_dim=lip_dim,
        out=state["out"],
        worker_cache=data_mb <= cfg.worker_cache_mb,  # small shard sets: workers keep their split after epoch 0
        # the preprocessing config of the shards, recorded in the model so generation extracts features the same way
        extract=(shards.meta[0].get("config") or {}).get("extract", {}),
        tracking_uri=tracking_uri,
        mlflow_run_id=state["mlflow_run_id"],
        val_clips=val,
        storage_filesystem=None if storage.is_local else storage.fs,  # how a worker opens resume_checkpoint
    )
    if resume is not None and (last := _latest_checkpoint(storage / name)) is not None:
        run = replace(run, resume_checkpoint=last.path)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # the split coordinator's bars redrawn as console lines (5 identical per epoch)
    plan = worker_plan(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": cfg, "run": run},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=plan["use_gpu"], resources_per_worker=plan["resources_per_worker"]
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=None if storage.is_local else storage.fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env={"env_vars": plan["env_vars"]},
            logging_config=ray.train.LoggingConfig(log_level=RAY_TRAIN_LOG_LEVEL),
        ),
        # a small set in blocks of one row: the workers' equal shares then mix the tasks (8-row blocks of one-task
        # shards gave a 14-clip set's V2S rows to one worker and its speech to the other)
        datasets={
            "train": build_dataset(
                shards, cfg.seed, rows_per_block=1 if cfg.sampler.keep_tail else 8, cache=data_mb <= cfg.cache_mb
            )
        },
        dataset_config=ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )
    with mlflow_utils.failed_on_error(state["mlflow_run_id"], tracking_uri=tracking_uri):  # not left RUNNING
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        final = json.loads((run_dir / "final.json").read_text()) if (run_dir / "final.json").is_file() else {}
        steps = int((result.metrics or {}).get("step", 0))
        model_uri = None
        if final and register_as:
            model_uri = mlflow_utils.log_and_register_model(
                final["out"], run_id=state["mlflow_run_id"], tracking_uri=tracking_uri, registered_name=register_as
            )
    last = _latest_checkpoint(storage / name)
    state.update({"model_uri": model_uri, "steps": steps, "checkpoint": last.uri if last else None})
    _write_json(run_dir / RUN_JSON, state)
    return TrainResult(
        run_dir=run_dir,
        out=Path(final["out"]) if final else None,
        mlflow_run_id=state["mlflow_run_id"],
        tracking_uri=tracking_uri,
        model_uri=model_uri,
        checkpoint=state["checkpoint"],
        steps=steps,
        engine=final.get("engine", cfg.engine),
        seconds=time.perf_counter() - t0,
    )


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


# ---- CLI -----------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainJobConfig()
    parser.add_argument("--data", help="shard set of `vssflow preprocess` (its --out: a path or s3:// gs:// URI)")
    parser.add_argument("--preset", default=d.preset, choices=sorted(PRESETS))
    parser.add_argument("--workers", type=int, default=d.workers, help="Ray Train workers (one per CPU/GPU)")
    parser.add_argument("--device", default="auto", help=f"{DEVICE_HELP}; cuda: one GPU per worker, bf16")
    parser.add_argument("--gpu", action="store_true", help="deprecated: use --device cuda")
    parser.add_argument("--max-steps", type=int, default=None, help=f"optimizer steps (default {d.max_steps})")
    parser.add_argument("--out", help="model directory to write (save_pretrained)")
    parser.add_argument("--deepspeed", default=d.engine, choices=ENGINES, help="ZeRO stage, or plain DDP")
    add_mlflow_uri(parser, local=LOCAL_STORE_HELP)
    parser.add_argument("--experiment", default="vssflow", help="MLflow experiment name")
    parser.add_argument("--register-as", default="vssflow", help="MLflow registered model name ('' = don't)")
    add_ray_arguments(parser, num_cpus=False)
    parser.add_argument("--run-dir", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--storage", default=None, metavar="URI",
                        help="where Ray Train writes checkpoints: a shared path or s3:// gs:// URI "
                             "(default <run-dir>/ray)")  # fmt: skip
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("--init", default="", metavar="MODEL_DIR", help="fine-tune from a trained model")
    parser.add_argument("--lora-rank", type=int, default=0, help="> 0: train LoRA adapters only (with --init)")
    parser.add_argument("--batch-size", type=int, default=d.sampler.batch_size, help="clips per worker per micro-step")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="torch threads per worker (default 0: the node's CPUs shared among its workers)")
    parser.add_argument("--grad-accum", type=int, default=d.optim.grad_accum)
    parser.add_argument("--lr", type=float, default=d.optim.lr)
    parser.add_argument("--warmup-steps", type=int, default=d.optim.warmup_steps)
    add_mix(
        parser,
        what="relative frequency of the batches",
        default=(d.sampler.v2s_weight, d.sampler.tts_weight, d.sampler.joint_weight),
    )
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument(
        "--eval-every", type=int, default=d.validation.every, help="audio samples every N steps (0: end)"
    )
    parser.add_argument("--max-failures", type=int, default=d.max_failures)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--model-overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a ModelConfig field, e.g. --model-overrides depth=2 (repeatable)")  # fmt: skip
    add_deprecated(parser, "--model", "--model-overrides", dest="model_overrides", append=True)


def _parse_overrides(items: list[str]) -> dict:
    """["depth=2", "rope=0.5", "sem_placement=cross"] -> typed ModelConfig overrides."""
    import dataclasses

    from vssflow.model.config import ModelConfig

    types = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise InputError(
                f"{item!r}: expected KEY=VALUE with KEY one of {sorted(types)}", source="--model-overrides"
            )
        kind = str(types[key])
        try:
            out[key] = int(value) if kind.startswith("int") else float(value) if kind.startswith("float") else value
        except ValueError:
            raise InputError(f"{item!r}: {key} takes a {kind}", source="--model-overrides") from None
    return out


def device_arg(args: argparse.Namespace) -> str:
    """``--device``; the deprecated ``--gpu`` (kept for one release) means ``--device cuda`` and says so once."""
    if args.gpu:
        print("vssflow train: --gpu is deprecated and will be removed; use --device cuda", file=sys.stderr)
        return "cuda"
    return args.device


def run(args: argparse.Namespace) -> int:
    if not args.resume and not (args.data and args.out):
        raise InputError("give --data SHARDS_DIR and --out MODEL_DIR (or --resume RUN_DIR)", source="vssflow train")
    v2s, tts, joint = args.mix
    device = device_arg(args)
    d = TrainJobConfig()
    cfg = replace(
        d,
        model_overrides=_parse_overrides(args.model_overrides),
        data=location(args.data).uri if args.data else "",
        preset=args.preset,
        workers=args.workers,
        engine=args.deepspeed,
        max_steps=args.max_steps or (0 if args.resume else d.max_steps),
        optim=replace(d.optim, lr=args.lr, warmup_steps=args.warmup_steps, grad_accum=args.grad_accum),
        sampler=replace(d.sampler, batch_size=args.batch_size, v2s_weight=v2s, tts_weight=tts, joint_weight=joint),
        validation=replace(d.validation, every=args.eval_every),
        checkpoint_every=args.checkpoint_every,
        max_failures=args.max_failures,
        seed=args.seed,
        init=str(Path(args.init).resolve()) if args.init else "",
        lora_rank=args.lora_rank,
        threads=args.threads,
    )
    res = run_training(
        cfg,
        out=args.out,
        run_dir=args.run_dir,
        storage=args.storage,
        tracking_uri=mlflow_uri(args),
        experiment=args.experiment,
        register_as=args.register_as or None,
        resume=args.resume,
        ray_address=args.ray_address,
        device=device,
    )
    print(f"vssflow train: {res.steps} steps with {res.engine} in {res.seconds:.0f} s")
    print(f"  model:      {res.out}")
    print(f"  registered: {res.model_uri}")
    print(f"  checkpoint: {res.checkpoint}")
    print(f"  mlflow:     {res.tracking_uri} (run {res.mlflow_run_id})")
    print(f"  ui:         mlflow ui --backend-store-uri {res.tracking_uri}")
    print(f"  resume:     vssflow train --resume {res.run_dir}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="vssflow train")
    add_arguments(p)
    sys.exit(run(p.parse_args()))
