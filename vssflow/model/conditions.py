"""Condition encoders: ConditionBatch -> Conditions (in-context channels + cross-attention tokens), once per generation.

Shape legend:
    B batch    N latent frames (25 Hz)   S semantic frames (10 fps)   P phonemes   M cross-attention tokens
    Dc cross_dim   Dl lip_dim   Dy sync_dim   Dp phoneme_dim
    Cc in-context condition channels (context_dim - latent_dim)   C latent channels   Dq prior_dim

Each condition group (sem, lip, sync, phonemes, speaker) has a learned "absent" value used when a clip lacks the
condition (presence mask) or when it is dropped for classifier-free guidance (drop mask). Nothing here is random.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import nn
from torch.nn import functional as F

from vssflow.constants import LATENT_HZ, SEM_FPS
from vssflow.model.batch import GROUPS, ConditionBatch, ConditionDrop
from vssflow.model.config import ModelConfig


@dataclass
class Conditions:
    """Encoded conditions, reused by every solver step.

    Attributes:
        context: (B, N, Cc) condition channels concatenated with the noisy latent, or None if nothing is in context.
        cross: (B, M, Dc) cross-attention tokens (the speaker token first).
        cross_mask: (B, M) bool, True on real tokens.
        frame_mask: (B, N) bool, True on the latent frames of each clip.
        prior: (B, N, C) the phoneme prior's estimate mu of the latent, the mean the flow starts from (x0 ~ N(mu, I)),
            or None for a model without a prior. It sees the clip's phonemes and speaker whatever the CFG dropout, so
            the conditional and unconditional velocities of one solver step share their starting point.
        prior_keep: (B,) bool, the clips the prior's regression loss applies to: every clip for a prior that sees the
            video (``prior_inputs="all"``), the TTS clips for a speech prior (a joint clip's latent also holds sound).
    """

    context: torch.Tensor | None
    cross: torch.Tensor
    cross_mask: torch.Tensor
    frame_mask: torch.Tensor
    prior: torch.Tensor | None = None
    prior_keep: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.frame_mask.shape[0])

    @staticmethod
    def cat(items: list[Conditions]) -> Conditions:
        """Concatenate along the batch (e.g. conditional + unconditional for one CFG forward); pads cross tokens."""
        m = max(c.cross.shape[1] for c in items)

        def pad(x: torch.Tensor, value: float | bool) -> torch.Tensor:
            extra = m - x.shape[1]
            if not extra:
                return x
            fill = x.new_full((x.shape[0], extra, *x.shape[2:]), value)
            return torch.cat([x, fill], dim=1)

        return Conditions(
            context=None if items[0].context is None else torch.cat([c.context for c in items]),
            cross=torch.cat([pad(c.cross, 0.0) for c in items]),
            cross_mask=torch.cat([pad(c.cross_mask, False) for c in items]),
            frame_mask=torch.cat([c.frame_mask for c in items]),
            prior=None if items[0].prior is None else torch.cat([c.prior for c in items]),
            prior_keep=None if items[0].prior_keep is None else torch.cat([c.prior_keep for c in items]),
        )


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Two-layer SiLU MLP without biases (the paper's condition projections)."""
    return nn.Sequential(nn.Linear(d_in, d_hidden, bias=False), nn.SiLU(), nn.Linear(d_hidden, d_out, bias=False))


class LipCNN(nn.Module):
    """Small trainable encoder of 32x32 uint8 mouth crops, one frame at a time: (K, 32, 32) -> (K, lip_dim)."""

    def __init__(self, lip_dim: int, channels: tuple[int, int, int] = (16, 32, 32)):
        super().__init__()
        c1, c2, c3 = channels
        self.convs = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1), nn.SiLU(),  # (K, c1, 16, 16)
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.SiLU(),  # (K, c2, 8, 8)
            nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.SiLU(),  # (K, c3, 4, 4)
        )  # fmt: skip
        self.proj = nn.Linear(c3 * 16, lip_dim)  # keep the 4x4 layout: mouth shape matters, not just its energy

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.to(self.proj.weight.dtype).unsqueeze(1) / 127.5 - 1.0  # (K, 1, 32, 32) in [-1, 1]
        return self.proj(rearrange(self.convs(x), "k c h w -> k (c h w)"))


