"""Flow matching, pure functions: the linear path, the masked velocity loss, time sampling, guidance and ODE solvers.

Shape legend: B batch, N latent frames, C latent channels. Time runs from t = 0 (noise x0) to t = 1 (data x1).

None of this knows the network: solvers integrate any ``velocity_fn(x, t) -> v`` with x (B, N, C) and t (B,)
(as Meta's ``flow_matching``). Everything is deterministic given its inputs and the ``torch.Generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

METHODS = ("euler", "midpoint", "dopri5")
T_SCHEDULES = ("uniform", "logit_normal")
# 1 - t below which a data-predicting model's velocity (x1_hat - x_t) / (1 - t) stops growing (ModelConfig.prediction)
T_CLAMP = 0.05

# ---- path and loss ---------------------------------------------------------------------------------------------


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against x."""
    return t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def path_sample(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear (conditional OT / rectified flow) path.

    Args:
        x0: (B, N, C) noise.
        x1: (B, N, C) data.
        t: (B,) time in [0, 1].

    Returns:
        xt = (1 - t) x0 + t x1 and the target velocity x1 - x0, both (B, N, C).
    """
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * x1, x1 - x0


def masked_mse(v: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over the valid frames.

    Args:
        v, target: (B, N, C).
        mask: (B, N) bool, True on frames that count.

    Returns:
        (B,) mean over the valid elements of each sample (0 for a sample with no valid frame).
    """
    m = mask.to(v.dtype)[..., None]  # (B, N, 1)
    se = ((v - target) ** 2 * m).sum(dim=(1, 2))  # (B,)
    return se / (m.sum(dim=(1, 2)) * v.shape[-1]).clamp(min=1)


def flow_loss(v: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Velocity MSE averaged over all valid elements of the batch (padded frames excluded): a scalar."""
    m = mask.to(v.dtype)[..., None]  # (B, N, 1)
    return ((v - target) ** 2 * m).sum() / (m.sum() * v.shape[-1]).clamp(min=1)


# ---- time and noise sampling -------------------------------------------------------------------------------------


def sample_t(
    batch_size: int,
    *,
    generator: torch.Generator,
    schedule: str = "uniform",
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """Training times (B,) on the generator's device: U(0, 1), or logit-normal sigmoid(N(mean, std)) (SD3)."""
    dev = generator.device
    if schedule == "uniform":
        return torch.rand(batch_size, generator=generator, device=dev)
    if schedule == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(batch_size, generator=generator, device=dev))
    raise ValueError(f"unknown time schedule {schedule!r}; expected one of {T_SCHEDULES}")


def sample_noise(shape: tuple[int, ...], *, generator: torch.Generator, dtype: torch.dtype = torch.float32):
    """x0 ~ N(0, I) of ``shape`` on the generator's device."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)


# ---- classifier-free guidance ------------------------------------------------------------------------------------


def cfg_velocity(cond_fn: VelocityFn, uncond_fn: VelocityFn, cfg_scale: float) -> VelocityFn:
    """Classifier-free guidance ``v = v_u + s (v_c - v_u)``; with s == 1 the conditional function itself is returned.

    Args:
        cond_fn, uncond_fn: velocity functions with all conditions / with the conditions dropped.
        cfg_scale: guidance scale s (paper: 3).
    """
    if cfg_scale == 1.0:
        return cond_fn

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_c, v_u = cond_fn(x, t), uncond_fn(x, t)
        return v_u + cfg_scale * (v_c - v_u)

    return guided


def cfg_velocity_batched(
    joint_fn: VelocityFn, cond_only_fn: VelocityFn, cfg_scale: float, *, rescale: float = 0.0
) -> VelocityFn:
    """CFG with one network call on a doubled batch: ``joint_fn`` gets [x; x], [t; t] (2B) and returns [v_c; v_u].

    ``cond_only_fn`` (B) is used when s == 1, so that scale 1 costs one branch and equals the conditional output.
    ``rescale`` > 0 applies :func:`rescale_guidance` (0 = the paper's plain guidance).
    """
    if cfg_scale == 1.0:
        return cond_only_fn

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_c, v_u = joint_fn(torch.cat([x, x]), torch.cat([t, t])).chunk(2)
        v = v_u + cfg_scale * (v_c - v_u)
        return rescale_guidance(x, t, v, v_c, rescale) if rescale > 0 else v

    return guided


def rescale_guidance(x: torch.Tensor, t: torch.Tensor, v: torch.Tensor, v_c: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescaled (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", §3.4) on
    the flow's data prediction x̂1 = x + (1 - t) v: the guided x̂1 is scaled to the RMS of the conditional x̂1, per
    sample, and mixed back with weight ``phi``.

    Plain guidance multiplies the conditional-minus-unconditional difference by the scale in every direction, the
    overall level included: with s = 3 a speech clip's predicted loudness overshoots by ~10 dB. Rescaling keeps the
    direction guidance chooses and the level the conditional model predicts. Padded frames (x = v = 0) do not count.

    Args:
        x: (B, N, C) state; t: (B,) time; v: guided velocity; v_c: conditional velocity; phi: 0 (none) .. 1 (full).
    """
    one_minus_t = _bcast(1.0 - t, x).clamp(min=1e-4)
    x1_cfg, x1_c = x + one_minus_t * v, x + one_minus_t * v_c  # (B, N, C) data predictions
    dims = tuple(range(1, x.ndim))
    ratio = x1_c.pow(2).mean(dims, keepdim=True).sqrt() / x1_cfg.pow(2).mean(dims, keepdim=True).sqrt().clamp(min=1e-8)
    x1 = phi * ratio * x1_cfg + (1.0 - phi) * x1_cfg
    return (x1 - x) / one_minus_t


# ---- ODE solvers -------------------------------------------------------------------------------------------------


def _t(x: torch.Tensor, value: float) -> torch.Tensor:
    """(B,) time tensor; float32 (float64 when the state is float64, for exactness checks)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=dtype)


def euler(velocity_fn: VelocityFn, x0: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    """Fixed-step Euler from t = 0 to 1; returns (x1, number of function evaluations)."""
    x, h = x0, 1.0 / steps
    for i in range(steps):
        x = x + h * velocity_fn(x, _t(x, i * h))
    return x, steps


def midpoint(velocity_fn: VelocityFn, x0: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    """Fixed-step explicit midpoint (2nd order, 2 evaluations per step); returns (x1, nfe)."""
    x, h = x0, 1.0 / steps
    for i in range(steps):
        t = i * h
        x_mid = x + 0.5 * h * velocity_fn(x, _t(x, t))
        x = x + h * velocity_fn(x_mid, _t(x, t + 0.5 * h))
    return x, 2 * steps


# Dormand-Prince 5(4) tableau (FSAL).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def dopri5(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    first_step: float = 0.1,
    max_steps: int = 1000,
) -> tuple[torch.Tensor, int]:
    """Adaptive Dormand-Prince 5(4) from t = 0 to 1, with a time and a step size per sample.

    Error control per sample: RMS over the sample's valid elements of err / (atol + rtol * max(|x|, |x_new|)) <= 1.
    Each sample accepts, rejects and sizes its steps on its own error (one network call still serves the whole
    batch, each row at its own t), so a clip's trajectory does not depend on its batch-mates or on its padding.
    (torchdiffeq takes one norm over the batch: there a long clip's error would set a short clip's steps.)

    Args:
        velocity_fn: (x (B, N, C), t (B,)) -> v (B, N, C).
        x0: (B, N, C) start at t = 0.
        mask: (B, N) bool, True on the frames that count in the error norm (default: all).
        atol, rtol: tolerances; first_step: the first step size; max_steps: attempted steps per sample at most.

    Returns:
        (x1, nfe) - the solution at t = 1 and the number of (batched) velocity evaluations.
    """
    b = x0.shape[0]
    tdtype = _t(x0, 0.0).dtype
    m = torch.ones(x0.shape[:2], dtype=torch.bool, device=x0.device) if mask is None else mask.to(x0.device)
    m = m.reshape(*m.shape, *([1] * (x0.ndim - m.ndim))).to(x0.dtype).expand_as(x0)  # (B, N, C)
    n_valid = m.flatten(1).sum(1).clamp(min=1)  # (B,)
    t = torch.zeros(b, dtype=torch.float64, device=x0.device)  # float64 bookkeeping: t reaches 1 exactly
    h = torch.full_like(t, min(first_step, 1.0))
    x, k1 = x0, velocity_fn(x0, t.to(tdtype))
    nfe, steps = 1, 0
    while bool((t < 1.0).any()):
        if steps >= max_steps:
            raise RuntimeError(f"dopri5: no convergence in {max_steps} steps (atol={atol}, rtol={rtol})")
        active = t < 1.0
        h = torch.where(active, torch.minimum(h, 1.0 - t), torch.zeros_like(h))  # finished samples stand still
        hb = _bcast(h, x)
        ks = [k1]
        for c, a in zip(_DP_C[1:], _DP_A[1:], strict=True):
            xi = x + hb * sum(aj * kj for aj, kj in zip(a, ks, strict=False) if aj != 0.0)
            ks.append(velocity_fn(xi, (t + c * h).to(tdtype)))
        nfe += 6
        x5 = x + hb * sum(bj * k for bj, k in zip(_DP_B5, ks, strict=True) if bj != 0.0)
        x4 = x + hb * sum(bj * k for bj, k in zip(_DP_B4, ks, strict=True) if bj != 0.0)
        scale = atol + rtol * torch.maximum(x.abs(), x5.abs())
        err = (((x5 - x4) / scale).pow(2) * m).flatten(1).sum(1).div(n_valid).sqrt().double()  # (B,)
        err = torch.where(active, err, torch.zeros_like(err))
        steps += 1
        accept = active & (err <= 1.0)  # FSAL: an accepted step's 7th stage is the first of the next step
        ab = _bcast(accept, x).bool()
        x, k1 = torch.where(ab, x5, x), torch.where(ab, ks[-1], k1)
        t = torch.where(accept, t + h, t)
        t = torch.where(1.0 - t < 1e-12, torch.ones_like(t), t)
        # standard controller: safety 0.9, order 5, growth clamped to [0.2, 10]
        factor = torch.where(err == 0.0, 10.0, (0.9 * err.clamp(min=1e-300) ** (-1 / 5)).clamp(0.2, 10.0))
        h = h * factor
    return x, nfe


def sample(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    *,
    steps: int = 16,
    method: str = "euler",
    atol: float = 1e-5,
    rtol: float = 1e-5,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Integrate dx/dt = velocity_fn(x, t) from the noise x0 (t = 0) to the data (t = 1).

    Args:
        velocity_fn: (x (B, N, C), t (B,)) -> v (B, N, C), e.g. a :func:`cfg_velocity` wrapper.
        x0: (B, N, C) starting noise (draw it with :func:`sample_noise` and a seeded generator).
        steps: number of steps (euler, midpoint); for dopri5 the first step is 1/steps, then adaptive.
        method: "euler", "midpoint" or "dopri5".
        atol, rtol: dopri5 tolerances (paper: 1e-5).
        mask: (B, N) bool, the valid frames of each sample: dopri5's error norm is taken per sample over them.

    Returns:
        (x1, nfe): the sample (B, N, C) and the number of velocity evaluations.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method == "euler":
        return euler(velocity_fn, x0, steps)
    if method == "midpoint":
        return midpoint(velocity_fn, x0, steps)
    if method == "dopri5":
        return dopri5(velocity_fn, x0, mask=mask, atol=atol, rtol=rtol, first_step=1.0 / steps)
    raise ValueError(f"unknown ODE method {method!r}; expected one of {METHODS}")
