"""Where an evaluation's clips and their references come from: :class:`ClipSource` over a shard set or a manifest
(usable on the driver and inside the evaluation actors), :func:`manifest_clip` (a manifest row -> the conditions a
user's request for its video gets, and its ground truth) and :func:`ground_truth_mel` (the mel the model's codec
and vocoder reconstruct, for the ground-truth ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipelines.evaluate_config import EvalConfig, clips_of
from vssflow.constants import SPEECH_TASKS
from vssflow.errors import AssetError, MissingFileError


class ClipSource:
    """Indexable clips: ``features(i)`` -> ClipFeatures and ``reference(i)`` -> metrics.Reference."""

    def __init__(self, cfg: EvalConfig, *, sem_dim: int | None = None, model_info: dict | None = None):
        self.cfg = cfg
        self._sem_dim, self._model_info = sem_dim, model_info or {}
        path = Path(cfg.data)
        if not path.exists():
            raise MissingFileError("evaluation data not found; pass a shard directory or a manifest", source=str(path))
        self.is_manifest = path.is_file()
        self._extractors = None
        self._manifest_rows = None
        if self.is_manifest:
            from vssflow.data.manifest import read_manifest

            self._manifest_rows = {r.clip_id: r for r in read_manifest(path)}
            rows = [r for r in self._manifest_rows.values() if r.task in cfg.tasks]
            self.items = _select(rows, cfg, key=lambda r: (r.task, r.split, r.clip_id))
        else:
            from vssflow.data.shard_set import ShardSet

            # per task: the wanted split when the task has clips in it, else every split of that task
            full = ShardSet(path, tasks=cfg.tasks, sem_dim=sem_dim, check=False)
            part = full
            if cfg.split:
                part = ShardSet(path, tasks=cfg.tasks, split=cfg.split, sem_dim=sem_dim, check=False)
            have = {part.keys[i][0] for i in range(len(part))}
            keys = [_ShardKey(part.keys[i][0], i, part) for i in range(len(part))]
            keys += [_ShardKey(full.keys[i][0], i, full) for i in range(len(full)) if full.keys[i][0] not in have]
            self.items = _select(keys, replace(cfg, split=None), key=lambda k: (k.task, k.index))
            if cfg.manifest:
                from vssflow.data.manifest import read_manifest

                self._manifest_rows = {r.clip_id: r for r in read_manifest(cfg.manifest)}

    def __len__(self) -> int:
        return len(self.items)

    def clip_facts(self, clip_id: str) -> dict:
        """What the manifest says about a clip beyond its features: split, speaker, held-out voice (None: unknown)."""
        row = (self._manifest_rows or {}).get(clip_id)
        if row is None:
            return {"split": None, "speaker_id": None, "held_out_voice": None}
        held = row.extra.get("held_out_voice")
        if isinstance(held, str):  # a CSV cell
            held = held.strip().lower() in ("1", "true", "yes")
        held = None if held is None else bool(held)
        return {"split": row.split, "speaker_id": row.speaker_id, "held_out_voice": held}

    def train_sentences(self) -> set[str]:
        """Normalised transcripts of every training clip (all tasks) of the same manifest, or of the same shards."""
        from vssflow.metrics.held_out import sentence_set

        if self._manifest_rows:
            return sentence_set(r.transcript for r in self._manifest_rows.values() if r.split == "train")
        from vssflow.data.shard_set import ShardSet

        tables = ShardSet(self.cfg.data, check=False).tables(["transcript"], split="train")
        return sentence_set(x for t in tables for x in t.column("transcript").to_pylist())

    def task(self, i: int) -> str:
        return self.items[i].task

    def _loaded_extractors(self):
        """The feature extractors the model was trained with (its config.json info; the defaults without it)."""
        from vssflow.features.extract import Extractors
        from vssflow.inference import extract_config_for

        if self._extractors is None:
            self._extractors = Extractors.load(extract_config_for(self._model_info))
            if self._sem_dim and self._extractors.sem_dim != self._sem_dim:
                raise AssetError(f"visual encoder {self._extractors.config.encoder!r} gives "
                                 f"{self._extractors.sem_dim}-d features but the model expects sem_dim "
                                 f"{self._sem_dim}; record the training encoder in config.json info['extractors']",
                                 source=self.cfg.model)  # fmt: skip
        return self._extractors

    def load(self, i: int):
        """(ClipFeatures, Reference) of item ``i``."""
        from vssflow.metrics.references import reference_from_features, reference_from_row

        item = self.items[i]
        if self.is_manifest:
            return manifest_clip(item, self._loaded_extractors())
        feats = item.ds[item.index]
        cid = str(feats.meta.get("clip_id"))
        row = (self._manifest_rows or {}).get(cid)
        if row is not None:
            ref = reference_from_row(row, lip=feats.lip)
        else:
            ref = reference_from_features(feats)
        return feats, ref

    @property
    def ground_truth_source(self) -> str:
        if self._manifest_rows:
            return "source audio of the clips (video track / audio file)"
        return "the shards' target mel vocoded with Griffin-Lim (no --manifest given)"


def manifest_clip(row, extractors):
    """(ClipFeatures, Reference) of a manifest row: the conditions a user's request for the row's video gets
    (:func:`vssflow.inference.prepare`, no audio track needed, any length), cut to the row's [start, end).

    The request is what the manifest gives: the task, the transcript (speech tasks), the reference voice (the row's
    ``reference_audio``, else its speech stem, else its own speech, as training takes it) and the speech span of
    the data (:func:`vssflow.features.extract.data_speech_span`: the row's timing, else the voice activity of its
    speech; none known: the whole clip). The ground truth (:func:`reference_from_row`) is the row's audio; its mel,
    for the ground truth through the model's codec and vocoder, is :func:`ground_truth_mel` of it.
    """
    from vssflow.features.extract import data_speech_span, row_dict
    from vssflow.inference import prepare
    from vssflow.media.video import probe
    from vssflow.metrics.references import reference_from_row
    from vssflow.metrics.suite import Reference
    from vssflow.windows import slice_features

    ref = reference_from_row(row)  # the ground truth, cut to [start, end)
    speech = row.task in SPEECH_TASKS
    voice = next((w for w in (ref.speaker_ref, ref.speech_stem, ref.wav) if w is not None), None) if speech else None
    span = data_speech_span(row_dict(row), ref.duration_s, ref.wav) if speech else None
    info = probe(row.video)
    feats = prepare(row.video, task=row.task, transcript=row.transcript if speech else None, reference_voice=voice,
                    speech_span=None if span is None else (row.start + span[0], row.start + span[1]),
                    extractors=extractors, info=info, clip_id=row.clip_id)  # fmt: skip
    if row.start > 0 or ref.duration_s < info.duration - 1e-3:  # the row is a part of its video
        cut = slice_features(feats, row.start, row.start + ref.duration_s)
        feats = replace(cut, phonemes=feats.phonemes, phoneme_durations=feats.phoneme_durations, meta=feats.meta)
    feats = replace(feats, duration_s=ref.duration_s, speech_span=span)  # None: the data knows no span
    opening = Reference.opening_from_crops(feats.lip)  # the mouth of the lip crops, when they are there
    return feats, ref if opening is None else replace(ref, mouth_opening=opening)


def ground_truth_mel(feats, ref) -> np.ndarray:
    """(T_mel, 64) log-mel of the ground truth: the shard's target mel, else (a manifest clip, whose conditions, as
    a user's, carry none) the mel of the row's ground-truth audio."""
    from vssflow.audio.mel import log_mel

    return np.asarray(feats.mel if feats.mel is not None else log_mel(ref.wav), np.float32)


@dataclass
class _ShardKey:
    task: str
    index: int
    ds: object  # the ShardSet the index refers to


def _select(rows, cfg: EvalConfig, key):
    """Up to max_clips per task from the wanted split (every split when that one is empty), in a fixed order."""
    chosen = []
    for task in cfg.tasks:
        pool = sorted([r for r in rows if r.task == task], key=key)
        split = [r for r in pool if cfg.split is None or r.split == cfg.split]
        chosen += (split or pool)[: clips_of(cfg.max_clips, task)]
    return chosen
