"""The Ray Train worker loop: shard -> batches -> DeepSpeed engine -> ``ray.train.report``.

Reads top to bottom (STYLE.md rule 9); the training step itself is the pure :func:`vssflow.training.training_step`,
the data from the shard to a batch is :mod:`pipelines.train_data`, the model built, exported and saved
:mod:`pipelines.train_model`. Runs inside each Ray Train worker
(``TorchTrainer`` sets up the gloo/NCCL process group).

Determinism (what makes the fault and resume tests possible): the dataset is read with ``preserve_order`` so the
per-worker split is the same in every execution; batches are a pure function of (stream, seed, epoch, rank)
(:class:`~vssflow.data.sampler.BucketSampler`); the training step draws all its randomness from one
``torch.Generator`` per rank whose state is checkpointed. A restarted worker replays the sampler up to the saved
data position (micro-batches consumed in the epoch) without computing anything, then continues.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipelines.deepspeed_config import build_engine, optimizer_state_bytes
from pipelines.train_checkpoint import load_checkpoint, report_checkpoint, save_checkpoint
from pipelines.train_config import RunContext, TrainJobConfig, ValidationConfig
from pipelines.train_data import SplitCache, clip_stream, encode_batch, shared_task_chooser
from pipelines.train_model import build_model, log_samples, models_for_export, save_final
from vssflow.audio.codec import MelCodec
from vssflow.data.sampler import BucketSampler
from vssflow.ema import EMA
from vssflow.errors import InputError
from vssflow.training import training_step

log = logging.getLogger("vssflow.train")
# the config (train_config.py) and the checkpoints (train_checkpoint.py) are re-exported
__all__ = ["RunContext", "TrainJobConfig", "ValidationConfig", "load_checkpoint", "save_checkpoint",
           "train_loop_per_worker"]  # fmt: skip

ENGINES = ("zero0", "zero1", "zero2", "zero3", "ddp")


def _ema_params(engine, stage: int):
    """Named trainable parameters with their full values (ZeRO-3 gathers the partitions; a collective)."""
    import contextlib

    params = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    if stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None), params
    return contextlib.nullcontext(), params


# ---- the loop ------------------------------------------------------------------------------------------------------
def worker_threads(requested: int, local_workers: int, cpus: int | None = None) -> int:
    """Torch threads of one training worker: ``requested`` when > 0, else this node's CPUs shared among the workers
    on it (one worker on 2 cores: 2 threads; two: 1 each)."""
    if requested > 0:
        return requested
    return max(1, (cpus or os.cpu_count() or 1) // max(1, local_workers))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry: ``config`` = ``{"job": TrainJobConfig, "run": RunContext}`` (resolved by the driver)."""
    import ray.train

    cfg, run = config["job"], config["run"]
    ctx = ray.train.get_context()
    w = Worker(cfg, run, rank=ctx.get_world_rank(), world=ctx.get_world_size())
    shard = ray.train.get_dataset_shard("train")
    while w.step < w.stop_at:
        for batch in w.epoch_batches(shard):
            w.log_batch(batch)
            if not w.train_on(batch):  # inside a gradient accumulation
                continue
            w.finish_step()
            if w.step >= w.stop_at:
                break
        else:
            w.next_epoch()
    w.finish()


def engine_precision(engine, cfg: TrainJobConfig) -> dict[str, str]:
    """What a worker trains with, as it is (MLflow tags, not what was asked): the device type and dtype of its model's
    parameters, and bf16: DeepSpeed's bf16 mode (bf16 parameters, fp32 master weights in the optimizer) or, in the
    DDP fallback, bf16 autocast over fp32 parameters."""
    p = next(engine.module.parameters())
    bf16 = engine.bfloat16_enabled() if hasattr(engine, "bfloat16_enabled") else cfg.device.bf16
    return {"device": p.device.type, "param_dtype": str(p.dtype).removeprefix("torch."),
            "bf16": str(bool(bf16)).lower()}  # fmt: skip


