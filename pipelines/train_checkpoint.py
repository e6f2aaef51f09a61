"""Training checkpoints: what each rank writes (DeepSpeed's model/optimizer shards, its data position and RNG
states, rank 0 the EMA), how it is restored (``torch.load(weights_only=True)`` only), and the report to Ray Train."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from pipelines.deepspeed_config import optimizer_state_bytes
from vssflow.ema import EMA

WORKER_STATE = "worker_{rank}.pt"
EMA_FILE = "ema.pt"
DS_TAG = "ds"


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


def report_checkpoint(engine, ema: EMA | None, position: dict, gen: torch.Generator, rank: int, step: int) -> None:
    """Checkpoint through Ray Train: every rank writes its files into one temporary directory and reports it."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(engine, ema, dict(position), gen, tmp, rank)
        metrics = {"step": step, "epoch": position["epoch"], "optimizer_state_bytes": optimizer_state_bytes(engine)}
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=f"step_{step:06d}")
