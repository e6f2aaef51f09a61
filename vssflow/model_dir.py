"""What a saved model directory holds, and how it is written and read (``Generator.save_pretrained`` /
``Generator.from_pretrained`` call :func:`save_model_dir` / :func:`load_model_dir`).

A model directory holds everything needed to rebuild the generator with nothing else:

    config.json            format version, ModelConfig, training step, sampling defaults, extractor names,
                           the sha256 of every other file (checked when the file is loaded)
    model.safetensors      DiT weights
    ema.safetensors        EMA of the weights (optional; used for generation by default when present)
    codec/                 the latent codec (MelCodec statistics, or an AutoencoderKL copy)

It is a symlink to a hidden version beside it (``.tiny.v-<time>-<id>`` for ``tiny``), so that saving over it is
one atomic step (:func:`vssflow.files.staged_directory`); a plain directory loads the same.

:func:`read_model_config` reads ``config.json`` alone (``vssflow info``, the front ends' checks before they start),
without loading weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vssflow import __version__
from vssflow.audio.codec import LatentCodec, load_codec
from vssflow.errors import AssetError, MissingFileError
from vssflow.files import check_sha256, sha256_file, staged_directory
from vssflow.model import ModelConfig, VSSFlowDiT
from vssflow.sampling import SamplingConfig

FORMAT = "vssflow-generator"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SavedModel:
    """What :func:`load_model_dir` read back: enough to build a ``Generator`` (it adds a vocoder and a device)."""

    config: ModelConfig
    model: VSSFlowDiT  # weights loaded (the EMA ones when asked for and present), on the CPU, fp32
    codec: LatentCodec
    sampling: SamplingConfig
    step: int
    info: dict[str, Any]  # the recorded facts, plus "weights": the name of the weight file loaded


def save_model_dir(
    directory: str | os.PathLike,
    *,
    model: VSSFlowDiT,
    config: ModelConfig,
    codec: LatentCodec,
    sampling: SamplingConfig,
    step: int,
    info: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a model directory in one atomic step (:func:`vssflow.files.staged_directory`): ``directory`` becomes
    a symlink to a new hidden version beside it, fsynced before the switch; a kill at any moment leaves the previous
    model or the new one. ``config.json`` records the sha256 of every other file, checked at load.

    Args:
        directory: target; replaced if it exists.
        model, config, codec, sampling, step: what the directory describes (``config`` is the one recorded).
        info: extra JSON-serialisable facts to record (e.g. data version, extractor names, MLflow run id).
        ema_state: EMA weights to store next to the raw weights (same keys as ``model.state_dict()``).

    Returns:
        ``directory`` as a Path.
    """
    target = Path(directory)
    with staged_directory(target) as tmp:
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors")
        if ema_state is not None:
            ema = {k: v.detach().float().cpu().contiguous() for k, v in ema_state.items()}
            save_file(ema, tmp / "ema.safetensors")
        codec.save(tmp / "codec")
        files = sorted(f for f in tmp.rglob("*") if f.is_file())
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "vssflow_version": __version__,
            "model": config.to_dict(),
            "sampling": sampling.__dict__,
            "step": step,
            "num_params": model.num_params(),
            "info": info,
            "sha256": {f.relative_to(tmp).as_posix(): sha256_file(f) for f in files},
        }
        (tmp / "config.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    return target


def load_model_dir(directory: str | os.PathLike, *, use_ema: bool = True) -> SavedModel:
    """Read a model directory written by :func:`save_model_dir`, checking the sha256 of the weights it loads and
    of the codec files first.

    Args:
        use_ema: load the EMA weights when the directory has them.

    Raises:
        MissingFileError / AssetError, one line naming the directory or the file.
    """
    directory = Path(directory)
    config = read_model_config(directory)
    model_cfg = ModelConfig.from_dict(config["model"])
    weights = directory / (
        "ema.safetensors" if use_ema and (directory / "ema.safetensors").exists() else "model.safetensors"
    )
    sums = config.get("sha256", {})  # absent in directories written before checksums were recorded
    fix = "the model directory is corrupt; copy it again or re-run `vssflow train`"
    for name in sorted(n for n in sums if not (directory / n).is_file()):  # a file config.json says it holds
        if name != "ema.safetensors":  # the EMA is optional: without it the raw weights are loaded
            raise MissingFileError(f"{fix} ({name} is missing)", source=str(directory / name))
    if not weights.is_file():
        raise MissingFileError(f"{fix} (no {weights.name})", source=str(weights))
    for path in [weights, *sorted(p for p in (directory / "codec").rglob("*") if p.is_file())]:
        check_sha256(path, sums.get(path.relative_to(directory).as_posix()), fix=fix)
    model = VSSFlowDiT(model_cfg)
    state = load_file(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AssetError(
            f"{weights}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "the directory is corrupt or from another version"
        )
    sampling = SamplingConfig(**config.get("sampling", {}))
    return SavedModel(
        config=model_cfg,
        model=model,
        codec=load_codec(directory / "codec"),
        sampling=sampling,
        step=int(config.get("step", 0)),
        info={**config.get("info", {}), "weights": weights.name},
    )


def read_model_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``config.json`` of a model directory (one-line errors naming the directory)."""
    directory = Path(directory)
    path = directory / "config.json"
    if not directory.is_dir():
        raise MissingFileError(
            "model directory not found; pass the --out directory of `vssflow train`", source=str(directory)
        )
    if not path.exists():
        raise AssetError(f"{directory}: no config.json; this is not a vssflow model directory")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise AssetError(f"{path}: format {config.get('format')!r} is not {FORMAT!r}")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise AssetError(
            f"{path}: format version {config['format_version']} is newer than this vssflow "
            f"({FORMAT_VERSION}); upgrade vssflow"
        )
    return config