class SyncCNN(nn.Module):
    """Trainable encoder of the 25 fps sync thumbnails: (K, N, 32, 32) uint8 -> (K, N, sync_dim).

    Each frame is encoded together with its difference to the previous frame (2 input channels), so motion and
    its changes (an impact reverses it) are visible to a per-frame CNN; self-attention over the in-context stream
    then relates frames across time.
    """

    def __init__(self, sync_dim: int, channels: tuple[int, int, int] = (16, 32, 32)):
        super().__init__()
        c1, c2, c3 = channels
        self.convs = nn.Sequential(
            nn.Conv2d(2, c1, 3, stride=2, padding=1), nn.SiLU(),  # (K*N, c1, 16, 16)
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.SiLU(),  # (K*N, c2, 8, 8)
            nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.SiLU(),  # (K*N, c3, 4, 4)
        )  # fmt: skip
        self.proj = nn.Linear(c3 * 16, sync_dim)  # keep the 4x4 layout: where the motion is matters

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(self.proj.weight.dtype) / 127.5 - 1.0  # (K, N, 32, 32) in [-1, 1]
        diff = torch.diff(x, dim=1, prepend=x[:, :1])  # (K, N, 32, 32); 0 at the first frame
        pairs = rearrange(torch.stack([x, diff], dim=2), "k n c h w -> (k n) c h w")  # (K*N, 2, 32, 32)
        out = self.proj(rearrange(self.convs(pairs), "kn c h w -> kn (c h w)"))  # (K*N, Dy)
        return rearrange(out, "(k n) d -> k n d", k=frames.shape[0])


