"""Feature-level synthetic mixing: one sound clip + one speech clip -> one joint (sound + speech) training clip.

VSSFlow (§3.1 of the spec, ``dataset/video_mix.py`` in the official code) trains joint sound+speech generation on
synthetic mixtures built from pre-extracted features, so no video is re-encoded:

* a random onset ``s ~ U(0, dur_sound - dur_speech)`` (0 when the speech is longer);
* mode ``"add"``: the target audio is the sound with its segment [s, s + dur_speech) scaled by ``g ~ U(0.3, 0.7)``
  plus the speech; the speech video's semantic frames are **added** to the sound video's at the offset;
* mode ``"insert"``: the segment is **replaced** by the speech, semantic frames are overwritten;
* the sync thumbnails (25 fps, the role of the paper's Synchformer features, which it adds or replaces at the
  offset like the semantic frames): "add" overlays the two videos (pixel mean, so both motions stay visible and
  the values stay in uint8 range), "insert" replaces;
* phonemes and lip frames are zero-padded by the offset (0 = "no speech here"); the speaker is the speech clip's.

We store log-mels, not waveforms, so the target is mixed in the mel magnitude domain: ``exp`` back to magnitudes,
``g * sound + speech`` (add) or replace (insert), ``log`` again. Magnitudes of two independent sources add up to
the magnitude of their sum up to a phase term, which is the usual approximation of mel-domain mixing.

Phonemes leave the mix as a frame-level sequence on the 25 Hz latent grid (``latent_frames(duration)`` ids with 0
where nobody speaks): the speech clip's phonemes laid out as the model's ``phoneme_layout`` lays them (over the
clip, or over its speech span by duration), then placed at the onset; every layout leaves such a sequence
unchanged.

Shape letters: T_sem semantic frames (10 fps), T_lip lip / T_sync sync frames (25 fps), T_mel mel frames (100 fps),
P phonemes.
"""

from __future__ import annotations

import numpy as np

from vssflow.constants import LATENT_HZ, LIP_FPS, MEL_FPS, SEM_FPS, SYNC_FPS, latent_frames
from vssflow.errors import FeatureShapeError
from vssflow.types import ClipFeatures

MIX_MODES = ("add", "insert")
LOG_MEL_FLOOR = float(np.log(1e-5))  # log of the magnitude clamp used for silence (AudioLDM convention)


