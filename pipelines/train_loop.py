"""The Ray Train worker loop: shard -> batches -> DeepSpeed engine -> ``ray.train.report``.

Reads top to bottom (STYLE.md rule 9); the training step itself is the pure :func:`vssflow.training.training_step`.
Runs inside each Ray Train worker (``TorchTrainer`` sets up the gloo/NCCL process group).

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
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipelines.deepspeed_config import build_engine, optimizer_state_bytes
from vssflow.audio.codec import MelCodec
from vssflow.data.sampler import BATCH_TASKS, BucketSampler, SamplerConfig
from vssflow.data.schema import META, row_to_features, table_to_rows
from vssflow.device import Device
from vssflow.ema import EMA
from vssflow.errors import InputError
from vssflow.lora import LoRAConfig, apply_lora
from vssflow.model.config import PRESETS, ModelConfig
from vssflow.model.dit import VSSFlowDiT
from vssflow.training import FlowConfig, make_train_batch, training_step
from vssflow.types import ClipFeatures

log = logging.getLogger("vssflow.train")

ENGINES = ("zero0", "zero1", "zero2", "zero3", "ddp")
WORKER_STATE = "worker_{rank}.pt"
EMA_FILE = "ema.pt"
DS_TAG = "ds"


@dataclass(frozen=True)
class TrainJobConfig:
    """Everything a training run needs; resolved once at the entry point, logged to MLflow as params.

    Defaults: the tiny preset on 2 CPU workers for a few dozen steps.
    """

    data: str = ""  # directory of Parquet shards
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields replaced on top of the preset
    workers: int = 2
    use_gpu: bool = False
    engine: str = "zero2"  # zero0..zero3 (DeepSpeed) or ddp (plain PyTorch DDP)
    max_steps: int = 40  # optimizer steps (the lr schedule spans these)
    stop_after: int = 0  # end early at this step as if interrupted (0 = run to max_steps); for resume tests
    batch_size: int = 4  # clips per worker per micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    ema_warmup: int = 10
    flow: dict = field(default_factory=dict)  # FlowConfig fields (CFG dropout, t schedule)
    v2s_weight: float = 1.0
    tts_weight: float = 1.0
    joint_weight: float = 0.5
    buffer_size: int = 128  # rows per worker for batching; at 32 the workers agreed on no V2S batch in 1000 steps
    keep_tail: bool = False  # small sets: an epoch's remainder forms smaller / mixed-task batches (set by the driver)
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 2
    log_every: int = 1
    metrics_flush_every: int = 10  # MLflow: per-step metrics written in one batch every N steps (and at checkpoints)
    eval_every: int = 250  # audio samples of the validation clips every N steps (0 = only at the end)
    eval_steps: int = 8  # ODE steps of validation sampling
    eval_cfg_scale: float = 3.0
    cfg_rescale: float | None = None  # guidance rescaling saved with the model; None = the preset's (paper: 0)
    init: str = ""  # fine-tune from this model directory
    lora_rank: int = 0  # > 0: train LoRA adapters on the attention projections only
    lora_alpha: float = 8.0
    threads: int = 1  # torch intra-op threads per worker
    cache_mb: float = 1024.0  # shard sets up to this size are cached in the Ray object store (no re-read per epoch)
    worker_cache_mb: float = 128.0  # shard sets up to this size: each worker keeps its decoded split after epoch 0
    log_samples: bool = False  # write the ids of every consumed clip to <run_dir>/samples_rank<r>.jsonl

    @property
    def device(self) -> Device:
        """Where each worker trains (``use_gpu``: the GPU Ray Train gave it, bf16): :mod:`vssflow.device`."""
        return Device("cuda" if self.use_gpu else "cpu")

    def model_config(self) -> ModelConfig:
        """The preset (or, when fine-tuning, the ``init`` model's own config) with ``model_overrides`` applied."""
        if self.init:
            from vssflow.generator import read_model_config

            return ModelConfig.from_dict(read_model_config(self.init)["model"]).replace(**self.model_overrides)
        return PRESETS[self.preset].replace(**self.model_overrides)

    def sampling_config(self):
        """The sampling defaults saved with the model: plain guidance for the paper preset (the paper), rescaled
        guidance (:func:`vssflow.flow.rescale_guidance`) for the small presets, whose plain CFG overshoots the level;
        a model with a phoneme prior starts from N(mu, 0.5^2 I) (Grad-TTS's temperature; on the demo's corpus TTS
        WER 0.91 against 1.08 at 1, V2S class accuracy and onsets unchanged, level -1.1 against -4.0 dB)."""
        from vssflow.generator import SamplingConfig

        rescale = self.cfg_rescale if self.cfg_rescale is not None else (0.0 if self.preset == "paper" else 1.0)
        noise = 0.5 if self.model_config().prior_layers else 1.0
        return SamplingConfig(cfg_scale=self.eval_cfg_scale, cfg_rescale=rescale, noise_scale=noise)

    def flow_config(self) -> FlowConfig:
        return FlowConfig(**self.flow)

    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(
            batch_size=self.batch_size,
            v2s_weight=self.v2s_weight,
            tts_weight=self.tts_weight,
            joint_weight=self.joint_weight,
            buffer_size=self.buffer_size,
            seed=self.seed,
            phoneme_layout=self.model_config().phoneme_layout,
            keep_tail=self.keep_tail,
        )

    def to_dict(self) -> dict:
        return asdict(self)


# ---- data ----------------------------------------------------------------------------------------------------------


def clip_stream(shard, *, lip_dim: int, read_batch: int = 16) -> Iterator[ClipFeatures]:
    """One pass over a worker's dataset shard as ClipFeatures (float16 arrays widened to float32)."""
    md = {META["lip_dim"].encode(): str(lip_dim).encode()}
    for table in shard.iter_batches(batch_size=read_batch, batch_format="pyarrow", prefetch_batches=1):
        for row in table_to_rows(table.replace_schema_metadata(md)):
            clip = row_to_features(row)
            clip.sem = None if clip.sem is None else np.asarray(clip.sem, np.float32)
            clip.mel = np.asarray(clip.mel, np.float32)
            yield clip


class SplitCache:
    """A worker's split of a small shard set, kept in memory after one complete pass.

    Later epochs replay the same clips in the same order without going through Ray Data again: a new epoch of a
    streaming split costs a round trip to the split coordinator and a new execution (~0.25 s on this machine), which
    on a small shard set (a few batches per epoch) was a third of the step time. The split is the same in every
    epoch (``preserve_order``, see the module docstring), so the replay is what the stream would have given.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.clips: list[ClipFeatures] | None = None
        self._recording: Iterator[ClipFeatures] | None = None

    def stream(self, make_stream) -> Iterator[ClipFeatures]:
        """This epoch's clips: the kept split, else ``make_stream()`` (recorded when caching is enabled)."""
        if self.clips is not None:
            return iter(self.clips)
        if not self.enabled:
            return make_stream()
        self._recording = self._record(make_stream())
        return self._recording

    def finish_epoch(self) -> None:
        """Read what the sampler left of this epoch's stream, so the recording is the complete split."""
        if self._recording is not None:
            for _ in self._recording:
                pass
            self._recording = None

    def _record(self, stream: Iterator[ClipFeatures]) -> Iterator[ClipFeatures]:
        seen = []
        for clip in stream:
            seen.append(clip)
            yield clip
        self.clips = seen


def encode_batch(clips: list[ClipFeatures], codec: MelCodec, cfg: ModelConfig):
    """Clips -> TrainBatch: mel (T_mel, 64) -> codec latent (N, C) per clip, conditions collated."""
    latents = [codec.encode(torch.from_numpy(c.mel)[None])[0] for c in clips]  # each (N, C)
    return make_train_batch(latents, clips, cfg)


# ---- checkpoints ---------------------------------------------------------------------------------------------------


def _rng_state(gen: torch.Generator) -> dict:
    """RNG states as tensors and plain numbers only, so that the file loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
             "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip
    return {"generator": gen.get_state(), "torch": torch.get_rng_state(), "numpy": numpy}


def _set_rng_state(gen: torch.Generator, rng: dict) -> None:
    gen.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def save_checkpoint(engine, ema: EMA | None, position: dict, gen: torch.Generator, directory: str, rank: int) -> None:
    """Every rank writes its part: DeepSpeed model/optimizer shards, its data position and RNG; rank 0 the EMA."""
    engine.save_checkpoint(directory, tag=DS_TAG, client_state={"step": position["step"]})
    torch.save({"position": position, "rng": _rng_state(gen)}, Path(directory) / WORKER_STATE.format(rank=rank))
    if ema is not None:
        torch.save(ema.state_dict(), Path(directory) / EMA_FILE)


def load_checkpoint(engine, ema: EMA | None, gen: torch.Generator, directory: str, rank: int) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns the data position of this rank."""
    engine.load_checkpoint(directory, tag=DS_TAG)
    # weights_only: tensors and plain values only; a pickled object (from whoever can write the storage) is refused
    state = torch.load(Path(directory) / WORKER_STATE.format(rank=rank), map_location="cpu", weights_only=True)
    _set_rng_state(gen, state["rng"])
    if ema is not None:
        ema.load_state_dict(torch.load(Path(directory) / EMA_FILE, map_location="cpu", weights_only=True))
    return state["position"]


# ---- the loop ------------------------------------------------------------------------------------------------------


def shared_task_chooser(seed: int, epoch: int):
    """A task chooser for :meth:`BucketSampler.batches` that every worker agrees on.

    The workers exchange which tasks they can serve (one small all-reduce per batch) and draw from the common ones
    with a random stream seeded identically everywhere. Every worker then runs the same task, hence the same
    modules, at each step: ZeRO-3 gathers parameters module by module and needs this, and equal shapes keep the
    workers in step. No common task left ends the epoch on every worker at once.
    """
    rng = np.random.default_rng([seed, epoch, 7919])

    def choose(feasible: dict[str, float]) -> str | None:
        mask = torch.tensor([1 if t in feasible else 0 for t in BATCH_TASKS], dtype=torch.int32)
        if dist.is_initialized():
            dist.all_reduce(mask, op=dist.ReduceOp.MIN)
        common = [t for t, m in zip(BATCH_TASKS, mask.tolist(), strict=True) if m]
        if not common:
            return None
        p = np.array([feasible[t] for t in common], dtype=np.float64)
        return common[int(rng.choice(len(common), p=p / p.sum()))]

    return choose


def _ema_params(engine, stage: int):
    """Named trainable parameters with their full values (ZeRO-3 gathers the partitions; a collective)."""
    import contextlib

    params = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    if stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None), params
    return contextlib.nullcontext(), params


