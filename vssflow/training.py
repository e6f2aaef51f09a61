"""The training step as a pure function: (model, batch, config, generator) -> (loss, metrics).

Shape legend: B batch, N latent frames (25 Hz, padded), C latent channels.

The optimiser, the data loader and the distributed engine live outside (``pipelines/``); this module only samples the
flow-matching training example (t, x0, CFG dropout) from the given generator and computes the masked loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vssflow import flow
from vssflow.constants import MAX_SECONDS, TASKS, latent_frames
from vssflow.errors import FeatureShapeError
from vssflow.model.batch import GROUPS, ConditionBatch, ConditionDrop, collate
from vssflow.model.config import ModelConfig
from vssflow.model.dit import VSSFlowDiT
from vssflow.types import ClipFeatures


@dataclass(frozen=True)
class FlowConfig:
    """Flow-matching training options.

    Attributes:
        t_schedule: "uniform" (paper) or "logit_normal"; ``t_mean``/``t_std`` parametrise the latter.
        p_uncond: probability that a sample drops every condition at once (paper: 0.1, for CFG).
        p_drop_sem, p_drop_lip, p_drop_sync, p_drop_phonemes, p_drop_speaker: independent per-sample dropout of one
            group, so the model also learns each condition's absence (e.g. speech without a visible face).
        prior_weight: weight of the phoneme prior's regression loss (models with ``prior_layers > 0``): the mean
            squared error between the prior's estimate and the latent, on the TTS clips (those with phonemes).
    """

    t_schedule: str = "uniform"
    t_mean: float = 0.0
    t_std: float = 1.0
    p_uncond: float = 0.1
    p_drop_sem: float = 0.05
    p_drop_lip: float = 0.05
    p_drop_sync: float = 0.05
    p_drop_phonemes: float = 0.05
    p_drop_speaker: float = 0.05
    prior_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.t_schedule not in flow.T_SCHEDULES:
            raise ValueError(f"FlowConfig.t_schedule={self.t_schedule!r}; expected one of {flow.T_SCHEDULES}")
        for name in ("p_uncond", *(f"p_drop_{g}" for g in GROUPS)):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FlowConfig.{name}={getattr(self, name)} is not a probability")
        if not self.prior_weight >= 0.0:
            raise ValueError(f"FlowConfig.prior_weight={self.prior_weight}; expected a weight >= 0")


NO_DROPOUT = FlowConfig(p_uncond=0.0, **{f"p_drop_{g}": 0.0 for g in GROUPS})


@dataclass
class TrainBatch:
    """One training batch.

    Attributes:
        x1: (B, N, C) normalised audio latents, zero-padded beyond each clip.
        cond: the clips' conditions; ``cond.frame_mask`` (B, N) marks the real frames and ``cond.tasks`` the tasks.
    """

    x1: torch.Tensor
    cond: ConditionBatch

    @property
    def frame_mask(self) -> torch.Tensor:
        return self.cond.frame_mask

    def to(self, device: torch.device | str) -> TrainBatch:
        return TrainBatch(self.x1.to(device), self.cond.to(device))


def make_train_batch(
    latents: Sequence[np.ndarray | torch.Tensor], clips: Sequence[ClipFeatures], cfg: ModelConfig
) -> TrainBatch:
    """Pad per-clip latents (N_i, C) and collate the clips' conditions into a :class:`TrainBatch`.

    Raises:
        FeatureShapeError: a latent whose length is not the clip's ``latent_frames(duration_s)`` or whose channels
            are not ``cfg.latent_dim``.
    """
    cond = collate(clips, cfg)
    x1 = torch.zeros(cond.batch_size, cond.n_latent, cfg.latent_dim)
    for i, z in enumerate(latents):
        z = torch.as_tensor(np.asarray(z, dtype=np.float32))
        n = int(cond.n_frames[i])
        if z.ndim != 2 or z.shape[1] != cfg.latent_dim or abs(z.shape[0] - n) > 1:
            raise FeatureShapeError(
                f"latent: expected ({n}, {cfg.latent_dim}) float for a {clips[i].duration_s:.2f} s clip, "
                f"got {tuple(z.shape)} {z.dtype}"
            )
        if z.shape[0] < n:  # one frame short from rounding at the clip end: repeat the last frame
            z = torch.cat([z, z[-1:]])
        x1[i, :n] = z[:n]
    return TrainBatch(x1=x1, cond=cond)


def sample_drop(batch_size: int, cfg: FlowConfig, generator: torch.Generator) -> ConditionDrop:
    """Draw the per-group, per-sample CFG dropout masks (B,) bool on the generator's device."""
    dev = generator.device
    uncond = torch.rand(batch_size, generator=generator, device=dev) < cfg.p_uncond
    masks = {}
    for g in GROUPS:
        p = getattr(cfg, f"p_drop_{g}")
        masks[g] = uncond | (torch.rand(batch_size, generator=generator, device=dev) < p)
    return ConditionDrop(**masks)


