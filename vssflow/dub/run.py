"""Running a dub: the features of the whole video once, one TTS generation per cue window, one V2S pass, the gate,
the ducking and the mix (see :mod:`vssflow.dub`)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vssflow.constants import LATENT_HZ, SAMPLE_RATE
from vssflow.dub.plan import CueWindow, DubPlan, plan_dub
from vssflow.dub.report import timing_report
from vssflow.dub.voices import voice_for
from vssflow.text.subtitles import Cue, Subtitles
from vssflow.types import ClipFeatures

__all__ = ["DubConfig", "DubResult", "dub"]

Span = tuple[float, float]


@dataclass(frozen=True)
class DubConfig:
    """Options of :func:`dub`.

    Attributes:
        context_s: video before and after each cue in its window (less when the model window is too short).
        sound: generate V2S sound for the whole video (False: the mix is the speech alone).
        duck_db: how much the sound is lowered under cues (0 = not at all).
        gate_ramp_s: fade in/out of a cue's speech, inside the cue's span.
        strict: refuse a cue naming a speaker that ``voices`` lacks (default: it speaks with the default voice and
            the report says so).
        seed: seed of the sound; cue k is generated with ``seed + 1 + k``.
        steps, cfg, method: sampling options (None: the model's defaults).
        batch: cue windows generated per call of :meth:`Generator.generate`.
    """

    context_s: float = 0.3
    sound: bool = True
    duck_db: float = 6.0
    gate_ramp_s: float = 0.01
    strict: bool = False
    seed: int = 0
    steps: int | None = None
    cfg: float | None = None
    method: str | None = None
    batch: int = 8


@dataclass
class DubResult:
    """Audio of a dub, each (L,) float32 at 16 kHz with L = round(duration * 16000); ``mix = speech + sound``.

    ``sound`` is None with ``DubConfig.sound`` off. ``report`` is the JSON-serialisable timing report.
    """

    mix: np.ndarray
    speech: np.ndarray
    sound: np.ndarray | None
    report: dict
    plan: DubPlan


def _gate(n: int, a: int, b: int, ramp: int) -> np.ndarray:
    """(n,) float32: 1 on [a, b) with linear ramps inside it, 0 elsewhere."""
    g = np.zeros(n, np.float32)
    a, b = max(0, a), min(n, b)
    if b <= a:
        return g
    g[a:b] = 1.0
    r = min(ramp, (b - a) // 2)
    if r > 0:
        g[a : a + r] = np.linspace(0.0, 1.0, r, endpoint=False, dtype=np.float32)
        g[b - r : b] = np.linspace(1.0, 0.0, r + 1, dtype=np.float32)[1:]
    return g


def _duck(n: int, spans: Sequence[Span], db: float, ramp_s: float = 0.05) -> np.ndarray:
    """(n,) gain: ``-db`` dB over each span, reached ``ramp_s`` before it starts and left ``ramp_s`` after it ends."""
    low = np.float32(10 ** (-db / 20))
    gain = np.ones(n, np.float32)
    if db <= 0:
        return gain
    r = int(round(ramp_s * SAMPLE_RATE))
    for s, e in spans:
        a, b = int(round(s * SAMPLE_RATE)), int(round(e * SAMPLE_RATE))
        shape = np.full(b - a + 2 * r, low, np.float32)
        shape[:r] = np.linspace(1.0, low, r, endpoint=False, dtype=np.float32)
        shape[len(shape) - r :] = np.linspace(low, 1.0, r + 1, dtype=np.float32)[1:]
        lo, hi = max(0, a - r), min(n, b + r)
        gain[lo:hi] = np.minimum(gain[lo:hi], shape[lo - (a - r) : hi - (a - r)])
    return gain


def _video_streams(gen, video, cue: Cue, info) -> ClipFeatures:
    """The whole video's semantic frames, sync thumbnails and mouth crops, decoded once: the front end
    (:func:`vssflow.inference.prepare`) run as a speech task (for the lip stream) with a cue's text standing in for
    the transcript; each cue's own phonemes replace it per window."""
    from vssflow.inference import prepare

    return prepare(video, task="tts", transcript=cue.text, extractors=gen.extractors, info=info,
                   clip_id=Path(str(video)).stem)  # fmt: skip


def _cue_features(streams: ClipFeatures, cw: CueWindow, phonemes, durations, speaker) -> ClipFeatures:
    from vssflow.windows import slice_features

    bare = dataclasses.replace(streams, phonemes=None, phoneme_durations=None, speech_span=None, speaker=None)
    part = slice_features(bare, cw.window[0], cw.window[1])
    return dataclasses.replace(
        part, task="tts", phonemes=phonemes, phoneme_durations=durations, speaker=speaker, speech_span=cw.span,
        meta={**part.meta, "clip_id": f"{streams.meta.get('clip_id', 'video')}: cue {cw.cue.number}",
              "transcript": cw.cue.text},
    )  # fmt: skip


class _Progress:
    """One ``progress(done, total)`` over every :meth:`Generator.generate` call of a dub."""

    def __init__(self, fn: Callable[[int, int], None] | None, total: int):
        self.fn, self.total, self.base = fn, total, 0

    def call(self, call_total: int) -> Callable[[int, int], None] | None:
        if self.fn is None:
            return None
        base = self.base
        self.base += call_total

        def step(done: int, _total: int) -> None:
            self.fn(min(base + done, self.total), self.total)

        return step


def dub(
    gen,
    video: str | os.PathLike,
    subtitles: Subtitles,
    *,
    voices: Mapping[str, str | os.PathLike | np.ndarray] | None = None,
    reference_voice: str | os.PathLike | np.ndarray | None = None,
    config: DubConfig = DubConfig(),
    asr=None,
    info=None,
    progress: Callable[[int, int], None] | None = None,
    cue_progress: Callable[[int, int], None] | None = None,
) -> DubResult:
    """Dub ``video``: speech for every cue of ``subtitles`` inside the cue's span, over V2S sound.

    Args:
        gen: a :class:`~vssflow.generator.Generator`.
        video: the video (its own audio is not used).
        subtitles: cues read against this video's duration (:func:`vssflow.text.subtitles.read_subtitles`).
        voices: speaker name -> reference recording (path or (N,) float32 at 16 kHz), for cues that name one.
        reference_voice: the voice of cues without a (known) speaker; None: the model's default voice.
        config: options (:class:`DubConfig`).
        asr: an ASR with ``transcribe(wav) -> str`` and ``name`` (:func:`vssflow.metrics.asr.load_asr`): each cue's
            WER goes into the report; None: no WER.
        info: a :func:`vssflow.media.video.probe` of ``video`` (skips probing again).
        progress: ``progress(done, total)`` over every solver step of the dub.
        cue_progress: ``cue_progress(cues_done, cues_total)``: once with 0 when the video's features are ready, then
            after each batch of cue windows is generated (the V2S pass comes after the last one).

    Returns:
        :class:`DubResult`.

    Raises:
        InputError subclasses (bad video, voice, transcript or sampling option), one line each, before generating.
    """
    from vssflow.audio.io import read_audio
    from vssflow.features.extract import phonemize_clip
    from vssflow.features.speaker_base import check_reference_voice
    from vssflow.media.video import probe
    from vssflow.postfilter import peak_guard

    t0 = time.perf_counter()
    steps, cfg, method = gen.check(steps=config.steps, cfg=config.cfg, method=config.method)
    info = info or probe(video)
    duration = float(info.duration)
    n_total = int(round(duration * SAMPLE_RATE))
    cues = list(subtitles.cues)
    window_s = gen.config.max_frames / LATENT_HZ
    plan = plan_dub(cues, duration, window_s=window_s, context_s=config.context_s,
                    sound_windows=gen.windows(duration) if config.sound else (),
                    windows_of=lambda s: len(gen.windows(s)))  # fmt: skip
    chosen = [voice_for(c, voices, reference_voice, strict=config.strict) for c in cues]  # before any decoding
    notes = [f"cue {c.number}: speaker {c.speaker!r} is not in the speakers file; spoken with the {label}"
             for c, (label, _) in zip(cues, chosen, strict=True)
             if c.speaker is not None and voices and label in ("reference voice", "default voice")]  # fmt: skip
    phon = [phonemize_clip({"clip_id": f"cue {c.number}", "transcript": c.text}, gen.extractors.g2p) for c in cues]

    embeddings: dict[int, np.ndarray] = {}  # id of the voice object -> speaker embedding, one per distinct voice
    for label, v in chosen:
        if v is None or id(v) in embeddings:
            continue
        ref = v if isinstance(v, np.ndarray) else read_audio(v)
        ref = check_reference_voice(ref, source=label)
        embeddings[id(v)] = np.asarray(gen.extractors.speaker.embed(ref, source=label), np.float32)
    streams = _video_streams(gen, video, cues[0], info)
    t_features = time.perf_counter() - t0

    per_call = steps * (2 if method == "midpoint" else 1)
    batches = [list(range(i, min(i + config.batch, len(cues)))) for i in range(0, len(cues), config.batch)]
    runs = [(1 if any(plan.cues[k].model_windows == 1 for k in b) else 0) +
            sum(plan.cues[k].model_windows for k in b if plan.cues[k].model_windows > 1) for b in batches]  # fmt: skip
    bar = _Progress(progress, per_call * (sum(runs) + len(plan.sound_windows)))

    t1 = time.perf_counter()
    if cue_progress is not None:
        cue_progress(0, len(cues))
    speech = np.zeros(n_total, np.float32)
    # per cue: its window as generated, and gated to the cue
    raw: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.float32),) * 2] * len(cues)
    ramp = int(round(config.gate_ramp_s * SAMPLE_RATE))
    for b, r in zip(batches, runs, strict=True):
        clips = [
            _cue_features(streams, plan.cues[k], phon[k]["phonemes"], phon[k]["phoneme_durations"],
                          None if chosen[k][1] is None else embeddings[id(chosen[k][1])])
            for k in b
        ]  # fmt: skip
        wavs = gen.generate(clips, steps=steps, cfg=cfg, method=method, seed=[config.seed + 1 + k for k in b],
                            progress=bar.call(r * per_call))  # fmt: skip
        for k, wav in zip(b, wavs, strict=True):
            cw = plan.cues[k]
            a = int(round(cw.window[0] * SAMPLE_RATE))
            wav = wav[: n_total - a]
            g = _gate(len(wav), int(round(cw.span[0] * SAMPLE_RATE)), int(round(cw.span[1] * SAMPLE_RATE)), ramp)
            raw[k] = (wav, g * wav)
            speech[a : a + len(wav)] += g * wav
        if cue_progress is not None:
            cue_progress(b[-1] + 1, len(cues))
    t_speech = time.perf_counter() - t1

    t2 = time.perf_counter()
    sound = None
    if config.sound:
        v2s = dataclasses.replace(streams, task="v2s", lip=None, phonemes=None, phoneme_durations=None,
                                  speaker=None, speech_span=None)  # fmt: skip
        sound = gen.generate(v2s, steps=steps, cfg=cfg, method=method, seed=config.seed,
                             progress=bar.call(per_call * len(plan.sound_windows)))  # fmt: skip
        sound = sound * _duck(n_total, [c.span for c in cues], config.duck_db)
    t_sound = time.perf_counter() - t2

    mix = speech if sound is None else speech + sound
    guarded = peak_guard(mix)
    if guarded is not mix:  # the same scale on the stems, so they still add up to the mix
        scale = np.float32(float(np.abs(guarded).max()) / float(np.abs(mix).max()))
        speech = speech * scale
        sound = None if sound is None else sound * scale
        raw = [(w * scale, gw * scale) for w, gw in raw]
    mix = guarded.astype(np.float32)

    report = timing_report(video, subtitles, plan, chosen, speech, raw, asr, n_total)
    report["fixes"] = list(subtitles.fixes) + notes
    report["sound"] = {"generated": sound is not None, "duck_db": config.duck_db if sound is not None else None,
                       "windows": [list(w) for w in plan.sound_windows]}  # fmt: skip
    report["sampling"] = {"steps": steps, "cfg": cfg, "method": method, "seed": config.seed}
    report["timing_s"] = {"features": round(t_features, 3), "speech": round(t_speech, 3),
                          "sound": round(t_sound, 3), "total": round(time.perf_counter() - t0, 3)}  # fmt: skip
    return DubResult(mix=mix, speech=speech.astype(np.float32),
                     sound=None if sound is None else sound.astype(np.float32), report=report, plan=plan)  # fmt: skip