def stretch_phonemes(phonemes: np.ndarray, n_frames: int) -> np.ndarray:
    """Spread ``P`` phoneme ids uniformly over ``n_frames`` frames (nearest index, as the model does).

    Args:
        phonemes: (P,) integer ids.
        n_frames: number of output frames.
    Returns:
        (n_frames,) int16 ids; all zeros when ``P == 0``.
    """
    phonemes = np.asarray(phonemes)
    if len(phonemes) == 0 or n_frames <= 0:
        return np.zeros(max(n_frames, 0), np.int16)
    idx = np.minimum((np.arange(n_frames) * len(phonemes)) // n_frames, len(phonemes) - 1)
    return phonemes[idx].astype(np.int16)


def speech_phoneme_frames(speech: ClipFeatures, layout: str = "clip") -> np.ndarray:
    """The speech clip's phonemes on its own 25 Hz latent grid, laid out as the model's ``phoneme_layout`` would
    (``clip``: stretched over the clip; ``span``/``duration``: over its speech span, by duration for the latter).

    Returns:
        (latent_frames(speech.duration_s),) int16 ids, 0 where nobody speaks. Such a frame-level sequence (one id per
        frame, no span, equal durations) is left unchanged by every layout, so the mixture keeps this timing.
    """
    n = latent_frames(speech.duration_s)
    if layout == "clip" or speech.phonemes is None or len(speech.phonemes) == 0:
        return stretch_phonemes(np.asarray(speech.phonemes if speech.phonemes is not None else []), n)
    import torch

    from vssflow.model.conditions import layout_phonemes

    ids = torch.as_tensor(np.asarray(speech.phonemes, np.int64))[None]  # (1, P)
    span = speech.speech_span if speech.speech_span is not None else (0.0, speech.duration_s)
    durations = None
    if layout == "duration" and speech.phoneme_durations is not None:
        durations = torch.as_tensor(np.asarray(speech.phoneme_durations, np.float32))[None]
    frames = layout_phonemes(
        ids,
        torch.tensor([ids.shape[1]]),
        torch.tensor([n]),
        n,
        span=torch.tensor([[float(span[0]) * LATENT_HZ, float(span[1]) * LATENT_HZ]]),
        durations=durations,
    )
    return frames[0].numpy().astype(np.int16)


def _fit(x: np.ndarray, n: int, fill: float = 0.0) -> np.ndarray:
    """Trim or pad (with ``fill``) the first axis of ``x`` to exactly ``n`` rows."""
    if len(x) >= n:
        return x[:n]
    pad = np.full((n - len(x), *x.shape[1:]), fill, dtype=x.dtype)
    return np.concatenate([x, pad], axis=0)


def _place(base: np.ndarray, seg: np.ndarray, start: int, *, mode: str, base_gain: float = 1.0) -> np.ndarray:
    """Add (``base_gain * base + seg``) or insert (``seg``) ``seg`` into a copy of ``base`` at row ``start``."""
    out = base.copy()
    n = max(0, min(len(seg), len(out) - start))
    if n == 0:
        return out
    if mode == "add":
        out[start : start + n] = base_gain * out[start : start + n] + seg[:n]
    else:
        out[start : start + n] = seg[:n]
    return out


def mix_log_mel(
    sound: np.ndarray, speech: np.ndarray, start: int, *, mode: str, sound_gain: float, floor: float = LOG_MEL_FLOOR
) -> np.ndarray:
    """Mix two natural-log mel magnitude spectrograms (T_mel, 64); ``speech`` enters at mel frame ``start``."""
    lo = np.exp(floor)
    mag = _place(
        np.exp(sound.astype(np.float64)), np.exp(speech.astype(np.float64)), start, mode=mode, base_gain=sound_gain
    )
    return np.log(np.maximum(mag, lo)).astype(np.float32)


def mix_clips(
    sound: ClipFeatures,
    speech: ClipFeatures,
    *,
    rng: np.random.Generator,
    mode: str | None = None,
    gain_range: tuple[float, float] = (0.3, 0.7),
    floor: float = LOG_MEL_FLOOR,
    phoneme_layout: str = "clip",
) -> ClipFeatures:
    """Build one joint clip from a sound (V2S) clip and a speech (VisualTTS) clip.

    Args:
        sound: a clip with ``sem`` and ``mel``; its timeline is the mixture's (duration = max of the two).
        speech: a clip with ``mel``, and where present ``sem``, ``lip``, ``phonemes``, ``speaker``.
        rng: the random source (onset, mode, gain); pass a seeded generator for reproducible mixtures.
        mode: ``"add"`` or ``"insert"``; ``None`` draws one uniformly.
        gain_range: range of the sound's gain under the speech in ``"add"`` mode (paper: U(0.3, 0.7)).
        floor: log-mel value of silence (pads and the clamp of the mixed magnitudes).
        phoneme_layout: the model's ``ModelConfig.phoneme_layout`` (how the speech clip's phonemes are laid out on
            its frames before they are placed at the onset).
    Returns:
        A ``ClipFeatures`` with ``task="joint"``: mel (T_mel, 64), sem (T_sem, D), lip (T_lip, ...) zero before the
        onset, phonemes (latent_frames(duration),) frame-level ids, speaker of the speech clip; ``meta`` records
        the sources, onset, mode and gain.
    Raises:
        FeatureShapeError: when either clip has no mel or the semantic dims differ.
    """
    for clip, name in ((sound, "sound"), (speech, "speech")):
        if clip.mel is None:
            raise FeatureShapeError(
                f"{name} clip has no mel; mixing needs the target audio of both clips",
                source=str(clip.meta.get("clip_id", name)),
            )
    mode = mode or MIX_MODES[int(rng.integers(len(MIX_MODES)))]
    if mode not in MIX_MODES:
        raise FeatureShapeError(f"mix mode {mode!r} is not one of {MIX_MODES}", source="mix_clips")
    duration = max(float(sound.duration_s), float(speech.duration_s))
    onset = float(rng.uniform(0.0, max(0.0, sound.duration_s - speech.duration_s)))
    gain = float(rng.uniform(*gain_range)) if mode == "add" else 0.0

    # Target audio (mel, 100 fps): the sound padded with silence to the mixture's length.
    n_mel = int(round(duration * MEL_FPS))
    sound_mel = _fit(np.asarray(sound.mel, np.float32), n_mel, fill=floor)
    speech_mel = np.asarray(speech.mel, np.float32)[: int(round(speech.duration_s * MEL_FPS))]
    mel = mix_log_mel(sound_mel, speech_mel, int(onset * MEL_FPS), mode=mode, sound_gain=gain, floor=floor)

    # Semantic frames (10 fps): add or replace at the offset (in "add" the sound frames keep full weight).
    sem = None
    n_sem = int(round(duration * SEM_FPS))
    if sound.sem is not None:
        sem = _fit(np.asarray(sound.sem, np.float32), n_sem)
        if speech.sem is not None:
            if speech.sem.shape[1:] != sem.shape[1:]:
                raise FeatureShapeError(
                    f"semantic dims differ ({sound.sem.shape[1:]} vs {speech.sem.shape[1:]}); use one extractor",
                    source=str(speech.meta.get("clip_id", "speech")),
                )
            sem = _place(sem, np.asarray(speech.sem, np.float32), int(onset * SEM_FPS), mode=mode)
    elif speech.sem is not None:
        sem = _place(
            np.zeros((n_sem, *speech.sem.shape[1:]), np.float32),
            np.asarray(speech.sem, np.float32),
            int(onset * SEM_FPS),
            mode="insert",
        )

    # Sync thumbnails (25 fps): overlay (add) or replace (insert) at the offset; the sound video is the timeline.
    sync = None
    n_sync = int(round(duration * SYNC_FPS))
    if sound.sync is not None or speech.sync is not None:
        base = sound.sync if sound.sync is not None else np.zeros((0, *speech.sync.shape[1:]), np.uint8)
        sync = _fit(np.asarray(base, np.uint8), n_sync)
        if speech.sync is not None:
            seg = np.asarray(speech.sync, np.uint8)
            k = int(onset * SYNC_FPS)
            seg = seg[: max(0, n_sync - k)]
            if mode == "add" and sound.sync is not None:
                seg = ((sync[k : k + len(seg)].astype(np.uint16) + seg) // 2).astype(np.uint8)
            sync = sync.copy()
            sync[k : k + len(seg)] = seg

    # Lip frames (25 fps) and phonemes (on the 25 Hz latent grid): zero before the onset and after the speech.
    lip = None
    if speech.lip is not None:
        speech_lip = np.asarray(speech.lip)
        lip = _place(
            np.zeros((int(round(duration * LIP_FPS)), *speech_lip.shape[1:]), speech_lip.dtype),
            speech_lip,
            int(onset * LIP_FPS),
            mode="insert",
        )
    phonemes = None
    if speech.phonemes is not None:
        frames = speech_phoneme_frames(speech, phoneme_layout)
        phonemes = _place(np.zeros(latent_frames(duration), np.int16), frames, int(onset * LATENT_HZ), mode="insert")

    meta = {
        "clip_id": f"mix:{sound.meta.get('clip_id', '?')}+{speech.meta.get('clip_id', '?')}",
        "sources": [sound.meta.get("clip_id"), speech.meta.get("clip_id")],
        "mix_mode": mode,
        "onset_s": onset,
        "sound_gain": gain,
        "phonemes_frame_level": True,
    }
    return ClipFeatures(
        duration_s=duration,
        task="joint",
        sem=sem,
        lip=lip,
        sync=sync,
        phonemes=phonemes,
        speaker=None if speech.speaker is None else np.asarray(speech.speaker, np.float32),
        mel=mel,
        meta=meta,
    )