def training_step(
    model: VSSFlowDiT, batch: TrainBatch, cfg: FlowConfig, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """One flow-matching training example: sample t, x0 and the CFG dropout, predict v, masked MSE.

    Args:
        model: the DiT (any wrapper exposing ``preprocess_conditions``/``predict_flow`` works).
        batch: latents x1 (B, N, C) and their conditions, on the model's device.
        cfg: time schedule and dropout probabilities.
        generator: the only source of randomness (seed it for reproducible steps); may live on the CPU.

    Returns:
        loss: scalar tensor (mean squared velocity error over the real frames) to backpropagate.
        metrics: floats - "loss", "t_mean" and "loss/<task>" for each task present in the batch.
    """
    x1 = batch.x1
    b, dev = x1.shape[0], x1.device
    t = flow.sample_t(b, generator=generator, schedule=cfg.t_schedule, mean=cfg.t_mean, std=cfg.t_std).to(dev)
    # Noise is drawn for the longest window and cut, so a clip's noise does not depend on how far it was padded.
    n, c = x1.shape[1], x1.shape[2]
    n_max = max(n, latent_frames(MAX_SECONDS))
    x0 = flow.sample_noise((b, n_max, c), generator=generator)[:, :n].to(dev, x1.dtype)  # (B, N, C)
    drop = sample_drop(b, cfg, generator)
    drop = ConditionDrop(*(getattr(drop, g).to(dev) for g in GROUPS))

    conditions = model.preprocess_conditions(batch.cond, drop)
    if conditions.prior is not None:  # the flow starts from N(mu, I); mu learns from its own loss below only
        x0 = x0 + conditions.prior.detach() * batch.frame_mask[..., None].to(x0.dtype)
    xt, target = flow.path_sample(x0, x1, t)  # (B, N, C) each
    v = model.predict_flow(xt, t, conditions)  # (B, N, C)
    mask = batch.frame_mask
    if getattr(model, "cfg", None) is not None and model.cfg.prediction == "data":
        # a data-predicting model learns x1 with a plain MSE: the velocity error times (1 - t) is the error of x1_hat
        # (up to the clamp); the velocity MSE itself weighs t -> 1 by 1 / (1 - t)^2 (loss ~60 at the start, against
        # 2 for velocity), and under gradient clipping the prior's regression then learns ~30x slower
        s = (1.0 - t).clamp_min(flow.T_CLAMP).to(v.dtype)[:, None, None]
        v, target = v * s, target * s
    loss = flow.flow_loss(v, target, mask)
    metrics = {"loss": float(loss.detach()), "t_mean": float(t.mean())}

    if conditions.prior is not None and cfg.prior_weight > 0:
        # The prior regresses onto the clips the model says it estimates (Conditions.prior_keep): the TTS clips for
        # a speech prior, every clip for one that also sees the video (ModelConfig.prior_inputs).
        sel = conditions.prior_keep.to(dev)
        if sel.any():
            prior_loss = flow.flow_loss(conditions.prior[sel], x1[sel], mask[sel])
            loss = loss + cfg.prior_weight * prior_loss
            metrics["loss/prior"] = float(prior_loss.detach())
    if batch.cond.tasks:
        per_sample = flow.masked_mse(v.detach(), target, mask)  # (B,)
        weight = mask.sum(dim=1).to(per_sample.dtype)  # frames per sample, so task losses match the batch loss
        task_ids = batch.cond.task_ids.to(dev)
        for i, task in enumerate(TASKS):
            sel = task_ids == i
            if sel.any():
                metrics[f"loss/{task}"] = float((per_sample[sel] * weight[sel]).sum() / weight[sel].sum())
    return loss, metrics