class Worker:
    """One rank's training state and its steps; :func:`train_loop_per_worker` is the loop over it.

    Holds the engine (DeepSpeed or DDP), the EMA (rank 0), the codec, the per-rank ``torch.Generator``, the data
    position ``{step, epoch, batch_in_epoch}`` (restored from a checkpoint), the MLflow tracker (rank 0) and what
    the console line averages.
    """

    def __init__(self, cfg: TrainJobConfig, run: RunContext, *, rank: int, world: int):
        import ray.train
        from ray.train import Checkpoint

        self.cfg, self.run, self.rank, self.world = cfg, run, rank, world
        torch.set_num_threads(worker_threads(cfg.threads, ray.train.get_context().get_local_world_size()))
        Path(run.run_dir, "pids").mkdir(parents=True, exist_ok=True)
        Path(run.run_dir, "pids", f"rank{rank}.pid").write_text(str(os.getpid()))
        self.mcfg = cfg.model_config()
        model = build_model(cfg)
        if cfg.use_gpu:
            import ray.train.torch

            model = model.to(ray.train.torch.get_device())
        self.engine, self.engine_name = build_engine(model, cfg.engine_settings(), world)
        self.stage = int(self.engine_name[-1]) if self.engine_name.startswith("zero") else 0
        self.ema = None
        gather, params = _ema_params(self.engine, self.stage)
        with gather:  # the EMA lives on rank 0, over full tensors (ZeRO-3 gathers them; a collective)
            if rank == 0:
                self.ema = EMA(params, decay=cfg.optim.ema_decay, warmup=cfg.optim.ema_warmup)
        self.codec = MelCodec.load(run.codec_dir)
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
        self.position = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
        ckpt = ray.train.get_checkpoint()
        if ckpt is None and run.resume_checkpoint:
            ckpt = Checkpoint(run.resume_checkpoint, filesystem=run.storage_filesystem)
        if ckpt is not None:
            with ckpt.as_directory() as d:
                self.position = load_checkpoint(self.engine, self.ema, self.gen, d, rank)
            log.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt.path, self.position["step"],
                     self.position["epoch"], self.position["batch_in_epoch"])  # fmt: skip
        self.tracker = None
        if rank == 0 and run.tracking_uri:
            from pipelines.mlflow_utils import RunLogger

            self.tracker = RunLogger(run.tracking_uri, run_id=run.mlflow_run_id, system_metrics=True,
                                     flush_every=cfg.metrics_flush_every)  # fmt: skip
            self.tracker.set_tags({"engine": self.engine_name, "world_size": world,
                                   **engine_precision(self.engine, cfg)})  # fmt: skip
        self.samples_log = (open(Path(run.run_dir) / f"samples_rank{rank}.jsonl", "a")  # noqa: SIM115
                            if cfg.log_samples else None)  # fmt: skip
        # ZeRO-3 parameters are partitioned outside their module's forward; every worker runs the same modules anyway.
        self.trainable = [p for p in self.engine.module.parameters() if p.requires_grad] if self.stage != 3 else []
        self.device = next(self.engine.module.parameters()).device
        self.split = SplitCache(enabled=run.worker_cache)
        self.stop_at = min(cfg.max_steps, cfg.stop_after or cfg.max_steps)
        self.step = self.position["step"]
        self.acc_metrics: list[dict] = []  # micro-batches since the last optimizer step
        self.console: list[dict] = []  # rank 0: metrics since the last console line
        self.t_last, self.clips_since = time.perf_counter(), 0

    def epoch_batches(self, shard) -> Iterator:
        """This epoch's batches from the saved data position (earlier ones replayed without compute); ends when the
        workers agree that no task can form a batch any more on some worker."""
        epoch = self.position["epoch"]
        batches = BucketSampler(self.cfg.sampler_config(), epoch=epoch, rank=self.rank).batches(
            self.split.stream(lambda: clip_stream(shard, lip_dim=self.run.lip_dim)),
            choose=shared_task_chooser(self.cfg.seed, epoch),
        )
        for _ in range(self.position["batch_in_epoch"]):  # replay: same sampler state, no compute
            next(batches)
        return batches

    def log_batch(self, batch) -> None:
        if self.samples_log is not None:
            self.samples_log.write(json.dumps({"step": self.step, "epoch": self.position["epoch"], "task": batch.task,
                                               "ids": batch.source_ids}) + "\n")  # fmt: skip
            self.samples_log.flush()

    def train_on(self, batch) -> bool:
        """One micro-batch: encode, loss (:func:`~vssflow.training.training_step`), backward, engine step; returns
        whether it ended an optimizer step (the gradient accumulation boundary)."""
        tb = encode_batch(batch.clips, self.codec, self.mcfg).to(self.device)
        boundary = self.engine.is_gradient_accumulation_boundary()
        with self.cfg.device.autocast():  # bf16 on GPU (DeepSpeed keeps fp32 master weights), fp32 on CPU
            loss, metrics = training_step(self.engine.module, tb, self.cfg.flow, self.gen)
        self.engine.backward(loss + _touch(self.trainable))
        self.engine.step()
        self.position["batch_in_epoch"] += 1
        self.acc_metrics.append(metrics)
        self.clips_since += len(batch.clips)
        return boundary

    def finish_step(self) -> None:
        """After an optimizer step: EMA, metrics (MLflow, console), validation samples, checkpoint."""
        cfg = self.cfg
        self.step = self.position["step"] = self.step + 1
        if self.ema is not None or self.stage == 3:
            gather, params = _ema_params(self.engine, self.stage)
            with gather:
                if self.ema is not None:
                    self.ema.update(params)
        if self.step % cfg.log_every == 0:
            self._log_metrics()
        val = cfg.validation
        if val.every and self.step % val.every == 0 and self.run.val_clips and self.step < self.stop_at:
            _, averaged = models_for_export(self.engine, self.ema, cfg, self.stage, self.rank)
            if self.tracker is not None:
                log_samples(self.tracker, averaged, self.codec, self.run.val_clips, cfg, self.step)
        if self.step % cfg.checkpoint_every == 0 or self.step == self.stop_at:
            if self.tracker is not None:  # the metrics up to a checkpoint are in the store before it is reported
                self.tracker.flush()
            report_checkpoint(self.engine, self.ema, self.position, self.gen, self.rank, self.step)

    def _log_metrics(self) -> None:
        cfg, step = self.cfg, self.step
        opt_mb, rss_mb = _worker_stats(self.engine)  # a collective: every rank takes part
        if self.rank != 0:
            return
        now = time.perf_counter()
        out = _reduce_metrics(self.acc_metrics)
        out.update({
            "grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
            "lr": float(self.engine.lr_scheduler.get_last_lr()[0]),
            "samples_per_s": self.clips_since * self.world / max(now - self.t_last, 1e-9),
            "epoch": self.position["epoch"],
            "optimizer_state_mb": opt_mb[0],
            "optimizer_state_mb_max": max(opt_mb),
            "peak_rss_mb": max(rss_mb),
        })  # fmt: skip
        if self.tracker is not None:
            self.tracker.log_metrics(out, step=step)
        self.console.append(out)
        if step % max(cfg.log_every, cfg.checkpoint_every) == 0 or step == self.stop_at:  # a line in the console
            avg, self.console = _reduce_metrics(self.console), []
            tasks = " ".join(f"{k[5:]} {v:.3f}" for k, v in sorted(avg.items()) if k.startswith("loss/"))
            print(f"vssflow train: step {step}/{cfg.max_steps} loss {avg.get('loss', float('nan')):.3f} "
                  f"({tasks}) lr {out['lr']:.2e} {avg['samples_per_s']:.1f} samples/s", flush=True)  # fmt: skip
        self.acc_metrics, self.t_last, self.clips_since = [], now, 0

    def next_epoch(self) -> None:
        """Some worker ran out of clips: every worker starts the next epoch together."""
        if self.position["batch_in_epoch"] == 0:
            # Without this an epoch that forms no batch would start the next (identical) epoch forever.
            raise InputError(
                f"the training data cannot form one batch of {self.cfg.sampler.batch_size} clips of a task per "
                f"worker ({self.world} workers); lower --batch-size or --workers, or add clips"
            )
        self.split.finish_epoch()
        self.position = {"step": self.step, "epoch": self.position["epoch"] + 1, "batch_in_epoch": 0}

    def finish(self) -> None:
        """At max_steps: rank 0 saves the model (raw + EMA) and logs the last samples; the MLflow run ends."""
        cfg = self.cfg
        if self.samples_log is not None:
            self.samples_log.close()
        if self.step >= cfg.max_steps:
            raw, averaged = models_for_export(self.engine, self.ema, cfg, self.stage, self.rank)
            if self.rank == 0:
                save_final(raw, averaged, self.codec, cfg, self.run, self.engine_name, self.step)
                if self.tracker is not None and self.run.val_clips:
                    log_samples(self.tracker, averaged, self.codec, self.run.val_clips, cfg, self.step)
        if self.tracker is not None:
            self.tracker.end(status="FINISHED" if self.step >= cfg.max_steps else "KILLED")


def _touch(params: list[torch.Tensor]) -> torch.Tensor:
    """0 * sum of every trainable tensor: gives each parameter a (zero) gradient on every worker.

    A batch without lip or phonemes leaves their encoders out of the graph; the workers' gradient reductions must
    still cover the same tensors in the same order (DDP's ``find_unused_parameters`` problem).
    """
    return sum((p.sum() for p in params), torch.zeros(())) * 0.0


def _worker_stats(engine) -> tuple[list[float], list[float]]:
    """Optimizer-state MB and peak RSS MB of every worker (rank order)."""
    import resource

    mine = torch.tensor(
        [optimizer_state_bytes(engine) / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]
    )
    if not dist.is_initialized():
        return [float(mine[0])], [float(mine[1])]
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [float(t[0]) for t in out], [float(t[1]) for t in out]


def _reduce_metrics(items: list[dict]) -> dict:
    keys = {k for m in items for k in m}
    return {k: float(np.mean([m[k] for m in items if k in m])) for k in keys}
