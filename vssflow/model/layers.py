"""Building blocks of the DiT: rotary embedding, attention, SwiGLU, timestep embedder, block, final layer.

Shape legend:
    B  batch                  L  latent-stream tokens (N latent frames, + 1 time token in "token" mode)
    M  cross-attention tokens  D  width          Dc cross_dim
    H  heads    Hk  cross-attention kv heads    Dh head size     R  rotary dims per head
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vssflow.model.config import ModelConfig

# ---- helpers ---------------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x (B, L, D), shift/scale (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary embedding of ``dim`` dims at integer ``positions`` (L,) -> two (L, dim) tensors.

    Half-split layout (rotate_half, as diffusers' ``use_real=True, repeat_interleave_real=False``).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    freqs = positions.float()[:, None] * inv_freq[None]  # (L, R/2)
    freqs = torch.cat([freqs, freqs], dim=-1)  # (L, R)
    return freqs.cos(), freqs.sin()


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first R dims of each head of x (B, H, L, Dh); the remaining Dh - R dims pass through."""
    r = cos.shape[-1]
    if r == 0:
        return x
    x_rot, x_pass = x[..., :r], x[..., r:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    x_rot = x_rot * cos.to(x.dtype) + rotated * sin.to(x.dtype)
    return torch.cat([x_rot, x_pass], dim=-1)


# ---- attention and feed-forward ---------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention with partial RoPE and a key padding mask."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(width, 3 * width, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q, k, v = rearrange(self.to_qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)  # (B, H, L, Dh)
        q, k = apply_partial_rope(q, *rope), apply_partial_rope(k, *rope)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])  # (B, H, L, Dh)
        return self.to_out(rearrange(o, "b h l d -> b l (h d)"))


class CrossAttention(nn.Module):
    """Attention from the latent stream to the condition tokens; grouped-query when kv_heads < heads.

    No rotary embedding: condition tokens carry no positions (the paper's backbone rotates only the queries here,
    which without rotated keys adds no relative-position information, so we leave it out).
    """

    def __init__(self, width: int, cross_dim: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        head_dim = width // heads
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(cross_dim, 2 * kv_heads * head_dim, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.to_q(x), "b l (h d) -> b h l d", h=self.heads)  # (B, H, L, Dh)
        k, v = rearrange(self.to_kv(ctx), "b m (two h d) -> two b h m d", two=2, h=self.kv_heads)  # (B, Hk, M, Dh)
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=ctx_mask[:, None, None, :], enable_gqa=self.kv_heads != self.heads
        )  # (B, H, L, Dh)
        return self.to_out(rearrange(o, "b h l d -> b l (h d)"))


class SwiGLU(nn.Module):
    """Feed-forward: (silu(x W_a) * x W_b) W_o with inner size ``inner``."""

    def __init__(self, width: int, inner: int):
        super().__init__()
        self.proj_in = nn.Linear(width, 2 * inner, bias=False)
        self.proj_out = nn.Linear(inner, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(F.silu(a) * b)


# ---- embeddings ------------------------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] (B,) -> (B, D): sinusoidal features (t scaled by 1000, as DiT) -> MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]  # (B, F/2)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, F)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


# ---- block and final layer --------------------------------------------------------------------------------------


class DiTBlock(nn.Module):
    """Pre-norm block: self-attention (RoPE) -> cross-attention -> SwiGLU, each with a residual.

    With ``adaln`` the self-attention and feed-forward branches are modulated by the time embedding (adaLN-Zero:
    shift/scale/gate, gates initialised to zero so the block starts as the identity); cross-attention stays a plain
    pre-norm residual (as PixArt-alpha).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.adaln = cfg.time_conditioning == "adaln"
        affine = not self.adaln
        self.norm1 = nn.LayerNorm(cfg.width, elementwise_affine=affine, eps=1e-6)
        self.attn = SelfAttention(cfg.width, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.width, eps=1e-6)
        self.cross_attn = CrossAttention(cfg.width, cfg.cross_dim, cfg.heads, cfg.kv_heads)
        self.norm3 = nn.LayerNorm(cfg.width, elementwise_affine=affine, eps=1e-6)
        self.ff = SwiGLU(cfg.width, cfg.ff_inner)
        if self.adaln:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 6 * cfg.width))

    def forward(
        self,
        x: torch.Tensor,  # (B, L, D)
        *,
        key_mask: torch.Tensor,  # (B, L) bool
        rope: tuple[torch.Tensor, torch.Tensor],
        cross: torch.Tensor,  # (B, M, Dc)
        cross_mask: torch.Tensor,  # (B, M) bool
        c: torch.Tensor | None = None,  # (B, D) time embedding, adaLN only
    ) -> torch.Tensor:
        if self.adaln:
            shift1, scale1, gate1, shift3, scale3, gate3 = self.modulation(c).chunk(6, dim=-1)  # 6 x (B, D)
            x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), key_mask, rope)
            x = x + self.cross_attn(self.norm2(x), cross, cross_mask)
            return x + gate3.unsqueeze(1) * self.ff(modulate(self.norm3(x), shift3, scale3))
        x = x + self.attn(self.norm1(x), key_mask, rope)
        x = x + self.cross_attn(self.norm2(x), cross, cross_mask)
        return x + self.ff(self.norm3(x))


class FinalLayer(nn.Module):
    """Norm (adaLN-modulated in "adaln" mode) -> zero-initialised Linear to the latent channels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.adaln = cfg.time_conditioning == "adaln"
        norm = nn.RMSNorm if cfg.final_norm == "rms" else nn.LayerNorm  # RMSNorm keeps all `width` directions
        self.norm = norm(cfg.width, elementwise_affine=not self.adaln, eps=1e-6)
        self.linear = nn.Linear(cfg.width, cfg.latent_dim)
        if self.adaln:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)
        if self.adaln:
            shift, scale = self.modulation(c).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return self.linear(x)  # (B, L, C)