def build_model(cfg: TrainJobConfig) -> VSSFlowDiT:
    """The DiT of the preset, initialised from ``cfg.init`` when fine-tuning, with LoRA adapters when asked."""
    mcfg = cfg.model_config()
    torch.manual_seed(cfg.seed)  # identical initial weights on every worker and in every attempt
    model = VSSFlowDiT(mcfg)
    if cfg.init:
        from vssflow.generator import Generator

        base = Generator.from_pretrained(cfg.init).model
        model.load_state_dict(base.state_dict())
    if cfg.lora_rank > 0:
        apply_lora(model, LoRAConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha))
    return model


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry: ``config`` = ``TrainJobConfig.to_dict()`` plus the run's resolved paths (``_run``)."""
    import ray.train
    from ray.train import Checkpoint

    run = config.pop("_run")
    cfg = TrainJobConfig(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s rank%(rank)s: %(message)s".replace(
        "%(rank)s", str(rank)))  # fmt: skip
    Path(run["run_dir"], "pids").mkdir(parents=True, exist_ok=True)
    Path(run["run_dir"], "pids", f"rank{rank}.pid").write_text(str(os.getpid()))

    mcfg = cfg.model_config()
    model = build_model(cfg)
    if cfg.use_gpu:
        import ray.train.torch

        model = model.to(ray.train.torch.get_device())
    engine, engine_name = build_engine(model, cfg, world)
    stage = int(engine_name[-1]) if engine_name.startswith("zero") else 0
    ema = None
    gather, params = _ema_params(engine, stage)
    with gather:  # the EMA lives on rank 0, over full tensors (ZeRO-3 gathers them; a collective)
        if rank == 0:
            ema = EMA(params, decay=cfg.ema_decay, warmup=cfg.ema_warmup)
    codec = MelCodec.load(run["codec_dir"])
    flow_cfg = cfg.flow_config()
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)

    position = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and run.get("resume_checkpoint"):
        ckpt = Checkpoint(run["resume_checkpoint"], filesystem=run.get("storage_filesystem"))
    if ckpt is not None:
        with ckpt.as_directory() as d:
            position = load_checkpoint(engine, ema, gen, d, rank)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt.path, position["step"], position["epoch"],
                 position["batch_in_epoch"])  # fmt: skip

    tracker = None
    if rank == 0 and run.get("tracking_uri"):
        from pipelines.mlflow_utils import RunLogger

        tracker = RunLogger(run["tracking_uri"], run_id=run["mlflow_run_id"], system_metrics=True,
                            flush_every=cfg.metrics_flush_every)  # fmt: skip
        tracker.set_tags({"engine": engine_name, "world_size": world})
    samples_log = open(Path(run["run_dir"]) / f"samples_rank{rank}.jsonl", "a") if cfg.log_samples else None  # noqa: SIM115
    val_clips = run.get("val_clips") or []

    # ZeRO-3 parameters are partitioned outside their module's forward; every worker runs the same modules anyway.
    trainable = [p for p in engine.module.parameters() if p.requires_grad] if stage != 3 else []
    device = next(engine.module.parameters()).device
    shard = ray.train.get_dataset_shard("train")
    split = SplitCache(enabled=bool(run.get("worker_cache")))
    stop_at = min(cfg.max_steps, cfg.stop_after or cfg.max_steps)
    step, acc_metrics, t_last, clips_since = position["step"], [], time.perf_counter(), 0
    console: list[dict] = []  # rank 0: metrics since the last console line
    while step < stop_at:
        epoch = position["epoch"]
        batches = BucketSampler(cfg.sampler_config(), epoch=epoch, rank=rank).batches(
            split.stream(lambda: clip_stream(shard, lip_dim=run["lip_dim"])),
            choose=shared_task_chooser(cfg.seed, epoch),
        )
        for _ in range(position["batch_in_epoch"]):  # replay to the saved data position: same sampler state, no compute
            next(batches)
        epoch_done = False
        while step < stop_at:
            batch = next(batches, None)
            if batch is None:  # the workers agreed that no task can form a batch any more on some worker
                epoch_done = True
                break
            if samples_log is not None:
                samples_log.write(json.dumps({"step": step, "epoch": epoch, "task": batch.task,
                                              "ids": batch.source_ids}) + "\n")  # fmt: skip
                samples_log.flush()
            tb = encode_batch(batch.clips, codec, mcfg).to(device)
            boundary = engine.is_gradient_accumulation_boundary()
            with cfg.device.autocast():  # bf16 on GPU (DeepSpeed keeps fp32 master weights), fp32 on CPU
                loss, metrics = training_step(engine.module, tb, flow_cfg, gen)
            engine.backward(loss + _touch(trainable))
            engine.step()
            position["batch_in_epoch"] += 1
            acc_metrics.append(metrics)
            clips_since += len(batch.clips)
            if not boundary:
                continue
            step += 1
            position["step"] = step
            if ema is not None or stage == 3:
                gather, params = _ema_params(engine, stage)
                with gather:
                    if ema is not None:
                        ema.update(params)
            if step % cfg.log_every == 0:
                opt_mb, rss_mb = _worker_stats(engine)  # a collective: every rank takes part
            if rank == 0 and step % cfg.log_every == 0:
                now = time.perf_counter()
                out = _reduce_metrics(acc_metrics)
                out.update({
                    "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                    "lr": float(engine.lr_scheduler.get_last_lr()[0]),
                    "samples_per_s": clips_since * world / max(now - t_last, 1e-9),
                    "epoch": epoch,
                    "optimizer_state_mb": opt_mb[0],
                    "optimizer_state_mb_max": max(opt_mb),
                    "peak_rss_mb": max(rss_mb),
                })  # fmt: skip
                if tracker is not None:
                    tracker.log_metrics(out, step=step)
                console.append(out)
                if step % max(cfg.log_every, cfg.checkpoint_every) == 0 or step == stop_at:  # a line in the console
                    avg, console = _reduce_metrics(console), []
                    tasks = " ".join(f"{k[5:]} {v:.3f}" for k, v in sorted(avg.items()) if k.startswith("loss/"))
                    print(f"vssflow train: step {step}/{cfg.max_steps} loss {avg.get('loss', float('nan')):.3f} "
                          f"({tasks}) lr {out['lr']:.2e} {avg['samples_per_s']:.1f} samples/s", flush=True)  # fmt: skip
                acc_metrics, t_last, clips_since = [], now, 0
            if cfg.eval_every and step % cfg.eval_every == 0 and val_clips and step < stop_at:
                _, averaged = _models_for_export(engine, ema, cfg, stage, rank)
                if tracker is not None:
                    _log_samples(tracker, averaged, codec, val_clips, cfg, step)
            if step % cfg.checkpoint_every == 0 or step == stop_at:
                if tracker is not None:  # the metrics up to a checkpoint are in the store before it is reported
                    tracker.flush()
                _report(engine, ema, position, gen, rank, step)
        if epoch_done and position["batch_in_epoch"] == 0:
            # Without this an epoch that forms no batch would start the next (identical) epoch forever.
            raise InputError(
                f"the training data cannot form one batch of {cfg.batch_size} clips of a task per worker "
                f"({world} workers); lower --batch-size or --workers, or add clips"
            )
        if epoch_done:  # some worker ran out of clips: every worker starts the next epoch together
            split.finish_epoch()
            position = {"step": step, "epoch": epoch + 1, "batch_in_epoch": 0}
    if samples_log is not None:
        samples_log.close()

    if step >= cfg.max_steps:
        raw, averaged = _models_for_export(engine, ema, cfg, stage, rank)
        if rank == 0:
            _save_final(raw, averaged, codec, cfg, run, engine_name, step)
            if tracker is not None and val_clips:
                _log_samples(tracker, averaged, codec, val_clips, cfg, step)
    if tracker is not None:
        tracker.end(status="FINISHED" if step >= cfg.max_steps else "KILLED")


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