class PhonemePrior(nn.Module):
    """Phonemes on the latent grid + speaker -> a direct estimate of the speech latent (B, N, C).

    The encoder prior of Grad-TTS / Matcha-TTS, on our frame-level phoneme layout: residual 1-D convolutions (kernel
    5 = 200 ms, so neighbouring phonemes shape each frame) over the laid-out phoneme embeddings plus the speaker
    token, regressed onto the TTS clips' latents (:func:`vssflow.training.training_step`); the flow then starts from
    N(mu, I), so the DiT refines an estimate that already says the words. Padded frames are zeroed before every
    convolution, so a clip's estimate does not depend on how far its batch was padded.
    """

    def __init__(self, cfg: ModelConfig, *, video: bool | None = None):
        super().__init__()
        d = cfg.prior_dim
        video = cfg.prior_inputs in ("all", "split") if video is None else video
        self.phoneme_in = nn.Linear(cfg.phoneme_dim, d)
        self.speaker_in = nn.Linear(cfg.cross_dim, d)
        if video:
            self.visual_in = nn.Linear(cfg.cross_dim + cfg.sync_dim, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(cfg.prior_layers))
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv1d(d, d, 5, padding=2), nn.SiLU(), nn.Conv1d(d, d, 1)) for _ in range(cfg.prior_layers)
        )
        self.out = nn.Linear(d, cfg.latent_dim)
        self.dropout = cfg.prior_dropout

    def forward(
        self,
        phonemes: torch.Tensor,
        speaker: torch.Tensor,
        frame_mask: torch.Tensor,
        visual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """phonemes (B, N, Dp), speaker (B, Dc), frame_mask (B, N), with ``prior_inputs="all"`` the semantic and sync
        streams on the latent grid (B, N, Dc + Dy) -> (B, N, C), zero on padded frames."""
        m = frame_mask[..., None].to(phonemes.dtype)  # (B, N, 1)
        h = self.phoneme_in(phonemes) + self.speaker_in(speaker)[:, None]  # (B, N, Dq)
        if visual is not None:
            h = h + self.visual_in(visual)
        for norm, conv in zip(self.norms, self.convs, strict=True):
            x = rearrange(F.dropout(norm(h), self.dropout, self.training) * m, "b n d -> b d n")
            h = h + rearrange(conv(x), "b d n -> b n d")
        return self.out(h) * m


def spread_phonemes(phonemes: torch.Tensor, lengths: torch.Tensor, n_frames: torch.Tensor, n: int) -> torch.Tensor:
    """Spread each clip's phonemes uniformly over its latent frames (paper: repeat, then nearest-interpolate).

    Args:
        phonemes: (B, P) long ids, 0-padded.
        lengths: (B,) number of real phonemes per clip.
        n_frames: (B,) latent frames per clip.
        n: padded number of frames N.

    Returns:
        (B, N) long: frame j < n_frames of clip b carries phoneme floor(j * L_b / n_frames_b); frames beyond the clip
        carry 0 ("none").
    """
    j = torch.arange(n, device=phonemes.device)[None]  # (1, N)
    idx = (j * lengths[:, None]) // n_frames.clamp(min=1)[:, None]  # (B, N)
    idx = idx.clamp(max=(lengths - 1).clamp(min=0)[:, None])
    ids = torch.gather(phonemes, 1, idx)  # (B, N)
    return torch.where(j < n_frames[:, None], ids, torch.zeros_like(ids))


def layout_phonemes(
    phonemes: torch.Tensor,
    lengths: torch.Tensor,
    n_frames: torch.Tensor,
    n: int,
    *,
    span: torch.Tensor,
    durations: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lay each clip's phonemes over its speech span, in proportion to their durations (``span``/``duration``
    layouts of :class:`~vssflow.model.config.ModelConfig`).

    Args:
        phonemes: (B, P) long ids, 0-padded.
        lengths: (B,) number of real phonemes per clip.
        n_frames: (B,) latent frames per clip.
        n: padded number of frames N.
        span: (B, 2) float [start, end) of the speech in latent frames (fractional; clamped to the clip).
        durations: (B, P) float relative durations (any scale, >= 0); None = equal durations.

    Returns:
        (B, N) long: the frame whose centre lies at fraction u of the span carries the phoneme whose share of the
        cumulative duration covers u; frames outside the span (and beyond the clip) carry 0 ("none" = silence).
    """
    b, p = phonemes.shape
    dev = phonemes.device
    real = torch.arange(p, device=dev)[None] < lengths[:, None]  # (B, P)
    w = real.float() if durations is None else durations.float().clamp(min=0) * real
    w = torch.where(w.sum(dim=1, keepdim=True) > 0, w, real.float())  # all-zero durations: equal shares
    cum = w.cumsum(dim=1) / w.sum(dim=1, keepdim=True).clamp(min=1e-9)  # (B, P) end of phoneme i as a fraction
    nf = n_frames.to(torch.float32)[:, None]  # (B, 1)
    start = span[:, :1].float().clamp(min=0.0).minimum(nf)  # (B, 1)
    end = span[:, 1:].float().minimum(nf).maximum(start + 1.0)  # at least one frame of speech
    centre = torch.arange(n, device=dev, dtype=torch.float32)[None] + 0.5  # (1, N)
    u = (centre - start) / (end - start)  # (B, N): position in the span, [0, 1) inside it
    idx = torch.searchsorted(cum.contiguous(), u.clamp(0.0, 1.0).contiguous(), right=True)  # (B, N)
    idx = idx.clamp(max=(lengths - 1).clamp(min=0)[:, None])
    ids = torch.gather(phonemes, 1, idx)  # (B, N)
    inside = (u >= 0) & (u < 1) & (centre < nf) & (lengths[:, None] > 0)
    return torch.where(inside, ids, torch.zeros_like(ids))


def sem_to_grid(sem: torch.Tensor, lengths: torch.Tensor, n: int) -> torch.Tensor:
    """Nearest-in-time resampling of 10 fps frames (B, S, D) to the 25 Hz latent grid -> (B, N, D)."""
    j = torch.arange(n, device=sem.device)[None]  # (1, N)
    idx = ((j * SEM_FPS) // LATENT_HZ).clamp(max=(lengths - 1).clamp(min=0)[:, None])  # (B, N)
    return torch.gather(sem, 1, repeat(idx, "b n -> b n d", d=sem.shape[-1]))


class ConditionEncoder(nn.Module):
    """Encodes every condition group and routes it to in-context channels or cross-attention tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.sem_proj = mlp(cfg.sem_dim, cfg.width, cfg.cross_dim)
        self.speaker_proj = mlp(cfg.speaker_dim, cfg.width, cfg.cross_dim)
        if cfg.lip_input == "crops":
            self.lip_encoder: nn.Module = LipCNN(cfg.lip_dim, cfg.cnn_channels)
        else:
            self.lip_encoder = mlp(cfg.lip_feature_dim, 2 * cfg.lip_dim, cfg.lip_dim)
        self.phoneme_emb = nn.Embedding(cfg.phoneme_vocab, cfg.phoneme_dim)
        if cfg.prior_layers:
            self.prior = PhonemePrior(cfg)
            if cfg.prior_inputs == "split":  # a second prior for speech-only clips, blind to the video
                self.speech_prior = PhonemePrior(cfg, video=False)
        if cfg.sync_dim:
            self.sync_encoder = SyncCNN(cfg.sync_dim, cfg.cnn_channels)
            self.absent_sync = nn.Parameter(torch.randn(cfg.sync_dim) * 0.02)
            if cfg.sync_placement == "cross":
                self.sync_to_cross = nn.Linear(cfg.sync_dim, cfg.cross_dim)
        if cfg.lip_placement == "cross":
            self.lip_to_cross = nn.Linear(cfg.lip_dim, cfg.cross_dim)
        if cfg.phoneme_placement == "cross":
            self.phoneme_to_cross = nn.Linear(cfg.phoneme_dim, cfg.cross_dim)
        # learned "absent" values, one per group, in the space where the group is consumed
        self.absent_sem = nn.Parameter(torch.randn(cfg.cross_dim) * 0.02)
        self.absent_speaker = nn.Parameter(torch.randn(cfg.cross_dim) * 0.02)
        self.absent_lip = nn.Parameter(torch.randn(cfg.lip_dim) * 0.02)
        self.absent_phonemes = nn.Parameter(torch.randn(cfg.phoneme_dim) * 0.02)

    def forward(self, cond: ConditionBatch, drop: ConditionDrop | None = None) -> Conditions:
        cfg = self.cfg
        b, n = cond.batch_size, cond.n_latent
        dev, dtype = cond.n_frames.device, self.absent_sem.dtype
        drop = drop if drop is not None else ConditionDrop.none(b, dev)
        keep = {g: cond.present(g).to(dev) & ~getattr(drop, g).to(dev) for g in GROUPS}
        frame_mask = cond.frame_mask
        context: list[torch.Tensor] = []
        prior, prior_keep = None, None
        prior_sees_video = cfg.prior_layers > 0 and cfg.prior_inputs in ("all", "split")
        ph_all = sem_all = sync_all = None
        cross: list[tuple[torch.Tensor, torch.Tensor]] = []  # (tokens (B, m, Dc), mask (B, m))

        # speaker: always one cross-attention token
        spk = self.absent_speaker.expand(b, 1, -1)
        if cond.speaker is not None:
            spk = torch.where(keep["speaker"][:, None, None], self.speaker_proj(cond.speaker.to(dtype))[:, None], spk)
        cross.append((spk, torch.ones(b, 1, dtype=torch.bool, device=dev)))

        # lip: (B, N, Dl) stream on the latent grid
        lip = self.absent_lip.expand(b, n, -1)
        if cond.lip is not None and keep["lip"].any():
            rows = keep["lip"].nonzero().squeeze(1)
            frames = cond.lip[rows]  # (K, N, ...)
            enc = self.lip_encoder(rearrange(frames, "k n ... -> (k n) ...")).to(dtype)  # (K*N, Dl)
            lip = lip.clone()
            lip[rows] = rearrange(enc, "(k n) d -> k n d", n=n)
        if cfg.lip_placement == "context":
            context.append(lip)
        else:
            cross.append((self.lip_to_cross(lip), frame_mask))

        # sync: (B, N, Dy) stream on the latent grid (a model with sync_dim 0 ignores it)
        if cfg.sync_dim:
            sync = self.absent_sync.expand(b, n, -1)
            # the prior sees every clip's sync stream whatever the dropout; the DiT only the kept ones
            encode = cond.present("sync").to(dev) if prior_sees_video else keep["sync"]
            if cond.sync is not None and encode.any():
                rows = encode.nonzero().squeeze(1)
                sync = sync.clone()
                sync[rows] = self.sync_encoder(cond.sync[rows]).to(dtype)  # (K, N, Dy)
            sync_all = sync
            sync = torch.where(keep["sync"][:, None, None], sync, self.absent_sync)
            if cfg.sync_placement == "context":
                context.append(sync)
            else:
                cross.append((self.sync_to_cross(sync), frame_mask))

        # phonemes: spread over the clip for context; the raw sequence as tokens for cross-attention
        if cfg.phoneme_placement == "context":
            ph = self.absent_phonemes.expand(b, n, -1)
            ph_all = ph  # what the prior sees: the clip's phonemes whatever the dropout
            if cond.phonemes is not None:
                emb = self.phoneme_emb(self._phoneme_frames(cond, n)).to(dtype)  # (B, N, Dp)
                ph = torch.where(keep["phonemes"][:, None, None], emb, ph)
                ph_all = torch.where(cond.present("phonemes").to(dev)[:, None, None], emb, ph_all)
            context.append(ph)
        else:
            tokens = self.absent_phonemes.expand(b, 1, -1)
            lengths = torch.ones(b, dtype=torch.long, device=dev)
            if cond.phonemes is not None:
                tokens, lengths = self.phoneme_emb(cond.phonemes).to(dtype), cond.phoneme_lengths
            absent = self.phoneme_to_cross(self.absent_phonemes)  # (Dc,)
            cross.append(self._with_absent(self.phoneme_to_cross(tokens), lengths, keep["phonemes"], absent))

        # semantics: 10 fps frames -> MLP -> tokens, or resampled to the latent grid for context
        sem = self.absent_sem.expand(b, 1, -1)
        sem_len = torch.ones(b, dtype=torch.long, device=dev)
        if cond.sem is not None:
            sem, sem_len = self.sem_proj(cond.sem.to(dtype)), cond.sem_lengths  # (B, S, Dc)
        if prior_sees_video:
            present = cond.present("sem").to(dev)
            sem_all, _ = self._with_absent(sem, sem_len, present, self.absent_sem)
            sem_all = sem_to_grid(sem_all, torch.where(present, sem_len, 1), n)  # (B, N, Dc)
        sem, sem_mask = self._with_absent(sem, sem_len, keep["sem"], self.absent_sem)
        if cfg.sem_placement == "cross":
            cross.append((sem, sem_mask))
        else:
            context.append(sem_to_grid(sem, torch.where(keep["sem"], sem_len, 1), n))  # (B, N, Dc)

        # the prior: the flow's source mean, from what the clip has whatever the CFG dropout
        if cfg.prior_layers:
            spk_all = self.absent_speaker.expand(b, -1)
            if cond.speaker is not None:
                spk_all = torch.where(
                    cond.present("speaker").to(dev)[:, None], self.speaker_proj(cond.speaker.to(dtype)), spk_all
                )
            visual = None
            if prior_sees_video:  # (B, N, Dc + Dy); a model without a sync stream (sync_dim 0) gives semantics only
                visual = sem_all if sync_all is None else torch.cat([sem_all, sync_all], dim=-1)
            has_phonemes = cond.present("phonemes").to(dev)
            if prior_sees_video:  # an estimate of every clip's soundtrack
                shifted = prior_keep = torch.ones(b, dtype=torch.bool, device=dev)
            else:  # an estimate of speech: clips without phonemes (V2S) start from N(0, I), as without a prior
                shifted = has_phonemes
                tts = torch.tensor([t == "tts" for t in cond.tasks], dtype=torch.bool, device=dev)
                prior_keep = has_phonemes & tts if cond.tasks else has_phonemes  # a joint latent also holds sound
            if shifted.any():
                prior = self.prior(ph_all, spk_all, frame_mask, visual) * shifted[:, None, None].to(dtype)  # (B, N, C)
                speech_only = torch.tensor([t == "tts" for t in cond.tasks], dtype=torch.bool, device=dev)
                if cfg.prior_inputs == "split" and speech_only.any():  # TTS clips: the speech prior's estimate
                    speech = self.speech_prior(ph_all, spk_all, frame_mask)
                    prior = torch.where(speech_only[:, None, None], speech, prior)
            else:  # a batch of V2S clips under a speech prior: nothing to estimate, skip the convolutions
                prior = frame_mask.new_zeros(b, n, cfg.latent_dim, dtype=dtype)
            # The DiT sees its source mean (as Grad-TTS's decoder does) but does not train it: mu learns from its
            # regression loss only (the flow's gradient through the context made mu drift on joint clips).
            context.append(prior.detach())

        return Conditions(
            context=torch.cat(context, dim=-1) if context else None,  # (B, N, Cc)
            cross=torch.cat([t for t, _ in cross], dim=1),  # (B, M, Dc)
            cross_mask=torch.cat([m for _, m in cross], dim=1),  # (B, M)
            frame_mask=frame_mask,
            prior=prior,
            prior_keep=prior_keep,
        )

    def _phoneme_frames(self, cond: ConditionBatch, n: int) -> torch.Tensor:
        """(B, N) phoneme id per latent frame, by ``cfg.phoneme_layout`` (clip / span / duration)."""
        layout = self.cfg.phoneme_layout
        if layout == "clip":
            return spread_phonemes(cond.phonemes, cond.phoneme_lengths, cond.n_frames, n)
        span = cond.speech_span
        if span is None:  # no span known: the whole clip
            span = torch.stack([torch.zeros_like(cond.n_frames), cond.n_frames], dim=1).float()
        durations = cond.phoneme_durations if layout == "duration" else None
        return layout_phonemes(cond.phonemes, cond.phoneme_lengths, cond.n_frames, n, span=span, durations=durations)

    @staticmethod
    def _with_absent(
        tokens: torch.Tensor, lengths: torch.Tensor, keep: torch.Tensor, absent: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token sequence (B, m, Dc) + lengths -> (tokens, mask) where absent samples hold one absent token."""
        m = tokens.shape[1]
        pos = torch.arange(m, device=tokens.device)[None]  # (1, m)
        mask = torch.where(keep[:, None], pos < lengths[:, None], pos == 0)  # (B, m)
        tokens = torch.where(keep[:, None, None], tokens, absent.expand_as(tokens))
        return tokens, mask
