"""DeepSpeed configuration and the training engines: ZeRO stage, precision, optimizer, accumulation, clipping.

One function builds the JSON-like dict ``deepspeed.initialize`` takes. On CPU we train in fp32 (DeepSpeed's CPU
accelerator has no fast bf16 path) and use PyTorch's AdamW (``torch_adam``) instead of DeepSpeed's JIT-compiled
CPU Adam; on GPU bf16 is on. The learning-rate schedule is a torch ``LambdaLR`` passed to ``deepspeed.initialize``
(the same schedule drives the DDP fallback and the bare-PyTorch benchmark loop), see :func:`lr_lambda`.

:func:`build_engine` returns a DeepSpeed engine, or :class:`DDPEngine` (plain data parallel with the same small
interface) when asked for or when DeepSpeed cannot start on this machine, which it says in the log.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("vssflow.train")

ZERO_STAGES = {"zero0": 0, "zero1": 1, "zero2": 2, "zero3": 3}


def zero_stage(name: str | int) -> int:
    """``"zero2"`` / ``"2"`` / ``2`` -> 2."""
    if isinstance(name, int):
        stage = name
    else:
        stage = ZERO_STAGES.get(name.lower(), int(name) if str(name).isdigit() else -1)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"unknown ZeRO stage {name!r}; use one of {sorted(ZERO_STAGES)}")
    return stage


def build_deepspeed_config(
    *,
    stage: int,
    micro_batch_per_gpu: int,
    grad_accum: int,
    world_size: int,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    grad_clip: float,
    use_gpu: bool,
) -> dict[str, Any]:
    """The DeepSpeed config dict.

    Args:
        stage: ZeRO stage 0 (plain data parallel), 1 (optimizer state sharded), 2 (+ gradients), 3 (+ parameters).
        micro_batch_per_gpu: clips per worker per forward pass.
        grad_accum: micro-batches per optimizer step.
        world_size: number of workers (train_batch_size = micro * accum * world).
        lr, weight_decay, betas: AdamW hyper-parameters (the peak lr; the schedule scales it).
        grad_clip: global gradient-norm clip (0 disables).
        use_gpu: bf16 on GPU, fp32 on CPU.
    """
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_per_gpu,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_per_gpu * grad_accum * world_size,
        "gradient_clipping": float(grad_clip),
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": lr, "betas": list(betas), "eps": 1e-8, "weight_decay": weight_decay, "torch_adam": True},
        },
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": bool(use_gpu)},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,  # we log ourselves (MLflow); keep DeepSpeed's stdout quiet
        "wall_clock_breakdown": False,
    }
    if stage >= 2:
        # contiguous_gradients copies every gradient into a flat buffer as backward produces it: it keeps GPU memory
        # unfragmented, but on CPU it is one more copy per step (tiny preset, one process, best of 4 x 20 steps on a
        # loaded machine: 114 -> 90 ms per step; the bare PyTorch step was 63 ms).
        config["zero_optimization"].update({"overlap_comm": False, "contiguous_gradients": bool(use_gpu)})
    if stage == 3:
        # Keep the final model consolidatable without zero_to_fp32: gather 16-bit weights on save.
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return config


def lr_lambda(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Multiplier of the peak lr after ``step`` optimizer steps: linear warm-up, then cosine decay to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---- engines --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser of a training job: AdamW, linear warm-up then cosine decay to ``min_lr_ratio * lr``, gradient
    clipping (``grad_clip <= 0``: none), gradient accumulation, and the EMA of the weights saved with the model."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    ema_decay: float = 0.99
    ema_warmup: int = 10


@dataclass(frozen=True)
class EngineSettings:
    """What the engines read of a training job (``pipelines.train_loop.TrainJobConfig.engine_settings``)."""

    engine: str  # "zero0".."zero3" or "ddp"
    optim: OptimConfig
    batch_size: int  # clips per worker per micro-step
    max_steps: int
    use_gpu: bool


class DDPEngine:
    """The plain data-parallel fallback with the DeepSpeed engine's small interface (backward / step / save / load).

    Gradients are averaged across workers with one flat all-reduce per optimizer step (what DDP does, without its
    forward wrapper, since the training step calls ``preprocess_conditions`` / ``predict_flow`` directly).
    """

    def __init__(self, model: torch.nn.Module, cfg: EngineSettings, schedule):
        self.module = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.grad_accum, self.grad_clip = cfg.optim.grad_accum, cfg.optim.grad_clip
        self.micro_steps, self._grad_norm = 0, 0.0

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.grad_accum == 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def _all_reduce_grads(self) -> None:
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for p, g in zip(self.params, _unflatten_dense_tensors(flat, grads), strict=True):
            p.grad = g

    def step(self) -> None:
        if self.is_gradient_accumulation_boundary():
            if dist.is_initialized() and dist.get_world_size() > 1:
                self._all_reduce_grads()
            clip = self.grad_clip if self.grad_clip > 0 else float("inf")
            self._grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.micro_steps += 1

    def get_global_grad_norm(self) -> float:
        return self._grad_norm

    def save_checkpoint(self, directory: str, tag: str, client_state: dict) -> None:
        if not dist.is_initialized() or dist.get_rank() == 0:
            state = {
                "module": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "micro_steps": self.micro_steps,
                **client_state,
            }
            torch.save(state, Path(directory) / f"{tag}_ddp.pt")

    def load_checkpoint(self, directory: str, tag: str) -> dict:
        state = torch.load(Path(directory) / f"{tag}_ddp.pt", map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.micro_steps = state["micro_steps"]
        return state


def _deepspeed_checkpoint_globals() -> list:
    """The only non-tensor classes in DeepSpeed's ZeRO checkpoints (found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` on ZeRO-0..3 files): plain data, nothing that runs."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]


