"""The job's model: built for the workers (preset, ``--init``, LoRA), taken out of the engine at the end (raw and EMA
weights, LoRA merged), saved as a model directory, and sampled on the validation clips for MLflow.

Called from the worker loop (:mod:`pipelines.train_loop`): :func:`build_model` on every worker at start,
:func:`models_for_export` by every worker (a collective under ZeRO-3), :func:`save_final` and :func:`log_samples`
on rank 0.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from pipelines.train_config import RunContext, TrainJobConfig
from vssflow.audio.codec import MelCodec
from vssflow.ema import EMA
from vssflow.lora import LoRAConfig, apply_lora
from vssflow.model.dit import VSSFlowDiT

__all__ = ["build_model", "models_for_export", "save_final", "log_samples"]


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


def models_for_export(engine, ema: EMA | None, cfg: TrainJobConfig, stage: int, rank: int):
    """(raw, ema) CPU models on rank 0 (None elsewhere), LoRA merged. A collective under ZeRO-3 (gathers weights)."""
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
    if cfg.lora_rank > 0:  # the adapter is saved (from ``averaged``) by save_final before merging
        return merge_lora(raw).eval(), averaged.eval()
    return raw.eval(), averaged.eval()


def save_final(
    raw, averaged, codec: MelCodec, cfg: TrainJobConfig, run: RunContext, engine_name: str, step: int
) -> None:
    """``save_pretrained`` (raw + EMA weights, codec, config); the LoRA adapter (EMA) apart in ``<out>/lora``."""
    from vssflow.generator import Generator
    from vssflow.lora import merge_lora, save_adapter

    if cfg.lora_rank > 0:
        save_adapter(averaged, LoRAConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha), Path(run.out) / "lora")
        averaged = merge_lora(averaged)
    gen = Generator(model=raw, codec=codec, sampling=cfg.sampling_config())
    gen.step = step
    out = Path(run.out)
    adapter = None
    if out.joinpath("lora").is_dir():  # save_pretrained replaces the directory: keep the adapter across it
        adapter = {f.name: f.read_bytes() for f in out.joinpath("lora").iterdir()}
    info = {"engine": engine_name, "data": cfg.data, "mlflow_run_id": run.mlflow_run_id,
            "init": cfg.init or None, "lora_rank": cfg.lora_rank, "extractors": run.extract or {}}  # fmt: skip
    gen.save_pretrained(out, ema_state=averaged.state_dict(), **info)
    if adapter:
        out.joinpath("lora").mkdir(exist_ok=True)
        for name, blob in adapter.items():
            out.joinpath("lora", name).write_bytes(blob)
    Path(run.run_dir, "final.json").write_text(json.dumps({"out": str(out), "engine": engine_name, "step": step}))


@torch.no_grad()
def log_samples(tracker, model: VSSFlowDiT, codec, val_clips, cfg: TrainJobConfig, step: int) -> None:
    """Generate the fixed validation clips; log .wav and generated-vs-target spectrogram PNGs."""
    from vssflow.audio.mel import log_mel
    from vssflow.constants import SAMPLE_RATE
    from vssflow.generator import Generator

    gen = Generator(model=model, codec=codec, sampling=cfg.sampling_config())
    for i, clip in enumerate(val_clips):
        wav = gen.generate(clip, steps=cfg.validation.steps, cfg=gen.sampling.cfg_scale, seed=i)
        name = f"{i:02d}_{clip.task}_{clip.meta.get('clip_id', i)}"
        tracker.log_audio(wav, SAMPLE_RATE, name, step=step)
        tracker.log_spectrogram({"generated": log_mel(wav), "target": clip.mel}, name, step=step)
