"""From a user's video to the conditions of generation: the one front end of the CLI, Serve, batch jobs and notebooks.

    request = check_request("tts", "Hello there.", speech_span="0.4,1.6")   # cheap checks, before any decoding
    features = prepare("face.mp4", request=request, extractors=load_extractors_for(gen))
    wav = gen.generate(features, seed=0)

or in one call, :meth:`vssflow.generator.Generator.generate_for_video`. :func:`prepare` needs no audio track and
no length limit (a long video is generated in windows), unlike the training extractor
(:func:`vssflow.features.extract.extract_clip`), which decodes the target audio and keeps clips within 10 s.

:func:`check_request` checks what a user asks for (task, transcript, speech span) once per request and returns a
:class:`Request`; :func:`extract_config_for` reads which feature extractors a model was trained with and
:func:`load_extractors_for` loads them; :func:`with_speech_span` picks the span the phonemes are laid over (the
user's, else the mouth activity of the lip stream, else the whole clip); :func:`stem_plan` lists the generations
behind ``--stems``. A model given as an MLflow URI (:func:`is_model_uri`) is resolved above the library (the
``vssflow`` command, ``pipelines``): the library itself never depends on MLflow.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vssflow.constants import DEFAULT_TASK, LIP_FPS, LIP_SIZE, SEM_FPS, SPEECH_TASKS, TASKS
from vssflow.errors import AssetError, InputError, TranscriptError
from vssflow.features.extract import ExtractConfig, Extractors
from vssflow.types import ClipFeatures

__all__ = [
    "DEFAULT_TASK",
    "MAX_TRANSCRIPT_CHARS",
    "Request",
    "check_request",
    "check_speech_span",
    "prepare",
    "with_speech_span",
    "extract_config_for",
    "load_extractors_for",
    "stem_plan",
    "is_model_uri",
]

MAX_TRANSCRIPT_CHARS = 2000
_EXTRACT_KEYS = ("encoder", "speaker_encoder", "g2p_backend", "lips", "sync", "max_short_side")
_URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "file://")

Span = tuple[float, float]


@dataclass(frozen=True)
class Request:
    """What a user asks for one video, checked (made by :func:`check_request`).

    Attributes:
        task: "v2s", "tts" or "joint".
        transcript: what is said, stripped ("" for v2s without one).
        speech_span: the user's span (start, end) in seconds, not yet cut to the video; None: not given.
        span_source: the name of the span's input in error messages ("--speech-span", "speech_span").
    """

    task: str
    transcript: str = ""
    speech_span: Span | None = None
    span_source: str = "--speech-span"


def default_task(transcript: str | None) -> str:
    """The task of a request that names none (:data:`DEFAULT_TASK`): joint (speech + sound) when a transcript is
    given, else v2s (sound effects)."""
    return "joint" if (transcript or "").strip() else "v2s"


def check_request(
    task: str | None,
    transcript: str | None = None,
    *,
    speech_span: str | Sequence[float] | None = None,
    span_source: str = "--speech-span",
) -> Request:
    """Check a request before any decoding: the task (None: :func:`default_task`), the transcript (needed by tts
    and joint, at most :data:`MAX_TRANSCRIPT_CHARS`, refused with v2s) and the form of the speech span ("START,END"
    seconds or a pair).

    Raises:
        InputError / TranscriptError, one line naming the input.
    """
    from vssflow.features.span import parse_span

    text = (transcript or "").strip()
    task = default_task(text) if task is None else task
    if task not in TASKS:
        raise InputError(f"task: expected one of {TASKS}, got {task!r}")
    if task not in SPEECH_TASKS and text:  # said, not dropped: the user expects speech
        raise TranscriptError(f"task {task!r} makes sound effects only and takes no transcript; ask for task joint "
                              "(speech + sound) or tts, or give no task (joint with a transcript)")  # fmt: skip
    if task in SPEECH_TASKS and not text:
        raise TranscriptError(f"task {task!r} needs a transcript of what is said; give one (--transcript TEXT)")
    if len(text) > MAX_TRANSCRIPT_CHARS:
        raise TranscriptError(f"transcript has {len(text)} characters; at most {MAX_TRANSCRIPT_CHARS} are allowed")
    span = parse_span(speech_span, source=span_source)
    return Request(task=task, transcript=text, speech_span=span, span_source=span_source)


def check_speech_span(
    span: str | Sequence[float] | None, duration_s: float | None = None, *, source: str = "--speech-span"
) -> Span | None:
    """A user's speech span ("START,END" seconds or a pair; None/"" = not given) -> (start, end), cut to the clip
    when ``duration_s`` is known. Raises a one-line InputError when it is malformed or lies outside the clip."""
    from vssflow.features.span import clamp_span, parse_span

    parsed = parse_span(span, source=source)
    if parsed is None or duration_s is None:
        return parsed
    cut = clamp_span(parsed, duration_s)
    if cut is None:
        raise InputError(
            f"speech span {parsed[0]:g},{parsed[1]:g} s lies outside the clip (0 to {duration_s:.2f} s); give "
            "START,END within it",
            source=source,
        )
    return cut


def with_speech_span(
    features: ClipFeatures,
    span: str | Sequence[float] | None = None,
    *,
    source: str = "--speech-span",
    given_as: str = "user",
) -> ClipFeatures:
    """``features`` with the speech span the model lays the phonemes over, chosen in this order: ``span`` (the
    user's, checked against the clip), the mouth activity of ``features.lip``
    (:func:`vssflow.features.lip.speech_span_from_mouth`), else None (the whole clip). Clips without phonemes get
    None. ``meta["speech_span_source"]`` says which: ``given_as`` ("user"; "features" for a span stored with
    uploaded features), "mouth" or "clip".

    Raises:
        InputError when ``span`` is malformed or outside the clip.
    """
    user = check_speech_span(span, features.duration_s, source=source)
    chosen, origin = None, "clip"
    if features.phonemes is not None and len(features.phonemes):
        if user is not None:
            chosen, origin = user, given_as
        elif features.lip is not None and len(features.lip) >= 3:
            from vssflow.features.lip import speech_span_from_mouth
            from vssflow.features.span import clamp_span

            chosen = clamp_span(speech_span_from_mouth(np.asarray(features.lip), LIP_FPS), features.duration_s)
            origin = "mouth" if chosen is not None else "clip"
    return dataclasses.replace(features, speech_span=chosen, meta={**features.meta, "speech_span_source": origin})


def extract_config_for(info: dict, *, device: str = "cpu") -> ExtractConfig:
    """The :class:`ExtractConfig` a model was trained with, from its ``config.json`` ``info``.

    Training records ``info["extractors"]`` (the shard set's ``ExtractConfig.to_dict()``); a model without it gets the
    defaults (MobileNetV2, mouth crops, Resemblyzer, espeak G2P). Generation never needs a length limit here: long
    videos are generated in windows, so ``max_seconds`` is lifted.
    """
    recorded = info.get("extractors") or info.get("extract") or {}
    fields = {k: recorded[k] for k in _EXTRACT_KEYS if k in recorded}
    return ExtractConfig(**fields, device=device, max_seconds=float("inf"))


def load_extractors_for(generator, *, device: str = "cpu") -> Extractors:
    """Load the feature extractors matching ``generator`` (a :class:`~vssflow.generator.Generator`: its ``info``
    names them, its ``config.sem_dim`` is checked against the visual encoder)."""
    config = extract_config_for(generator.info, device=device)
    ex = Extractors.load(config)
    if ex.sem_dim != generator.config.sem_dim:
        raise AssetError(
            f"visual encoder {config.encoder!r} gives {ex.sem_dim}-d features but the model expects sem_dim "
            f"{generator.config.sem_dim}; record the training encoder in the model's config.json info['extractors']"
        )
    return ex


def _frame_size(height: int, width: int, max_short_side: int | None) -> tuple[int, int] | None:
    short = min(height, width)
    if not max_short_side or short <= max_short_side:
        return None
    scale = max_short_side / short
    return 2 * round(height * scale / 2), 2 * round(width * scale / 2)


def decoded_pixels(height: int, width: int, duration: float, *, max_short_side: int | None) -> int:
    """Pixels :func:`prepare` holds decoded for a ``height`` x ``width`` video of ``duration`` seconds: LIP_FPS
    frames a second at the decode size (the short side brought down to ``max_short_side``, the long side is not)."""
    h, w = _frame_size(height, width, max_short_side) or (height, width)
    return int(round(max(duration, 0.0) * LIP_FPS)) * h * w


def prepare(
    video: str | os.PathLike,
    *,
    task: str | None = None,
    transcript: str | None = None,
    reference_voice: str | os.PathLike | np.ndarray | None = None,
    speech_span: str | Sequence[float] | None = None,
    request: Request | None = None,
    extractors: Extractors | None = None,
    info=None,
    clip_id: str | None = None,
) -> ClipFeatures:
    """Conditions for generating the soundtrack of ``video``; its own audio track, if any, is not used, and it may
    be of any length (the generator works in windows).

    Args:
        video: the silent (or not) video.
        task: "v2s" (sound effects from the frames), "tts" (speech: face + transcript + voice) or "joint" (both);
            None: joint with a transcript, else v2s (:func:`default_task`).
        transcript: what is said; required for "tts" and "joint".
        reference_voice: a recording (path or (N,) float32 at 16 kHz) of the voice to speak with; without it the
            speaker condition is absent (the model's learned default voice).
        speech_span: where in the video the words are ("START,END" seconds or a pair); without it the mouth
            activity of the lip stream, else the whole clip (:func:`with_speech_span`).
        request: instead of ``task``, ``transcript`` and ``speech_span``: a request already checked by
            :func:`check_request` (a front end that checks before loading a model), not checked again.
        extractors: loaded models (:func:`load_extractors_for` a generator); default: the default extractors
            (MobileNetV2, mouth crops, Resemblyzer, espeak), loaded for this call.
        info: a :func:`vssflow.media.video.probe` result of ``video`` (skips probing again).
        clip_id: name used in error messages and ``meta`` (default: the file's stem).

    Returns:
        ClipFeatures with ``sem`` (T_sem, D), ``sync`` (T_sync, 32, 32) uint8 (unless the extraction config turns it
        off), and for speech tasks ``lip`` (T_lip, 32, 32) uint8, ``phonemes`` (P,) with ``phoneme_durations`` (P,),
        ``speech_span`` and ``speaker`` (256,) when a reference voice is given; ``duration_s`` = the video's
        duration.

    Raises:
        InputError subclasses (BadVideoError, TranscriptError, ReferenceVoiceError, ...), one line each.
    """
    from vssflow.media.video import probe, read_frames

    if request is None:
        request = check_request(task, transcript, speech_span=speech_span)
    elif task is not None or transcript is not None or speech_span is not None:
        raise ValueError("prepare: give either a checked request or task/transcript/speech_span, not both")
    info = info or probe(video)
    check_speech_span(request.speech_span, float(info.duration), source=request.span_source)  # before decoding
    if extractors is None:
        extractors = Extractors.load(ExtractConfig(max_seconds=float("inf")))
    cid = clip_id or Path(str(video)).stem
    speech = request.task in SPEECH_TASKS
    cfg = extractors.config
    size = _frame_size(info.height, info.width, cfg.max_short_side)
    sem_frames = read_frames(video, SEM_FPS, size=size, info=info)  # (T_sem, H, W, 3)
    sem = np.asarray(extractors.visual.encode(sem_frames), np.float32)  # (T_sem, D)
    del sem_frames
    lip = sync = phonemes = durations = speaker = None
    need_lips = speech and cfg.lips and extractors.mouth is not None
    frames_25 = read_frames(video, LIP_FPS, size=size, info=info) if need_lips or cfg.sync else None  # (T, H, W, 3)
    if cfg.sync:
        from vssflow.features.sync import sync_thumbnails

        sync = sync_thumbnails(frames_25)  # (T_sync, 32, 32) uint8
    if speech:
        from vssflow.features.extract import phonemize_clip

        ph = phonemize_clip({"clip_id": f"{cid}: transcript", "transcript": request.transcript}, extractors.g2p)
        phonemes, durations = ph["phonemes"], ph["phoneme_durations"]  # (P,) int16, (P,) float32
        if need_lips:
            crops, _ = extractors.mouth(frames_25)
            lip = np.asarray(crops, np.uint8)  # (T_lip, 32, 32)
        if reference_voice is not None:
            from vssflow.audio.io import read_audio
            from vssflow.features.speaker_base import check_reference_voice

            ref = reference_voice if isinstance(reference_voice, np.ndarray) else read_audio(reference_voice)
            ref = check_reference_voice(ref, source=f"{cid}: reference voice")
            speaker = np.asarray(extractors.speaker.embed(ref, source=f"{cid}: reference voice"), np.float32)
    assert lip is None or lip.shape[1:] == (LIP_SIZE, LIP_SIZE)
    features = ClipFeatures(
        duration_s=float(info.duration),
        task=request.task,
        sem=sem,
        lip=lip,
        sync=sync,
        phonemes=phonemes,
        speaker=speaker,
        meta={"clip_id": cid, "transcript": request.transcript or None, "video": str(video)},
        phoneme_durations=durations,
    )
    return with_speech_span(features, request.speech_span, source=request.span_source)


def stem_plan(features: ClipFeatures, *, stems: bool) -> list[tuple[str, ClipFeatures]]:
    """The generations to run: ``[("mix", features)]``, or for a joint clip with stems the speech-only (tts),
    sound-only (v2s) and joint generations of the same video: ``[("speech", ...), ("sound", ...), ("mix", ...)]``."""
    if not stems or features.task != "joint":
        return [("mix", features)]
    speech = dataclasses.replace(features, task="tts")
    sound = dataclasses.replace(  # sync stays: timing
        features, task="v2s", lip=None, phonemes=None, phoneme_durations=None, speaker=None, speech_span=None
    )
    return [("speech", speech), ("sound", sound), ("mix", features)]


def is_model_uri(spec: str) -> bool:
    """True for MLflow model / artifact URIs (``models:/...``, ``runs:/...``), False for a local directory."""
    return str(spec).startswith(_URI_SCHEMES)
