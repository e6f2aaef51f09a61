"""LoRA (low-rank adapters) on the attention projections, for cheap fine-tuning on a user's own clips.

``apply_lora`` wraps the matching ``nn.Linear`` layers in place: ``y = W x + (alpha / r) * B A x`` with ``A``
(r, in) Kaiming-initialised and ``B`` (out, r) zero, so the wrapped model starts equal to the base model. Every
base weight is frozen; only ``A`` and ``B`` train. The adapter is saved apart from the base model
(``vssflow_lora.safetensors`` + ``vssflow_lora.json``) and can be merged into the base weights for inference.

The format is this module's own (tensor names ``<layer>.lora_A`` / ``.lora_B``, our ``LoRAConfig`` as JSON), so
its files do not take peft's names: a peft tool finding ``adapter_model.safetensors`` would misread it. Adapters
written under those names by earlier versions still load.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vssflow.errors import InputError, MissingFileError

ADAPTER_WEIGHTS = "vssflow_lora.safetensors"
ADAPTER_CONFIG = "vssflow_lora.json"
# The names earlier versions wrote (peft's names, but not peft's format): read, never written.
LEGACY_WEIGHTS, LEGACY_CONFIG = "adapter_model.safetensors", "adapter_config.json"


@dataclass(frozen=True)
class LoRAConfig:
    """Which layers get adapters and how big they are.

    Attributes:
        rank: r, the inner size of the adapter.
        alpha: scale numerator; the update is multiplied by ``alpha / rank``.
        target: regular expression matched (``re.search``) against the qualified names of ``nn.Linear`` modules;
            the default picks the projections inside attention modules (self- and cross-attention; in the VSSFlow
            DiT ``blocks.N.attn.{qkv,out}`` and ``blocks.N.cross.{q,kv,out}``).
        dropout: dropout on the adapter's input.
    """

    rank: int = 4
    alpha: float = 8.0
    target: str = (
        r"(attn|attention|cross)\w*\."
        r"(to_q|to_k|to_v|to_kv|to_qkv|to_out|q_proj|k_proj|v_proj|kv_proj|out_proj|qkv|q|kv|out)$"
    )
    dropout: float = 0.0


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus a low-rank update. x: (..., in) -> (..., out)."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:  # some callers read .weight of a projection (e.g. its dtype)
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the update folded into the weight."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.dtype)
        out.weight.copy_(self.base.weight + self.scale * self.lora_B @ self.lora_A)
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out


def _set_child(model: nn.Module, qualified: str, module: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_lora(model: nn.Module, config: LoRAConfig = LoRAConfig()) -> list[str]:
    """Freeze ``model`` and wrap its matching linear layers with adapters (in place).

    Returns:
        The qualified names of the wrapped layers.
    Raises:
        InputError: when no layer matches ``config.target``.
    """
    pattern = re.compile(config.target)
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and not n.endswith(".base") and pattern.search(n)
    ]
    if not names:
        raise InputError(f"no nn.Linear matches the LoRA target {config.target!r}; pass a target regex that does")
    model.requires_grad_(False)
    for n in names:
        _set_child(
            model, n, LoRALinear(model.get_submodule(n), rank=config.rank, alpha=config.alpha, dropout=config.dropout)
        )
    return names


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only (names end in ``lora_A`` / ``lora_B``)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}


def save_adapter(model: nn.Module, config: LoRAConfig, out_dir: str | os.PathLike) -> Path:
    """Write the adapter (weights + config) to ``out_dir`` (written to temporary names, then renamed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_c = out / (ADAPTER_WEIGHTS + ".tmp"), out / (ADAPTER_CONFIG + ".tmp")
    save_file(lora_state_dict(model), str(tmp_w))
    tmp_c.write_text(json.dumps(asdict(config), indent=2))
    os.replace(tmp_w, out / ADAPTER_WEIGHTS)
    os.replace(tmp_c, out / ADAPTER_CONFIG)
    return out


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike) -> LoRAConfig:
    """Wrap ``model`` as the saved adapter says and load the adapter weights into it."""
    d = Path(adapter_dir)
    weights, config_file = d / ADAPTER_WEIGHTS, d / ADAPTER_CONFIG
    if not weights.is_file() and (d / LEGACY_WEIGHTS).is_file():
        weights, config_file = d / LEGACY_WEIGHTS, d / LEGACY_CONFIG
    if not weights.is_file():
        raise MissingFileError(
            f"no {ADAPTER_WEIGHTS} here; pass the directory written by training with --lora-rank", source=str(d)
        )
    if not config_file.is_file():
        raise MissingFileError(f"{weights.name} without its {config_file.name}; copy both files", source=str(d))
    raw = json.loads(config_file.read_text())
    if "peft_type" in raw:
        raise InputError(
            f"{config_file.name} is a peft adapter, not a vssflow one; merge it with peft, or train one with "
            "vssflow train --lora-rank",
            source=str(d),
        )
    config = LoRAConfig(**raw)
    apply_lora(model, config)
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k.endswith(("lora_A", "lora_B")) for k in missing):
        raise InputError(f"adapter does not fit this model ({len(unexpected)} unexpected tensors)", source=str(d))
    return config


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by its merged ``nn.Linear`` (in place); returns ``model``."""
    for n, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            _set_child(model, n, m.merged())
    return model
