"""Exponential moving average of model weights (kept in fp32, outside the optimizer).

The EMA is updated after every optimizer step and is what ``save_pretrained`` writes as the final model; it is
also saved in every checkpoint so a resumed run continues the same average. Only trainable tensors are tracked
(with LoRA, the adapter); frozen weights are equal in the EMA and the model anyway.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` with a warm-up on the decay.

    Args:
        named_params: (name, parameter) pairs to track, usually ``model.named_parameters()`` (trainable ones are kept).
        decay: the long-run decay (e.g. 0.999).
        warmup: the effective decay is ``min(decay, (1 + n) / (warmup + n))`` after ``n`` updates, so early weights
            (random init) are forgotten quickly; 0 disables the warm-up.
    """

    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]], *, decay: float = 0.999, warmup: int = 10):
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32).clone() for name, p in named_params if p.requires_grad
        }

    def current_decay(self) -> float:
        if self.warmup <= 0:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (self.warmup + n))

    @torch.no_grad()
    def update(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Move the average towards the current values of the tracked parameters."""
        d = self.current_decay()
        for name, p in named_params:
            s = self.shadow.get(name)
            if s is not None:
                s.lerp_(p.detach().to(torch.float32), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged values into ``model``'s parameters of the same names."""
        params = dict(model.named_parameters())
        for name, s in self.shadow.items():
            if name in params:
                params[name].copy_(s.to(params[name].dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.warmup = int(state["warmup"])
        self.num_updates = int(state["num_updates"])
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tracked tensors, e.g. {sorted(missing)[:3]}")
        self.shadow = {k: v.to(torch.float32).clone() for k, v in state["shadow"].items() if k in self.shadow}
