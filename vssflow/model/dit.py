"""The VSSFlow DiT: predicts the flow velocity of the audio latent given the time and the encoded conditions.

Shape legend:
    B batch   N latent frames (25 Hz)   C latent channels   D width   L = N (+1 time token in "token" mode)
    M cross-attention tokens   Dc cross_dim   Cc in-context condition channels

Network contract (as MMAudio): ``preprocess_conditions(cond) -> Conditions`` once per generation, then
``predict_flow(xt, t, conditions) -> v`` once per solver step. The network knows nothing about time sampling,
ODE solvers or guidance (see :mod:`vssflow.flow`).
"""

from __future__ import annotations

import torch
from torch import nn

from vssflow.flow import T_CLAMP
from vssflow.model.batch import ConditionBatch, ConditionDrop
from vssflow.model.conditions import ConditionEncoder, Conditions
from vssflow.model.config import ModelConfig
from vssflow.model.layers import DiTBlock, FinalLayer, TimestepEmbedder, rope_cos_sin


class VSSFlowDiT(nn.Module):
    """In-context input projection -> (time token | adaLN) -> DiT blocks with RoPE self-attention and cross-attention.

    Args:
        cfg: sizes and condition placements; ``ModelConfig()`` is the tiny preset.
    """

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        self.conditions = ConditionEncoder(cfg)
        self.proj_in = nn.Linear(cfg.context_dim, cfg.width)
        self.t_embedder = TimestepEmbedder(cfg.width, cfg.time_freq_dim)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT recipe: xavier Linear layers; adaLN modulations and the output layer start at zero, so the untrained
        # network predicts v = 0 and every adaLN block starts as the identity.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            if block.adaln:
                nn.init.zeros_(block.modulation[-1].weight)
                nn.init.zeros_(block.modulation[-1].bias)
        if self.final.adaln:
            nn.init.zeros_(self.final.modulation[-1].weight)
            nn.init.zeros_(self.final.modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def num_params(self, *, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def preprocess_conditions(self, cond: ConditionBatch, drop: ConditionDrop | None = None) -> Conditions:
        """Encode the conditions once per generation (or training step).

        Args:
            cond: padded conditions with presence masks (see :func:`vssflow.model.batch.collate`).
            drop: per-group, per-sample (B,) bool masks; True replaces the condition by its learned absent value
                (classifier-free guidance). None = drop nothing.

        Returns:
            Conditions: in-context channels (B, N, Cc), cross tokens (B, M, Dc) + mask, frame mask (B, N).
        """
        return self.conditions(cond, drop)

    def predict_flow(self, xt: torch.Tensor, t: torch.Tensor | float, conditions: Conditions) -> torch.Tensor:
        """Velocity of the flow at (xt, t).

        Args:
            xt: (B, N, C) noisy latent (t = 0 noise, t = 1 data).
            t: (B,) or scalar flow time in [0, 1].
            conditions: output of :meth:`preprocess_conditions` for the same B and N.

        Returns:
            v: (B, N, C); zero on padded frames.
        """
        b, n, _ = xt.shape
        t = torch.as_tensor(t, device=xt.device, dtype=torch.float32)
        t = t.expand(b) if t.ndim == 0 else t
        frame_mask = conditions.frame_mask  # (B, N)
        h = xt if conditions.context is None else torch.cat([xt, conditions.context.to(xt.dtype)], dim=-1)
        h = self.proj_in(h)  # (B, N, Cin) -> (B, N, D)
        c = self.t_embedder(t).to(h.dtype)  # (B, D)
        key_mask = frame_mask
        adaln = self.cfg.time_conditioning == "adaln"
        if not adaln:  # the time is one more token in front of the sequence, always visible
            h = torch.cat([c[:, None], h], dim=1)  # (B, N + 1, D)
            key_mask = torch.cat([frame_mask.new_ones(b, 1), frame_mask], dim=1)  # (B, L)
        rope = rope_cos_sin(torch.arange(h.shape[1], device=h.device), self.cfg.rope_dim)
        cross = conditions.cross.to(h.dtype)
        c_ada = c if adaln else None
        for block in self.blocks:
            h = block(h, key_mask=key_mask, rope=rope, cross=cross, cross_mask=conditions.cross_mask, c=c_ada)
        if not adaln:
            h = h[:, 1:]  # (B, N, D): drop the time token
        v = self.final(h, c_ada)  # (B, N, C)
        if self.cfg.prediction == "data":  # the head predicts x1 (a residual on mu): v = (x1_hat - x_t) / (1 - t)
            if conditions.prior is not None:
                v = v + conditions.prior.detach().to(v.dtype)
            v = (v - xt) / (1.0 - t).clamp_min(T_CLAMP).to(v.dtype)[:, None, None]
        return v * frame_mask[..., None].to(v.dtype)

    def forward(
        self, xt: torch.Tensor, t: torch.Tensor, cond: ConditionBatch, drop: ConditionDrop | None = None
    ) -> torch.Tensor:
        """``predict_flow(xt, t, preprocess_conditions(cond, drop))`` -> v (B, N, C)."""
        return self.predict_flow(xt, t, self.preprocess_conditions(cond, drop))
