"""Batching of per-clip features for the DiT: validation against the config, padding, presence masks.

Shape legend:
    B batch   N latent frames (25 Hz, padded; lip and sync frames share this grid)   S semantic frames (10 fps, padded)
    P phonemes (padded)

A condition a clip does not have (``None`` in :class:`~vssflow.types.ClipFeatures`) is marked absent in a per-sample
presence mask; the model substitutes its learned "absent" value. A tensor field is ``None`` only when no clip in the
batch has that condition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from vssflow.constants import LATENT_HZ, LIP_FPS, SEM_FPS, SYNC_FPS, SYNC_SIZE, TASKS, latent_frames
from vssflow.errors import ClipTooLongError, FeatureShapeError, InputError
from vssflow.model.config import ModelConfig
from vssflow.types import ClipFeatures

GROUPS = ("sem", "lip", "sync", "phonemes", "speaker")  # condition groups: presence, CFG dropout, absent embeddings


@dataclass
class ConditionBatch:
    """Padded condition tensors of a batch plus presence masks.

    Attributes:
        n_frames: (B,) long, latent frames of each clip (the rest of the N frames is padding).
        sem: (B, S, sem_dim) float32 semantic frames at 10 fps, zero-padded; ``sem_lengths`` (B,) long.
        lip: (B, N, 32, 32) uint8 crops or (B, N, lip_feature_dim) float32 features at 25 fps, zero-padded.
        sync: (B, N, 32, 32) uint8 grayscale frame thumbnails at 25 fps, zero-padded.
        phonemes: (B, P) long ids, 0-padded; ``phoneme_lengths`` (B,) long.
        speaker: (B, speaker_dim) float32.
        *_present: (B,) bool presence masks (False = the clip has no such condition).
        tasks: task name per clip ("v2s", "tts", "joint").
        speech_span: (B, 2) float32 [start, end) of each clip's speech in latent frames (the whole clip when the
            clip gives none); None when no clip of the batch has phonemes.
        phoneme_durations: (B, P) float32 relative phoneme durations (1 where a clip gives none), aligned with
            ``phonemes``; None when no clip of the batch has phonemes.
    """

    n_frames: torch.Tensor
    n_latent: int
    sem: torch.Tensor | None
    sem_lengths: torch.Tensor
    lip: torch.Tensor | None
    phonemes: torch.Tensor | None
    phoneme_lengths: torch.Tensor
    speaker: torch.Tensor | None
    sem_present: torch.Tensor
    lip_present: torch.Tensor
    phonemes_present: torch.Tensor
    speaker_present: torch.Tensor
    tasks: tuple[str, ...] = ()
    sync: torch.Tensor | None = None
    sync_present: torch.Tensor | None = None  # None: no sync field at all (same as all False)
    speech_span: torch.Tensor | None = None
    phoneme_durations: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.n_frames.shape[0])

    @property
    def frame_mask(self) -> torch.Tensor:
        """(B, N) bool, True on the latent frames of each clip."""
        return torch.arange(self.n_latent, device=self.n_frames.device)[None] < self.n_frames[:, None]

    @property
    def task_ids(self) -> torch.Tensor:
        """(B,) long index of each clip's task in :data:`vssflow.constants.TASKS`."""
        return torch.tensor([TASKS.index(t) for t in self.tasks], dtype=torch.long, device=self.n_frames.device)

    def present(self, group: str) -> torch.Tensor:
        mask = getattr(self, f"{group}_present")
        if mask is None:  # a batch built without that group
            return torch.zeros(self.batch_size, dtype=torch.bool, device=self.n_frames.device)
        return mask

    def to(self, device: torch.device | str) -> ConditionBatch:
        moved = {
            f.name: (v.to(device) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return ConditionBatch(**moved)


@dataclass
class ConditionDrop:
    """Per-group, per-sample condition dropout for classifier-free guidance: (B,) bool each, True = drop.

    A dropped condition is replaced by its learned "absent" value (the same value as a missing condition).
    """

    sem: torch.Tensor
    lip: torch.Tensor
    sync: torch.Tensor
    phonemes: torch.Tensor
    speaker: torch.Tensor

    @classmethod
    def none(cls, batch_size: int, device: torch.device | str = "cpu") -> ConditionDrop:
        return cls(*(torch.zeros(batch_size, dtype=torch.bool, device=device) for _ in GROUPS))

    @classmethod
    def all(cls, batch_size: int, device: torch.device | str = "cpu") -> ConditionDrop:
        """Drop every condition: the unconditional branch of CFG."""
        return cls(*(torch.ones(batch_size, dtype=torch.bool, device=device) for _ in GROUPS))


# ---- validation ------------------------------------------------------------------------------------------------


def _rate_tolerance(expected: int) -> int:
    # A frame or two of rounding at either end, or 5 %: a wrong rate (e.g. 30 fps for 25 fps) is 20 % off.
    return max(2, math.ceil(0.05 * expected))


def _describe(a: np.ndarray) -> str:
    return f"{tuple(a.shape)} {a.dtype}"


def _check_clip(clip: ClipFeatures, cfg: ModelConfig) -> None:
    """Raise FeatureShapeError (one line, naming the field) if a feature does not fit ``cfg``."""
    source = str(clip.meta.get("clip_id")) if clip.meta.get("clip_id") is not None else None
    d = float(clip.duration_s)
    if not d > 0:
        raise FeatureShapeError(f"duration_s: expected a positive duration, got {d}", source=source)
    if latent_frames(d) > cfg.max_frames:
        raise ClipTooLongError(
            f"duration_s: {d:.2f} s is longer than the model window of {cfg.max_seconds:.2f} s; "
            "generate long audio in windows",
            source=source,
        )
    if clip.task not in TASKS:
        raise InputError(f"task: expected one of {TASKS}, got {clip.task!r}", source=source)

    def fail(field: str, expected: str, got: np.ndarray) -> None:
        raise FeatureShapeError(f"{field}: expected {expected}, got {_describe(got)}", source=source)

    if clip.sem is not None:
        a = np.asarray(clip.sem)
        t = int(round(d * SEM_FPS))
        exp = f"(T, {cfg.sem_dim}) float at {SEM_FPS} fps for a {d:.2f} s clip (T={t})"
        if a.ndim != 2 or a.shape[1] != cfg.sem_dim or not np.issubdtype(a.dtype, np.floating):
            fail("sem", exp, a)
        if abs(a.shape[0] - t) > _rate_tolerance(t):
            fail("sem", exp, a)
    if clip.lip is not None:
        a = np.asarray(clip.lip)
        t = int(round(d * LIP_FPS))
        if cfg.lip_input == "crops":
            size = cfg.lip_frame_shape
            exp = f"(T, {size[0]}, {size[1]}) uint8 mouth crops at {LIP_FPS} fps for a {d:.2f} s clip (T={t})"
            if a.ndim != 3 or a.shape[1:] != size or a.dtype != np.uint8:
                fail("lip", exp, a)
        else:
            exp = f"(T, {cfg.lip_feature_dim}) float lip features at {LIP_FPS} fps for a {d:.2f} s clip (T={t})"
            if a.ndim != 2 or a.shape[1] != cfg.lip_feature_dim or not np.issubdtype(a.dtype, np.floating):
                fail("lip", exp, a)
        if abs(a.shape[0] - t) > _rate_tolerance(t):
            fail("lip", exp, a)
    if clip.sync is not None:
        a = np.asarray(clip.sync)
        t = int(round(d * SYNC_FPS))
        exp = f"(T, {SYNC_SIZE}, {SYNC_SIZE}) uint8 frame thumbnails at {SYNC_FPS} fps for a {d:.2f} s clip (T={t})"
        if a.ndim != 3 or a.shape[1:] != (SYNC_SIZE, SYNC_SIZE) or a.dtype != np.uint8:
            fail("sync", exp, a)
        if abs(a.shape[0] - t) > _rate_tolerance(t):
            fail("sync", exp, a)
    if clip.phonemes is not None:
        a = np.asarray(clip.phonemes)
        exp = f"(P,) integer ids in [0, {cfg.phoneme_vocab})"
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            fail("phonemes", exp, a)
        if a.size and (a.min() < 0 or a.max() >= cfg.phoneme_vocab):
            raise FeatureShapeError(
                f"phonemes: expected {exp}, got ids in [{a.min()}, {a.max()}]; check the phoneme vocabulary version",
                source=source,
            )
    if clip.speech_span is not None:
        span = tuple(float(x) for x in clip.speech_span)
        if len(span) != 2 or not all(math.isfinite(x) for x in span) or not 0 <= span[0] < span[1] <= d + 0.05:
            raise InputError(
                f"speech_span: expected 0 <= start < end <= {d:.2f} s (the clip), got {clip.speech_span}",
                source=source,
            )
    if clip.phoneme_durations is not None and clip.phonemes is not None:
        a = np.asarray(clip.phoneme_durations)
        if a.shape != np.asarray(clip.phonemes).shape or not np.isfinite(a).all() or (a < 0).any():
            fail("phoneme_durations", "(P,) non-negative floats, one per phoneme", a)
    if clip.speaker is not None:
        a = np.asarray(clip.speaker)
        if a.shape != (cfg.speaker_dim,) or not np.issubdtype(a.dtype, np.floating):
            fail("speaker", f"({cfg.speaker_dim},) float speaker embedding", a)


# ---- collate ---------------------------------------------------------------------------------------------------


def _fit_length(a: np.ndarray, n: int) -> np.ndarray:
    """Trim or edge-pad a (T, ...) array to exactly n frames (for small rounding differences at the clip end)."""
    if a.shape[0] >= n:
        return a[:n]
    return np.concatenate([a, np.repeat(a[-1:], n - a.shape[0], axis=0)], axis=0)


def collate(clips: Sequence[ClipFeatures], cfg: ModelConfig, *, n_frames: int | None = None) -> ConditionBatch:
    """Validate and pad the conditions of ``clips`` into a :class:`ConditionBatch`.

    Args:
        clips: per-clip features (``mel`` and ``meta`` are ignored here).
        cfg: the model config the features must fit.
        n_frames: pad the latent grid to this many frames (default: the longest clip of the batch).

    Returns:
        A ConditionBatch on the CPU; latent frames per clip = ``latent_frames(duration_s)`` (25 Hz).

    Raises:
        FeatureShapeError: a feature with the wrong shape, dtype or rate (one line naming the field).
        ClipTooLongError: a clip longer than ``cfg.max_seconds``.
    """
    if not clips:
        raise ValueError("collate: empty list of clips")
    for clip in clips:
        _check_clip(clip, cfg)
    b = len(clips)
    frames = [latent_frames(c.duration_s) for c in clips]
    n = max(frames) if n_frames is None else int(n_frames)
    if n < max(frames):
        raise ValueError(f"collate: n_frames={n} is shorter than the longest clip ({max(frames)} frames)")
    assert LIP_FPS == LATENT_HZ == SYNC_FPS, "lip and sync frames are stored on the latent grid"

    def present(name: str) -> torch.Tensor:
        return torch.tensor([getattr(c, name) is not None and np.asarray(getattr(c, name)).size > 0 for c in clips])

    sem_present, lip_present, sync_present = present("sem"), present("lip"), present("sync")
    ph_present, spk_present = present("phonemes"), present("speaker")

    sem, sem_len = None, torch.zeros(b, dtype=torch.long)
    if sem_present.any():
        s = max(np.asarray(c.sem).shape[0] for c, p in zip(clips, sem_present, strict=True) if p)
        sem = torch.zeros(b, s, cfg.sem_dim, dtype=torch.float32)
        for i, c in enumerate(clips):
            if sem_present[i]:
                a = torch.as_tensor(np.asarray(c.sem, dtype=np.float32))
                sem[i, : a.shape[0]], sem_len[i] = a, a.shape[0]

    lip = None
    if lip_present.any():
        crops = cfg.lip_input == "crops"
        lip = torch.zeros(b, n, *cfg.lip_frame_shape, dtype=torch.uint8 if crops else torch.float32)
        for i, c in enumerate(clips):
            if lip_present[i]:
                a = _fit_length(np.asarray(c.lip, dtype=np.uint8 if crops else np.float32), frames[i])
                lip[i, : frames[i]] = torch.as_tensor(a)

    sync = None
    if sync_present.any():
        sync = torch.zeros(b, n, SYNC_SIZE, SYNC_SIZE, dtype=torch.uint8)
        for i, c in enumerate(clips):
            if sync_present[i]:
                a = _fit_length(np.asarray(c.sync, dtype=np.uint8), frames[i])
                sync[i, : frames[i]] = torch.from_numpy(np.array(a))  # a copy: shard arrays are read-only views

    phonemes, ph_len, span, durations = None, torch.zeros(b, dtype=torch.long), None, None
    if ph_present.any():
        p = max(np.asarray(c.phonemes).shape[0] for c, q in zip(clips, ph_present, strict=True) if q)
        phonemes = torch.zeros(b, p, dtype=torch.long)
        durations = torch.ones(b, p, dtype=torch.float32)
        span = torch.stack([torch.zeros(b), torch.tensor(frames, dtype=torch.float32)], dim=1)  # (B, 2) whole clips
        for i, c in enumerate(clips):
            if ph_present[i]:
                a = torch.as_tensor(np.asarray(c.phonemes, dtype=np.int64))
                phonemes[i, : a.shape[0]], ph_len[i] = a, a.shape[0]
                if c.phoneme_durations is not None and len(c.phoneme_durations) == a.shape[0]:
                    durations[i, : a.shape[0]] = torch.as_tensor(np.asarray(c.phoneme_durations, np.float32))
            if c.speech_span is not None:
                start, end = (float(x) * LATENT_HZ for x in c.speech_span)
                span[i, 0] = min(max(start, 0.0), frames[i] - 1.0)
                span[i, 1] = min(max(end, span[i, 0] + 1.0), frames[i])

    speaker = None
    if spk_present.any():
        speaker = torch.zeros(b, cfg.speaker_dim, dtype=torch.float32)
        for i, c in enumerate(clips):
            if spk_present[i]:
                speaker[i] = torch.as_tensor(np.asarray(c.speaker, dtype=np.float32))

    return ConditionBatch(
        n_frames=torch.tensor(frames, dtype=torch.long),
        n_latent=n,
        sem=sem,
        sem_lengths=sem_len,
        lip=lip,
        phonemes=phonemes,
        phoneme_lengths=ph_len,
        speaker=speaker,
        sem_present=sem_present,
        lip_present=lip_present,
        phonemes_present=ph_present,
        speaker_present=spk_present,
        tasks=tuple(c.task for c in clips),
        sync=sync,
        sync_present=sync_present,
        speech_span=span,
        phoneme_durations=durations,
    )
