"""The DiT's ``predict_flow`` compiled with ``torch.compile`` at fixed bucket shapes, for generation.

A compiled graph is specialised to its input shapes; a new shape compiles again (seconds to a minute). Generation
sees every clip length, so :class:`CompiledFlow` pads each call's inputs up to a bucket before the compiled network
and cuts the output back:

- latent frames N up to the smallest training bucket (:data:`vssflow.constants.BUCKETS_S`: 2, 4, ... 10 s) that
  holds them, within the model window (``ModelConfig.max_frames``);
- cross-attention tokens M up to a multiple of :data:`TOKEN_MULTIPLE`.

Padded frames and tokens are masked (the frame mask, the cross mask), so a clip's velocity is its unpadded one up to
float rounding (the same guarantee as a clip batched with a longer one). The batch size B is not padded: Serve's
batches of 1..max_batch_size each compile once. With a model window of 10 s that is at most 5 frame buckets times
the batch sizes used, so the recompile limit of torch._dynamo is raised to :data:`RECOMPILE_LIMIT` (its default, 8,
would fall back to eager after the eighth shape).

Shape legend: B batch, N latent frames, Nb bucket frames, C latent channels, M cross tokens, Mb bucket tokens.
"""

from __future__ import annotations

import torch

from vssflow.constants import BUCKETS_S, latent_frames
from vssflow.model import Conditions, VSSFlowDiT

__all__ = ["CompiledFlow", "frame_buckets", "bucket_of", "TOKEN_MULTIPLE", "RECOMPILE_LIMIT"]

TOKEN_MULTIPLE = 32
RECOMPILE_LIMIT = 64


def frame_buckets(max_frames: int, buckets_s: tuple[float, ...] = BUCKETS_S) -> tuple[int, ...]:
    """The latent lengths calls are padded to: each bucket within the model window, and the window itself."""
    return tuple(sorted({latent_frames(b) for b in buckets_s if latent_frames(b) <= max_frames} | {max_frames}))


def bucket_of(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= n (n itself beyond the largest: a longer call compiles its own shape)."""
    return next((b for b in buckets if b >= n), n)


def _pad(x: torch.Tensor | None, length: int, value: float | bool = 0) -> torch.Tensor | None:
    """Pad dim 1 of ``x`` to ``length`` with ``value``."""
    if x is None or x.shape[1] == length:
        return x
    fill = x.new_full((x.shape[0], length - x.shape[1], *x.shape[2:]), value)
    return torch.cat([x, fill], dim=1)


class CompiledFlow:
    """``model.predict_flow`` through ``torch.compile(dynamic=False)``, called at bucket shapes.

    Args:
        model: the DiT (in eval mode, weights in the compute dtype); it is not changed, and stays usable eagerly.
        mode: torch.compile's mode (None = the default; "reduce-overhead" adds CUDA graphs on a GPU).
        backend: torch.compile's backend ("inductor" generates kernels; "eager" only traces, for tests of the
            bucketing without a compiler).
    """

    def __init__(self, model: VSSFlowDiT, *, mode: str | None = None, backend: str = "inductor"):
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        self.model = model
        self.buckets = frame_buckets(model.cfg.max_frames)
        self._fn = torch.compile(model.predict_flow, dynamic=False, mode=mode, backend=backend)
        self.shapes: set[tuple[int, int, int]] = set()  # (B, Nb, Mb) called so far: one compiled graph each

    def __call__(self, xt: torch.Tensor, t: torch.Tensor | float, conditions: Conditions) -> torch.Tensor:
        """Same contract as :meth:`VSSFlowDiT.predict_flow`: xt (B, N, C), t (B,) or scalar -> v (B, N, C)."""
        b, n, _ = xt.shape
        nb = bucket_of(n, self.buckets)
        m = conditions.cross.shape[1]
        mb = -(-m // TOKEN_MULTIPLE) * TOKEN_MULTIPLE
        padded = Conditions(
            context=_pad(conditions.context, nb),
            cross=_pad(conditions.cross, mb),
            cross_mask=_pad(conditions.cross_mask, mb, False),
            frame_mask=_pad(conditions.frame_mask, nb, False),
            prior=_pad(conditions.prior, nb),
        )
        t = torch.as_tensor(t, device=xt.device, dtype=torch.float32)
        t = t.expand(b).contiguous() if t.ndim == 0 else t
        self.shapes.add((b, nb, mb))
        return self._fn(_pad(xt, nb), t, padded)[:, :n]  # (B, Nb, C) -> (B, N, C)
