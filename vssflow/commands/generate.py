"""``vssflow generate``: audio (.wav) or the input video with a new soundtrack (.mp4) for one video.

    vssflow generate --model MODEL_DIR_OR_MLFLOW_URI --video IN.mp4 [--transcript TEXT | --transcript-file F]
        [--reference-voice REF.wav] [--speech-span START,END] [--task v2s|tts|joint] [--steps N --cfg S --seed K]
        [--stems] --out OUT

The library pieces here are shared by every front end (CLI, Serve, batch jobs): :func:`extract_config_for` reads
which feature extractors a model was trained with, :func:`load_extractors_for` loads them, :func:`prepare_features`
turns a video (+ transcript, reference voice, speech span) into :class:`~vssflow.types.ClipFeatures` (no audio
track needed), :func:`with_speech_span` picks the span the phonemes are laid over (the user's, else the mouth
activity of the lip stream, else the whole clip), :func:`stem_plan` lists the generations behind ``--stems``.
Generation itself is the one :meth:`vssflow.generator.Generator.generate`.

A model given as an MLflow URI (``models:/name/version``, ``runs:/id/path``) is resolved by the orchestration layer
(``pipelines.serve.resolve_model_dir``), imported by name only in that case, as ``vssflow.cli`` imports pipeline
commands: the library itself never depends on MLflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vssflow.constants import LATENT_HZ, LIP_FPS, LIP_SIZE, SAMPLE_RATE, SEM_FPS, TASKS
from vssflow.errors import AssetError, InputError, MissingFileError, TranscriptError
from vssflow.features.extract import SPEECH_TASKS, ExtractConfig, Extractors
from vssflow.types import ClipFeatures

__all__ = [
    "extract_config_for",
    "load_extractors_for",
    "check_request",
    "check_speech_span",
    "prepare_features",
    "with_speech_span",
    "stem_plan",
    "is_model_uri",
    "resolve_model",
    "add_arguments",
    "run",
]

_EXTRACT_KEYS = ("encoder", "speaker_encoder", "g2p_backend", "lips", "sync", "max_short_side")
_URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "file://")
MAX_TRANSCRIPT_CHARS = 2000


# ---------------------------------------------------------------------------------------------------- library parts


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
    """Load the feature extractors matching ``generator`` (checks the visual encoder's size against ``sem_dim``)."""
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


def check_request(task: str, transcript: str | None) -> str:
    """Check the task and transcript before any decoding; returns the stripped transcript ("" for none)."""
    if task not in TASKS:
        raise InputError(f"task: expected one of {TASKS}, got {task!r}")
    text = (transcript or "").strip()
    if task in SPEECH_TASKS and not text:
        raise TranscriptError(f"task {task!r} needs a transcript of what is said; give one (--transcript TEXT)")
    if len(text) > MAX_TRANSCRIPT_CHARS:
        raise TranscriptError(f"transcript has {len(text)} characters; at most {MAX_TRANSCRIPT_CHARS} are allowed")
    return text


def check_speech_span(
    span: str | Sequence[float] | None, duration_s: float | None = None, *, source: str = "--speech-span"
) -> tuple[float, float] | None:
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


def prepare_features(
    video: str | os.PathLike,
    *,
    task: str,
    extractors: Extractors,
    transcript: str | None = None,
    reference_voice: str | os.PathLike | np.ndarray | None = None,
    speech_span: str | Sequence[float] | None = None,
    info=None,
    clip_id: str | None = None,
) -> ClipFeatures:
    """Conditions for generating the soundtrack of ``video`` (its own audio track, if any, is not used).

    Args:
        video: the silent (or not) video.
        task: "v2s" (sound effects from the frames), "tts" (speech: face + transcript + voice) or "joint" (both).
        extractors: loaded models (:func:`load_extractors_for`).
        transcript: what is said; required for "tts" and "joint".
        reference_voice: a recording (path or (N,) float32 at 16 kHz) of the voice to speak with; without it the
            speaker condition is absent (the model's learned default voice).
        speech_span: where in the video the words are ("START,END" seconds or a pair); without it the mouth
            activity of the lip stream, else the whole clip (:func:`with_speech_span`).
        info: a :func:`vssflow.media.video.probe` result of ``video`` (skips probing again).
        clip_id: name used in error messages and ``meta``.

    Returns:
        ClipFeatures with ``sem`` (T_sem, D), ``sync`` (T_sync, 32, 32) uint8 (unless the extraction config turns it
        off), and for speech tasks ``lip`` (T_lip, 32, 32) uint8, ``phonemes`` (P,) with ``phoneme_durations`` (P,),
        ``speech_span`` and ``speaker`` (256,) when a reference voice is given; ``duration_s`` = the video's
        duration.

    Raises:
        InputError subclasses (BadVideoError, TranscriptError, ReferenceVoiceError, ...), one line each.
    """
    from vssflow.media.video import probe, read_frames

    text = check_request(task, transcript)
    info = info or probe(video)
    check_speech_span(speech_span, float(info.duration))  # a bad span fails before any decoding
    cid = clip_id or Path(str(video)).stem
    speech = task in SPEECH_TASKS
    cfg = extractors.config
    size = _frame_size(info.height, info.width, cfg.max_short_side)
    sem_frames = read_frames(video, SEM_FPS, size=size, info=info)  # (T_sem, H, W, 3)
    sem = np.asarray(extractors.visual.encode(sem_frames), np.float32)  # (T_sem, D)
    lip = sync = phonemes = durations = speaker = None
    need_lips = speech and cfg.lips and extractors.mouth is not None
    frames_25 = read_frames(video, LIP_FPS, size=size, info=info) if need_lips or cfg.sync else None  # (T, H, W, 3)
    if cfg.sync:
        from vssflow.features.sync import sync_thumbnails

        sync = sync_thumbnails(frames_25)  # (T_sync, 32, 32) uint8
    if speech:
        from vssflow.features.extract import phonemize_clip

        ph = phonemize_clip({"clip_id": f"{cid}: transcript", "transcript": text}, extractors.g2p)
        phonemes, durations = ph["phonemes"], ph["phoneme_durations"]  # (P,) int16, (P,) float32
        if need_lips:
            crops, _ = extractors.mouth(frames_25)
            lip = np.asarray(crops, np.uint8)  # (T_lip, 32, 32)
        if reference_voice is not None:
            from vssflow.audio.io import read_audio
            from vssflow.features.speaker import check_reference_voice

            ref = reference_voice if isinstance(reference_voice, np.ndarray) else read_audio(reference_voice)
            ref = check_reference_voice(ref, source=f"{cid}: reference voice")
            speaker = np.asarray(extractors.speaker.embed(ref, source=f"{cid}: reference voice"), np.float32)
    assert lip is None or lip.shape[1:] == (LIP_SIZE, LIP_SIZE)
    features = ClipFeatures(
        duration_s=float(info.duration),
        task=task,
        sem=sem,
        lip=lip,
        sync=sync,
        phonemes=phonemes,
        speaker=speaker,
        meta={"clip_id": cid, "transcript": transcript or None, "video": str(video)},
        phoneme_durations=durations,
    )
    return with_speech_span(features, speech_span)


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


def resolve_model(spec: str, *, tracking_uri: str | None = None) -> Path:
    """A model directory, or the local copy of an MLflow URI (downloaded by the orchestration layer)."""
    if not is_model_uri(spec):
        return Path(spec)
    try:  # imported by name, as vssflow.cli imports pipeline commands: MLflow stays out of the library
        resolver = importlib.import_module("pipelines.serve").resolve_model_dir
    except ModuleNotFoundError as e:
        raise AssetError(f"{spec}: MLflow model URIs need the pipelines package (pip install vssflow[serve])") from e
    return resolver(spec, tracking_uri=tracking_uri)


# -------------------------------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, or an MLflow URI (models:/NAME/VERSION, runs:/...)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for URIs (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--video", required=True, help="input video (mp4, webm, mov, mkv, ...)")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--transcript", help="what is said (tts and joint)")
    text.add_argument("--transcript-file", help="UTF-8 text file with the transcript")
    p.add_argument("--reference-voice", help="recording of the voice to speak with (wav/flac, >= 1 s)")
    p.add_argument(
        "--speech-span", metavar="START,END",
        help="seconds of the video where the words are (tts, joint); default: where the mouth moves, else the whole "
        "video",
    )  # fmt: skip
    p.add_argument("--task", choices=TASKS, default=None, help="default: joint with a transcript, else v2s")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: the model's)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same audio)")
    p.add_argument("--method", choices=("euler", "midpoint", "dopri5"), default=None, help="ODE solver")
    p.add_argument("--stems", action="store_true", help="joint: also write OUT.speech.wav and OUT.sound.wav")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--out", required=True, help="output .wav, or .mp4/.mov/.mkv/.webm: the video with the new audio")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


class _StepProgress:
    """tqdm over solver steps, across windows of a long clip and the generations of --stems."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="step", desc="sampling", disable=not enabled, file=sys.stderr)
        self.offset = self.last = 0

    def __call__(self, done: int, total: int) -> None:
        if done < self.last:  # a new window (or generation) started
            self.offset += self.last
        self.last = done
        self.bar.n = min(self.offset + done, self.bar.total)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.n = self.bar.total
        self.bar.close()


def _stem_path(out: Path, name: str) -> Path:
    return out.with_name(f"{out.stem}.{name}.wav")


def run(args: argparse.Namespace) -> int:
    from vssflow.audio.io import write_audio
    from vssflow.generator import Generator, window_starts
    from vssflow.media.mux import mux_audio
    from vssflow.media.video import probe

    out = Path(args.out)
    if out.suffix.lower() not in (".wav", ".mp4", ".mov", ".m4v", ".mkv", ".webm"):
        raise InputError("--out must end in .wav (audio) or .mp4/.mov/.m4v/.mkv/.webm (video)", source=str(out))
    transcript = args.transcript
    if args.transcript_file:
        path = Path(args.transcript_file)
        if not path.is_file():
            raise MissingFileError("transcript file not found", source=str(path))
        transcript = path.read_text(encoding="utf-8").strip()
    task = args.task or ("joint" if transcript else "v2s")
    if args.stems and task != "joint":
        raise InputError(f"--stems needs --task joint (got {task!r})")
    check_request(task, transcript)
    check_speech_span(args.speech_span)
    tracking = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    model_dir = resolve_model(args.model, tracking_uri=tracking)
    info = probe(args.video)
    print(f"vssflow generate: {task} for {args.video} ({info.duration:.2f} s, {info.width}x{info.height}) -> {out}")

    t0 = time.perf_counter()
    gen = Generator.from_pretrained(model_dir, device=args.device)
    steps, _, method = gen._options(args.steps, args.cfg, args.method)  # bad options fail before any decoding
    extractors = load_extractors_for(gen, device=args.device)
    features = prepare_features(
        args.video, task=task, extractors=extractors, transcript=transcript, reference_voice=args.reference_voice,
        speech_span=args.speech_span, info=info,
    )  # fmt: skip
    t_feat = time.perf_counter() - t0
    if features.phonemes is not None:
        span = features.speech_span
        where = "the whole video" if span is None else f"{span[0]:.2f}-{span[1]:.2f} s"
        print(f"vssflow generate: phonemes over {where} ({features.meta['speech_span_source']})")
    plan = stem_plan(features, stems=args.stems)
    per_window = steps * (2 if method == "midpoint" else 1)
    win = gen.config.max_frames / LATENT_HZ  # as Generator._generate_long cuts a long clip
    windows = len(window_starts(info.duration, win, min(gen.sampling.window_overlap_s, win / 4)))
    # one batched sampling for a clip within the window; each window of each generation for a longer clip
    total = per_window if windows == 1 else per_window * windows * len(plan)
    bar = _StepProgress(total, enabled=not args.no_progress and method != "dopri5")
    t1 = time.perf_counter()
    wavs = gen.generate(
        [f for _, f in plan], steps=args.steps, cfg=args.cfg, seed=args.seed, method=args.method, progress=bar
    )
    bar.close()
    t_gen = time.perf_counter() - t1
    by_name = {name: w for (name, _), w in zip(plan, wavs, strict=True)}
    mix = by_name["mix"]
    written = []
    if out.suffix.lower() == ".wav":
        written.append(write_audio(out, mix))
    else:
        written.append(mux_audio(args.video, mix, out))
    for name in ("speech", "sound"):
        if name in by_name:
            written.append(write_audio(_stem_path(out, name), by_name[name]))
    print(
        f"vssflow generate: {len(mix) / SAMPLE_RATE:.2f} s of audio (seed {args.seed}); features {t_feat:.1f} s, "
        f"sampling {t_gen:.1f} s; wrote {', '.join(str(p) for p in written)}"
    )
    return 0
