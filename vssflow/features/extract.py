"""Per-clip feature extraction: manifest row -> :class:`~vssflow.types.ClipFeatures`, in small pure stages.

Each stage takes and returns a plain dict of numpy arrays and strings (a "clip dict"), so the same code runs in a
notebook (:func:`extract_clip`), in tests, and inside Ray Data operators (``pipelines/preprocess_stages.py`` wraps each
stage in a thin adapter). Models load once, in :class:`Extractors`.

Stages and the keys they add (an absent condition is an empty array: zero rows):

1. :func:`decode_clip`   -> ``duration_s, bucket_s, sem_frames (T_sem,H,W,3) uint8, lip_frames (T_lip,H,W,3) uint8,
   sync (T_sync,32,32) uint8 thumbnails, wav (N,) float32 target audio, ref_audio (N_ref,) float32 reference voice``
2. :func:`phonemize_clip` -> ``phonemes (P,) int16``
3. :func:`encode_clip`   -> ``sem (T_sem,D) float32, lip (T_lip,32,32) uint8, speaker (256,) float32``; drops frames
4. :func:`mel_clip`      -> ``mel (T_mel,64) float32``; drops ``wav``

Conditions per task: v2s -> sem + sync + mel; tts -> sem + sync + lip + phonemes + speaker + mel; joint -> all of them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np

from vssflow.constants import (
    LIP_FPS,
    LIP_SIZE,
    MAX_SECONDS,
    SAMPLE_RATE,
    SEM_FPS,
    SPEAKER_DIM,
    SPEECH_TASKS,
    SYNC_FPS,
    SYNC_SIZE,
)
from vssflow.data.schema import BUCKETS_S, bucket_for
from vssflow.errors import ClipTooLongError, InputError
from vssflow.types import ClipFeatures

__all__ = [
    "ExtractConfig",
    "Extractors",
    "CLIP_KEYS",
    "row_dict",
    "decode_clip",
    "data_speech_span",
    "phonemize_clip",
    "encode_clip",
    "encode_clips",
    "encode_semantic",
    "mel_clip",
    "to_features",
    "extract_clip",
]

FROM_VIDEO = "from_video"
_NO_FRAMES = np.zeros((0, 0, 0, 3), np.uint8)
_NO_AUDIO = np.zeros(0, np.float32)
_NO_SPAN = np.zeros(0, np.float32)  # speech span unknown


@dataclass(frozen=True)
class ExtractConfig:
    """What the extractors compute. Every field enters the shard set's config hash.

    Attributes:
        encoder: semantic encoder: "mobilenetv2" or a local CLIPVisionModel directory.
        speaker_encoder: "resemblyzer" or a TrainableSpeakerEncoder directory.
        g2p_backend: "espeak", "gruut" or "cmudict".
        lips: extract 25 fps mouth crops for speech clips (False: lip is always absent).
        sync: extract the 25 fps sync thumbnails of every clip (False: sync is always absent).
        device: torch device of the encoders ("cpu", "cuda").
        frames_per_batch: frames per forward pass of the visual encoder.
        max_short_side: frames whose shorter side is larger are downscaled to it while decoding (aspect kept), so
            a 10 s 1080p clip does not carry gigabytes of frames between stages; None keeps the source size.
        max_seconds: longer clips are rejected (ClipTooLongError).
        buckets: duration buckets (seconds); a clip goes to the smallest that holds it.
    """

    encoder: str = "mobilenetv2"
    speaker_encoder: str = "resemblyzer"
    g2p_backend: str = "espeak"
    lips: bool = True
    sync: bool = True
    device: str = "cpu"
    frames_per_batch: int = 32
    max_short_side: int | None = 360
    max_seconds: float = MAX_SECONDS
    buckets: tuple[float, ...] = BUCKETS_S

    def to_dict(self) -> dict:
        """JSON-able fields that change the features (device and batch size do not)."""
        d = dataclasses.asdict(self)
        d.pop("device")
        d.pop("frames_per_batch")
        d["buckets"] = list(self.buckets)
        d.update(sem_fps=SEM_FPS, lip_fps=LIP_FPS, lip_size=LIP_SIZE, sample_rate=SAMPLE_RATE)
        if self.sync:
            d.update(sync_fps=SYNC_FPS, sync_size=SYNC_SIZE)
        return d


@dataclass
class Extractors:
    """The models of preprocessing, loaded once (per process, or per Ray actor).

    Build with :meth:`load`; a part not asked for stays ``None`` (e.g. decode-only workers load nothing).
    """

    config: ExtractConfig = field(default_factory=ExtractConfig)
    visual: object | None = None  # vssflow.features.visual.VisualEncoder
    mouth: object | None = None  # vssflow.features.lip.MouthCropper
    speaker: object | None = None  # vssflow.features.speaker.SpeakerEncoder
    g2p: object | None = None  # vssflow.text.G2P

    @classmethod
    def load(
        cls, config: ExtractConfig = ExtractConfig(), *, parts: tuple[str, ...] = ("visual", "mouth", "speaker", "g2p")
    ) -> Extractors:
        """Load the requested models. Raises AssetError when weights are missing."""
        ex = cls(config=config)
        if "visual" in parts:
            from vssflow.features.visual import load_visual_encoder

            ex.visual = load_visual_encoder(config.encoder, device=config.device, batch_size=config.frames_per_batch)
        if "mouth" in parts and config.lips:
            from vssflow.features.lip import MouthCropper

            ex.mouth = MouthCropper()
        if "speaker" in parts:
            from vssflow.features.speaker import load_speaker_encoder

            ex.speaker = load_speaker_encoder(config.speaker_encoder)
            if hasattr(ex.speaker, "net") and config.device != "cpu":
                ex.speaker.net.to(config.device)
        if "g2p" in parts:
            from vssflow.text import G2P

            ex.g2p = G2P(config.g2p_backend)
        return ex

    @property
    def sem_dim(self) -> int:
        """D_sem of the visual encoder."""
        if self.visual is None:
            raise ValueError("Extractors.sem_dim: the visual encoder was not loaded")
        return int(self.visual.dim)

    def describe(self) -> dict:
        """Names, versions and weight checksums of the loaded models (stored in every shard's metadata)."""
        out = {}
        if self.visual is not None:
            out["visual"] = self.visual.describe()
        if self.mouth is not None:
            m = self.mouth
            out["mouth"] = {"name": getattr(m, "name", type(m).__name__), "version": str(getattr(m, "version", ""))}
        if self.speaker is not None:
            s = self.speaker
            out["speaker"] = {"name": s.name, "version": str(s.version), "dim": int(s.dim)}
            if getattr(s, "sha256", None):
                out["speaker"]["weights_sha256"] = s.sha256
        if self.g2p is not None:
            out["g2p"] = {"name": self.g2p.backend, "version": self.g2p.version}
        return out


# ------------------------------------------------------------------------------------------------------ stages
CLIP_KEYS = (
    "clip_id", "video", "task", "audio", "start", "end", "transcript", "speaker_id", "reference_audio",
    "speech_stem", "split", "licence", "source", "events_json", "span_start", "span_end", "timing_json",
)  # fmt: skip


def _manifest_span(row: dict) -> tuple[float, float] | None:
    """The speech span a manifest row gives, in seconds from its ``start``: the user's ``speech_span``
    ("START,END" or a pair), else the span of its phoneme or word timing, else ``extra.speech_start/_end``."""
    from vssflow.features.span import parse_span, span_from_timing

    if row.get("speech_span") not in (None, ""):
        return parse_span(row["speech_span"], source=f"{row.get('clip_id')}: speech_span")
    for key in ("phonemes", "words"):
        span = span_from_timing(row.get(key))
        if span is not None:
            return span
    extra = {**row, **(row.get("extra") or {})}  # a ManifestRow's dict has its extra keys at the top level
    if extra.get("speech_start") is not None and extra.get("speech_end") is not None:
        return float(extra["speech_start"]), float(extra["speech_end"])
    return None


def row_dict(row) -> dict:
    """A manifest row (ManifestRow or its dict) -> the flat clip dict the stages work on.

    Only scalar values (str / float), so the dict travels through Ray Data as one Arrow row: ``end`` NaN means
    "end of the file", "" means absent, ``events_json`` holds the events list, ``speech_stem`` the speech stem.
    """
    if dataclasses.is_dataclass(row):
        from vssflow.data.manifest import row_to_dict

        row = row_to_dict(row)
    events = row.get("events") or []
    if "events_json" in row:
        events = json.loads(row["events_json"] or "[]")
    end = row.get("end")
    if "span_start" in row:  # already a clip dict
        span = (float(row["span_start"]), float(row["span_end"]))
    else:
        span = _manifest_span(row) or (float("nan"), float("nan"))
    return {
        "clip_id": str(row["clip_id"]),
        "video": str(row["video"]),
        "task": str(row["task"]),
        "audio": str(row.get("audio") or FROM_VIDEO),
        "start": float(row.get("start") or 0.0),
        "end": float("nan") if end in (None, "") else float(end),
        "transcript": str(row.get("transcript") or ""),
        "speaker_id": str(row.get("speaker_id") or ""),
        "reference_audio": str(row.get("reference_audio") or ""),
        "speech_stem": str(row.get("speech_stem") or (row.get("stems") or {}).get("speech") or ""),
        "split": str(row.get("split") or "train"),
        "licence": str(row.get("licence") or ""),
        "source": str(row.get("source") or ""),
        "events_json": json.dumps([{"time": float(e["time"]), "class": str(e["class"])} for e in events]),
        "span_start": span[0],  # the speech span in seconds from ``start``; NaN: not known from the row
        "span_end": span[1],
        "timing_json": row["timing_json"] if "timing_json" in row else _timing_json(row.get("phonemes")),
    }


def _timing_json(phonemes) -> str:
    """A manifest row's phoneme timing as JSON ``[[label, start, end], ...]`` ("" when it has none)."""
    from vssflow.data.manifest import timed_triples

    return json.dumps([list(t) for t in timed_triples(phonemes)]) if phonemes else ""


def _slice_audio(wav: np.ndarray, start: float, duration: float) -> np.ndarray:
    s, n = int(round(start * SAMPLE_RATE)), int(round(duration * SAMPLE_RATE))
    out = wav[s : s + n]
    return np.pad(out, (0, n - len(out))) if len(out) < n else out


def data_speech_span(row: dict, duration: float, audio: np.ndarray) -> tuple[float, float] | None:
    """The speech span the data gives a speech clip, in seconds from its ``start``, cut to its ``duration``: the
    manifest's (``span_start``/``span_end`` of :func:`row_dict`: the row's speech_span or timing), else the voice
    activity of its speech stem, else (tts only: its audio is speech alone) of ``audio`` (N,), the clip's audio cut
    to [start, end); None: not known (joint without timing or stem)."""
    from vssflow.audio.io import read_audio
    from vssflow.features.span import clamp_span, span_from_voice_activity

    span = (float(row.get("span_start", math.nan)), float(row.get("span_end", math.nan)))
    if not all(math.isfinite(x) for x in span):  # no timing in the row: voice activity of the speech audio
        start = float(row.get("start") or 0.0)
        stem = _slice_audio(read_audio(row["speech_stem"]), start, duration) if row.get("speech_stem") else None
        span = span_from_voice_activity(stem if stem is not None else audio) if (
            stem is not None or row["task"] == "tts") else None  # fmt: skip
    return clamp_span(span, duration)


def decode_clip(row: dict, config: ExtractConfig = ExtractConfig()) -> dict:
    """Decode a clip: frames at 10 and 25 fps, the target audio and the reference voice, all cut to [start, end).

    Args:
        row: clip dict from :func:`row_dict` (``clip_id, video, task, audio`` (path or "from_video"), ``start``,
            ``end``, ``reference_audio``, ``speech_stem``, ...).
        config: extraction settings.

    Returns:
        ``row`` plus ``duration_s, bucket_s, sem_frames, lip_frames, sync, wav, ref_audio`` (see module docstring).

    Raises:
        MissingFileError, EmptyFileError, BadVideoError, NoAudioTrackError, ClipTooLongError, ReferenceVoiceError.
    """
    from vssflow.audio.io import read_audio
    from vssflow.media.video import probe, read_audio_track, read_frames

    video, cid = row["video"], str(row["clip_id"])
    info = probe(video)
    start = float(row.get("start") or 0.0)
    end = row.get("end")
    end = info.duration if end is None or math.isnan(float(end)) else min(float(end), info.duration)
    duration = end - start
    if duration <= 0:
        raise InputError(f"start {start:g} s is past the end of the video ({info.duration:.2f} s)", source=video)
    if duration > config.max_seconds + 1e-6:
        raise ClipTooLongError(
            f"clip is {duration:.2f} s, longer than {config.max_seconds:g} s; cut it (manifest start/end)", source=video
        )
    bucket = bucket_for(duration, config.buckets, source=video)

    size = None
    short = min(info.height, info.width)
    if config.max_short_side and short > config.max_short_side:
        scale = config.max_short_side / short
        size = (2 * round(info.height * scale / 2), 2 * round(info.width * scale / 2))

    def frames_at(fps: int) -> np.ndarray:
        frames = read_frames(video, fps, size=size, info=info)  # (T_all, H, W, 3), frame k at (k + 0.5) / fps
        k0 = int(round(start * fps))
        return np.ascontiguousarray(frames[k0 : k0 + max(1, int(round(duration * fps)))])

    speech = row["task"] in SPEECH_TASKS
    audio_src = row.get("audio") or FROM_VIDEO
    wav = read_audio_track(video, info=info) if audio_src == FROM_VIDEO else read_audio(audio_src)
    audio = _slice_audio(wav, start, duration).astype(np.float32)
    ref = _NO_AUDIO
    if speech:
        if row.get("reference_audio"):
            ref = read_audio(row["reference_audio"])  # another utterance of the speaker (the paper's "gtref")
        elif row.get("speech_stem"):
            ref = _slice_audio(read_audio(row["speech_stem"]), start, duration)
        else:
            ref = audio  # the clip's own speech
        from vssflow.features.speaker import check_reference_voice

        ref = check_reference_voice(ref, source=f"{cid}: reference voice")
    assert SYNC_FPS == LIP_FPS
    frames_25 = frames_at(LIP_FPS) if config.sync or (speech and config.lips) else _NO_FRAMES
    if config.sync:
        from vssflow.features.sync import sync_thumbnails

        sync = sync_thumbnails(frames_25)  # (T_sync, 32, 32): small enough to carry through every stage
    else:
        sync = np.zeros((0, SYNC_SIZE, SYNC_SIZE), np.uint8)
    span = data_speech_span(row, duration, audio) if speech else None
    return {
        **row,
        "speech_span": _NO_SPAN if span is None else np.asarray(span, np.float32),
        "duration_s": float(duration),
        "bucket_s": float(bucket),
        "sem_frames": frames_at(SEM_FPS),
        "lip_frames": frames_25 if speech and config.lips else _NO_FRAMES,
        "sync": sync,
        "wav": audio,
        "ref_audio": np.asarray(ref, np.float32),
    }


def phonemize_clip(row: dict, g2p=None, *, backend: str = "espeak") -> dict:
    """Add ``phonemes`` (P,) int16 and their relative ``phoneme_durations`` (P,) float32 from ``transcript`` (empty
    when there is none). Raises TranscriptError."""
    from vssflow.text.durations import durations_from_timing, phoneme_durations

    text = row.get("transcript")
    if not text:
        return {**row, "phonemes": np.zeros(0, np.int16), "phoneme_durations": np.zeros(0, np.float32)}
    if g2p is None:
        from vssflow.text import g2p as g2p_fn

        seq = g2p_fn(text, backend=backend, source=str(row["clip_id"]))
    else:
        seq = g2p(text, source=str(row["clip_id"]))
    if row.get("timing_json"):  # the speech's own timing (training clips with a manifest timing)
        durations = durations_from_timing(seq.symbols, json.loads(row["timing_json"]))
    else:  # espeak-ng's neutral timing of the transcript (inference)
        durations = phoneme_durations(seq.text, seq.symbols)
    return {**row, "phonemes": np.asarray(seq.ids, np.int16), "phoneme_durations": durations}


def encode_clip(row: dict, extractors: Extractors, *, sem: np.ndarray | None = None) -> dict:
    """Add ``sem``, ``lip`` and ``speaker`` with the loaded models; drop the decoded frames and reference voice.

    ``sem`` (T_sem, D): the clip's semantic features when already computed (:func:`encode_clips` batches them)."""
    out = {k: v for k, v in row.items() if k not in ("sem_frames", "lip_frames", "ref_audio")}
    cid = str(row["clip_id"])
    if sem is None:
        sem = extractors.visual.encode(row["sem_frames"])
    out["sem"] = np.asarray(sem, np.float32)  # (T_sem, D)
    lip_frames = row.get("lip_frames", _NO_FRAMES)
    if extractors.mouth is not None and len(lip_frames):
        crops, _info = extractors.mouth(lip_frames)  # (T_lip, 32, 32) uint8; info: face_found, boxes
        out["lip"] = np.asarray(crops, np.uint8)
    else:
        out["lip"] = np.zeros((0, LIP_SIZE, LIP_SIZE), np.uint8)
    ref = row.get("ref_audio", _NO_AUDIO)
    if extractors.speaker is not None and len(ref):
        out["speaker"] = np.asarray(extractors.speaker.embed(ref, source=f"{cid}: reference voice"), np.float32)
    else:
        out["speaker"] = np.zeros(0, np.float32)
    return out


def encode_semantic(frame_sets: list[np.ndarray], visual) -> list[np.ndarray]:
    """The semantic features of several clips, their frames batched across clips: one encoder pass per frame size
    (clips of one size share every batch of ``visual.batch_size`` frames, so a GPU sees full batches).

    Args:
        frame_sets: per clip (T_i, H, W, 3) uint8.
        visual: a :class:`~vssflow.features.visual.VisualEncoder`.

    Returns:
        per clip (T_i, D) float32, the same as ``visual.encode`` of each clip alone (up to batch-size rounding).
    """
    out: list[np.ndarray | None] = [None] * len(frame_sets)
    by_size: dict[tuple, list[int]] = {}
    for i, f in enumerate(frame_sets):
        by_size.setdefault(tuple(np.shape(f)[1:]), []).append(i)
    for idx in by_size.values():
        feats = visual.encode(np.concatenate([frame_sets[i] for i in idx], axis=0))  # (sum T_i, D)
        bounds = np.cumsum([0] + [len(frame_sets[i]) for i in idx])
        for k, i in enumerate(idx):
            out[i] = feats[bounds[k] : bounds[k + 1]]
    return out


def encode_clips(rows: list[dict], extractors: Extractors) -> list[dict]:
    """:func:`encode_clip` of several clips, the semantic frames batched across them (:func:`encode_semantic`)."""
    sems = encode_semantic([r["sem_frames"] for r in rows], extractors.visual)
    return [encode_clip(r, extractors, sem=s) for r, s in zip(rows, sems, strict=True)]


def mel_clip(row: dict) -> dict:
    """Replace the target audio ``wav`` with its log-mel ``mel`` (T_mel, 64) float32 (100 frames/s)."""
    from vssflow.audio.mel import log_mel

    out = {k: v for k, v in row.items() if k != "wav"}
    out["mel"] = np.asarray(log_mel(np.asarray(row["wav"], np.float32)), np.float32)
    return out


def _present(x) -> np.ndarray | None:
    return None if x is None or len(x) == 0 else np.asarray(x)


def to_features(row: dict) -> ClipFeatures:
    """A fully processed clip dict -> ClipFeatures (empty arrays become None = condition absent)."""
    meta_keys = ("clip_id", "split", "bucket_s", "source", "licence", "transcript", "speaker_id")
    meta = {k: row.get(k) for k in meta_keys}
    meta["transcript"] = meta["transcript"] or None
    meta["speaker_id"] = meta["speaker_id"] or None
    meta["events"] = json.loads(row.get("events_json") or "[]")
    for k in ("decode_node", "encode_node"):
        if row.get(k):
            meta[k] = row[k]
    speaker = _present(row.get("speaker"))
    if speaker is not None and speaker.shape != (SPEAKER_DIM,):
        raise InputError(f"speaker embedding has shape {speaker.shape}", source=str(row.get("clip_id")))
    phonemes = _present(row.get("phonemes"))
    durations = _present(row.get("phoneme_durations"))
    if phonemes is None or durations is None or durations.shape != phonemes.shape:
        durations = None
    span = _present(row.get("speech_span"))
    return ClipFeatures(
        duration_s=float(row["duration_s"]),
        task=str(row["task"]),
        sem=np.asarray(row["sem"]),
        lip=_present(row.get("lip")),
        sync=_present(row.get("sync")),
        phonemes=phonemes,
        speaker=speaker,
        mel=np.asarray(row["mel"]),
        meta=meta,
        speech_span=None if span is None else (float(span[0]), float(span[1])),
        phoneme_durations=None if durations is None else np.asarray(durations, np.float32),
    )


def extract_clip(row, extractors: Extractors) -> ClipFeatures:
    """All stages on one clip, in process: what the Ray pipeline computes for this row.

    Args:
        row: a ManifestRow or a clip dict (see :func:`decode_clip`).
        extractors: loaded models.

    Returns:
        ClipFeatures (sem/mel float32; the shards store them as float16).

    Raises:
        InputError subclasses for bad inputs (the pipeline quarantines them).
    """
    d = decode_clip(row_dict(row), extractors.config)
    d = phonemize_clip(d, extractors.g2p, backend=extractors.config.g2p_backend)
    d = encode_clip(d, extractors)
    d = mel_clip(d)
    return to_features(d)
