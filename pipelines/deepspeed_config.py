"""DeepSpeed configuration for the training loop: ZeRO stage, precision, optimizer, accumulation, clipping.

One function builds the JSON-like dict ``deepspeed.initialize`` takes. On CPU we train in fp32 (DeepSpeed's CPU
accelerator has no fast bf16 path) and use PyTorch's AdamW (``torch_adam``) instead of DeepSpeed's JIT-compiled
CPU Adam; on GPU bf16 is on. The learning-rate schedule is a torch ``LambdaLR`` passed to ``deepspeed.initialize``
(the same schedule drives the DDP fallback and the bare-PyTorch benchmark loop), see :func:`lr_lambda`.
"""

from __future__ import annotations

import math
from typing import Any

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
        config["zero_optimization"].update({"overlap_comm": False, "contiguous_gradients": True})
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