def _report(engine, ema, position, gen, rank, step) -> None:
    """Checkpoint through Ray Train: every rank writes its files into one temporary directory and reports it."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(engine, ema, dict(position), gen, tmp, rank)
        metrics = {"step": step, "epoch": position["epoch"], "optimizer_state_bytes": optimizer_state_bytes(engine)}
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=f"step_{step:06d}")


def _models_for_export(engine, ema: EMA | None, cfg: TrainJobConfig, stage: int, rank: int):
    """(raw, ema) CPU models on rank 0 (None elsewhere), LoRA merged. A collective under ZeRO-3 (gathers weights)."""
    import contextlib

    from vssflow.lora import merge_lora

    gather = contextlib.nullcontext()
    if stage == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
    with gather:
        if rank != 0:
            return None, None
        state = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
    raw, averaged = build_model(cfg), build_model(cfg)
    raw.load_state_dict(state)
    averaged.load_state_dict(state)
    if ema is not None:
        ema.copy_to(averaged)
    if cfg.lora_rank > 0:  # the adapter is saved (from ``averaged``) by _save_final before merging
        return merge_lora(raw).eval(), averaged.eval()
    return raw.eval(), averaged.eval()


def _save_final(raw, averaged, codec: MelCodec, cfg: TrainJobConfig, run: dict, engine_name: str, step: int) -> None:
    """``save_pretrained`` (raw + EMA weights, codec, config); the LoRA adapter (EMA) apart in ``<out>/lora``."""
    from vssflow.generator import Generator
    from vssflow.lora import merge_lora, save_adapter

    if cfg.lora_rank > 0:
        save_adapter(averaged, LoRAConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha), Path(run["out"]) / "lora")
        averaged = merge_lora(averaged)
    gen = Generator(model=raw, codec=codec, sampling=cfg.sampling_config())
    gen.step = step
    out = Path(run["out"])
    adapter = None
    if out.joinpath("lora").is_dir():  # save_pretrained replaces the directory: keep the adapter across it
        adapter = {f.name: f.read_bytes() for f in out.joinpath("lora").iterdir()}
    info = {"engine": engine_name, "data": cfg.data, "mlflow_run_id": run.get("mlflow_run_id"),
            "init": cfg.init or None, "lora_rank": cfg.lora_rank, "extractors": run.get("extract") or {}}  # fmt: skip
    gen.save_pretrained(out, ema_state=averaged.state_dict(), **info)
    if adapter:
        out.joinpath("lora").mkdir(exist_ok=True)
        for name, blob in adapter.items():
            out.joinpath("lora", name).write_bytes(blob)
    Path(run["run_dir"], "final.json").write_text(json.dumps({"out": str(out), "engine": engine_name, "step": step}))


@torch.no_grad()
def _log_samples(tracker, model: VSSFlowDiT, codec, val_clips, cfg: TrainJobConfig, step: int) -> None:
    """Generate the fixed validation clips; log .wav and generated-vs-target spectrogram PNGs."""
    from vssflow.audio.mel import log_mel
    from vssflow.constants import SAMPLE_RATE
    from vssflow.generator import Generator

    gen = Generator(model=model, codec=codec, sampling=cfg.sampling_config())
    for i, clip in enumerate(val_clips):
        wav = gen.generate(clip, steps=cfg.eval_steps, cfg=cfg.eval_cfg_scale, seed=i)
        name = f"{i:02d}_{clip.task}_{clip.meta.get('clip_id', i)}"
        tracker.log_audio(wav, SAMPLE_RATE, name, step=step)
        tracker.log_spectrogram({"generated": log_mel(wav), "target": clip.mel}, name, step=step)