def _load_weights_only(path: str, map_location=None):
    """What DeepSpeed's checkpoint engine loads with: ``torch.load(weights_only=True)`` and the classes above, so a
    checkpoint someone else could write (shared storage) cannot run code when a job resumes from it."""
    with torch.serialization.safe_globals(_deepspeed_checkpoint_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def deepspeed_config_for(cfg: EngineSettings, world: int) -> dict[str, Any]:
    """The DeepSpeed config of a training job on ``world`` workers (bf16 from the job's device: ``use_gpu``)."""
    return build_deepspeed_config(
        stage=zero_stage(cfg.engine),
        micro_batch_per_gpu=cfg.batch_size,
        grad_accum=cfg.optim.grad_accum,
        world_size=world,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        grad_clip=cfg.optim.grad_clip,
        use_gpu=cfg.use_gpu,
    )


def build_engine(model: torch.nn.Module, cfg: EngineSettings, world: int):
    """DeepSpeed engine for zero0..3; plain DDP for ``ddp`` or when DeepSpeed cannot start here (said in the log)."""
    schedule = partial(
        lr_lambda, warmup_steps=cfg.optim.warmup_steps, total_steps=cfg.max_steps, min_ratio=cfg.optim.min_lr_ratio
    )
    if cfg.engine == "ddp":
        log.warning("engine: plain PyTorch DDP (asked for with --deepspeed ddp)")
        return DDPEngine(model, cfg, schedule), "ddp"
    try:
        import deepspeed

        ds_config = deepspeed_config_for(cfg, world)
        params = [p for p in model.parameters() if p.requires_grad]
        engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=params,
            config=ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            dist_init_required=False,
        )
        engine.checkpoint_engine.load = _load_weights_only  # DeepSpeed's own unpickles anything (weights_only=False)
        return engine, cfg.engine
    except Exception as e:  # noqa: BLE001 - any DeepSpeed start-up failure means "fall back", loudly
        log.warning("engine: DeepSpeed cannot run here (%s: %s); FALLING BACK to plain PyTorch DDP",
                    type(e).__name__, e)  # fmt: skip
        return DDPEngine(model, cfg, schedule), "ddp"


def optimizer_state_bytes(engine) -> int:
    """Bytes of optimizer state tensors held by this worker (ZeRO 1/2/3 shard them across workers)."""
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)  # DeepSpeed ZeRO wraps the torch optimizer
    total = 0
    for state in inner.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.numel() > 1:
                total += v.numel() * v.element_size()
    return total
