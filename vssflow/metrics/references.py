"""Build :class:`~vssflow.metrics.suite.Reference` ground truths from a manifest row or from shard features."""

from __future__ import annotations

import numpy as np

from vssflow.constants import LIP_FPS, SAMPLE_RATE
from vssflow.data.manifest import FROM_VIDEO, ManifestRow
from vssflow.metrics.suite import Reference
from vssflow.types import ClipFeatures


def _cut(wav: np.ndarray, start: float, duration: float) -> np.ndarray:
    s, n = int(round(start * SAMPLE_RATE)), int(round(duration * SAMPLE_RATE))
    out = np.asarray(wav[s : s + n], np.float32)
    return np.pad(out, (0, n - len(out))) if len(out) < n else out


def reference_from_row(row: ManifestRow, *, lip: np.ndarray | None = None) -> Reference:
    """Ground truth of a manifest row: the audio (video track or ``audio`` file, cut to [start, end)), reference
    voice, events, speech stem, and the mouth opening (from ``lip`` crops when given; else, for the synthetic corpus,
    the drawn face's known opening: from the timed phonemes, or from the speech envelope for real speech)."""
    from vssflow.audio.io import read_audio
    from vssflow.media.video import probe, read_audio_track

    info = probe(row.video)
    end = info.duration if row.end is None else min(row.end, info.duration)
    duration = end - row.start
    full = read_audio_track(row.video, info=info) if row.audio == FROM_VIDEO else read_audio(row.audio)
    wav = _cut(full, row.start, duration)
    stem = _cut(read_audio(row.stems["speech"]), row.start, duration) if row.stems and "speech" in row.stems else None
    ref_voice = read_audio(row.reference_audio) if row.reference_audio else None
    n_frames = max(1, int(round(duration * LIP_FPS)))
    opening = Reference.opening_from_crops(lip)
    if opening is None and row.task != "v2s" and str(row.source).startswith("vssflow-synth"):
        from vssflow.synth import scenes

        if row.phonemes:
            opening = scenes.mouth_from_phonemes(row.phonemes, n_frames, LIP_FPS, offset=-row.start)
        else:
            opening = scenes.mouth_from_envelope(stem if stem is not None else wav, n_frames, LIP_FPS)
    return Reference(
        clip_id=row.clip_id,
        task=row.task,
        duration_s=duration,
        wav=wav,
        transcript=row.transcript,
        speaker_ref=ref_voice,
        events=[(e.time - row.start, e.cls) for e in row.events],
        mouth_opening=opening,
        speaker_id=row.speaker_id,
        speech_stem=stem,
    )


def reference_from_features(clip: ClipFeatures, *, wav: np.ndarray | None = None, vocoder=None) -> Reference:
    """Ground truth from shard features: ``wav`` when the source audio is known, else the target mel vocoded
    (Griffin-Lim by default; the report says so). The speaker reference is the stored embedding."""
    if wav is None:
        import torch

        from vssflow.audio.vocoder import load_vocoder

        voc = vocoder or load_vocoder(None)
        mel = torch.from_numpy(np.asarray(clip.mel, np.float32))[None]
        wav = voc(mel)[0].numpy()
    wav = _cut(np.asarray(wav, np.float32), 0.0, clip.duration_s)
    events = [(float(e["time"]), str(e["class"])) for e in clip.meta.get("events") or []]
    lip = clip.lip if clip.lip is not None and clip.lip.ndim == 3 else None
    return Reference(
        clip_id=str(clip.meta.get("clip_id")),
        task=clip.task,
        duration_s=clip.duration_s,
        wav=wav,
        transcript=clip.meta.get("transcript"),
        speaker_ref=None if clip.speaker is None else np.asarray(clip.speaker, np.float32),
        events=events,
        mouth_opening=Reference.opening_from_crops(lip),
        speaker_id=clip.meta.get("speaker_id"),
    )
