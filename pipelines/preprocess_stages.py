"""The stages of ``vssflow preprocess``: Ray Data adapters over :mod:`vssflow.features.extract`, on dicts of numpy.

What :mod:`pipelines.preprocess` (the job driver) strings together::

    decode_stage -> phonemes_stage -> mel_stage   (= cpu_stages: one row, one CPU)
      -> EncodeActor  (semantic encoder + mouth crops + speaker, loaded once per actor; pack_rows at the end)
      -> ShardWriter  (write_stage: rows grouped by task and duration bucket -> atomic Parquet shards + quarantine)

Every stage is a plain function (or a callable class) that Ray Data calls; none of them needs Ray to run, so a test
calls them on dicts. A row that fails a stage carries its error columns on to the writer (:func:`_guard`) and
lands in ``quarantine/``.
"""

from __future__ import annotations

import json
import pickle
import socket
from collections import defaultdict

import numpy as np

from pipelines.quarantine import ERROR_KEYS, error_fields, record, write_quarantine
from vssflow.constants import LIP_SIZE, N_MELS, SYNC_SIZE
from vssflow.data import schema as S
from vssflow.data.shards import shard_name, write_table_atomic
from vssflow.features.extract import (
    CLIP_KEYS,
    ExtractConfig,
    Extractors,
    decode_clip,
    encode_clip,
    encode_semantic,
    mel_clip,
    phonemize_clip,
    to_features,
)
from vssflow.storage import Location, location

# Every row has every key at every stage (Ray Data builds Arrow blocks from rows): an absent array is empty.
_DEFAULTS = {
    "duration_s": 0.0,
    "bucket_s": 0.0,
    "sem_frames": np.zeros((0, 0, 0, 3), np.uint8),
    "lip_frames": np.zeros((0, 0, 0, 3), np.uint8),
    "wav": np.zeros(0, np.float32),
    "ref_audio": np.zeros(0, np.float32),
    "phonemes": np.zeros(0, np.int16),
    "phoneme_durations": np.zeros(0, np.float32),
    "speech_span": np.zeros(0, np.float32),
    "mel": np.zeros((0, N_MELS), np.float32),
    "sem": np.zeros((0, 0), np.float32),
    "lip": np.zeros((0, LIP_SIZE, LIP_SIZE), np.uint8),
    "sync": np.zeros((0, SYNC_SIZE, SYNC_SIZE), np.uint8),
    "speaker": np.zeros(0, np.float32),
    "decode_node": "",
    "encode_node": "",
    **{k: "" for k in ERROR_KEYS},
}
_SPEECH = ("phonemes", "phoneme_durations", "speech_span")
_DECODED = ("duration_s", "bucket_s", "sem_frames", "lip_frames", "sync", "wav", "ref_audio", *_SPEECH)
_MEL = ("duration_s", "bucket_s", "sem_frames", "lip_frames", "sync", "ref_audio", *_SPEECH, "mel")
_ENCODED = ("duration_s", "bucket_s", *_SPEECH, "mel", "sem", "lip", "sync", "speaker")
_NODE_KEYS = ("decode_node", "encode_node", *ERROR_KEYS)


def _node() -> str:
    import ray

    if ray.is_initialized():  # (get_runtime_context() would start a Ray outside of one)
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def _conform(row: dict, keys: tuple[str, ...]) -> dict:
    out = {k: row[k] for k in CLIP_KEYS}
    for k in keys + _NODE_KEYS:
        out[k] = row[k] if k in row else _DEFAULTS[k]
    return out


# ------------------------------------------------------------------------------------------------ stage adapters
def _guard(stage: str, fn, row: dict, keys: tuple[str, ...]) -> dict:
    """Run ``fn(row)`` unless the row already failed; a failure becomes error columns (quarantine)."""
    row = dict(row)
    if row.get("error_stage"):
        return _conform(row, keys)
    try:
        out = fn(row)
    except Exception as e:  # noqa: BLE001 - InputError -> its reason; anything else -> internal_error
        out = {**row, **error_fields(stage, e)}
    return _conform(out, keys)


def decode_stage(row: dict, *, config: ExtractConfig) -> dict:
    out = _guard("decode", lambda r: decode_clip(r, config), row, _DECODED)
    out["decode_node"] = _node()
    return out


def phonemes_stage(row: dict, *, backend: str) -> dict:
    return _guard("phonemes", lambda r: phonemize_clip(r, backend=backend), row, _DECODED)


def mel_stage(row: dict) -> dict:
    return _guard("mel", mel_clip, row, _MEL)


def cpu_stages(row: dict, *, config: ExtractConfig) -> dict:
    """decode -> phonemes -> mel on one row (what one CPU task does)."""
    return mel_stage(phonemes_stage(decode_stage(row, config=config), backend=config.g2p_backend))


class EncodeActor:
    """Ray actor: loads the encoders once (on its share of a GPU with ``--device cuda``), then encodes a batch of
    clips per call, their semantic frames in one batch across clips (:func:`encode_semantic`). With ``decode``
    it first runs :func:`cpu_stages` on each row itself (the CPU plan: the frames stay in this process)."""

    def __init__(self, config: ExtractConfig, decode: bool = False, threads: int = 1, sem_dim: int | None = None):
        import torch

        torch.set_num_threads(threads)  # its share of the CPUs: more threads than CPUs slow every actor down
        self.extractors = Extractors.load(config, parts=("visual", "mouth", "speaker"))
        self.config, self.decode, self.sem_dim = config, decode, sem_dim
        self.node = _node()

    def __call__(self, batch: dict) -> dict:
        rows = [{k: _py(v[i]) for k, v in batch.items()} for i in range(len(batch["clip_id"]))]
        if self.decode:
            rows = [cpu_stages(r, config=self.config) for r in rows]
        live = [i for i, r in enumerate(rows) if not r.get("error_stage")]
        sems: dict[int, np.ndarray] = {}
        try:
            sems = dict(zip(live, encode_semantic([rows[i]["sem_frames"] for i in live], self.extractors.visual),
                            strict=True))  # fmt: skip
        except Exception:  # noqa: BLE001 - a bad clip in the batch: each one alone below, its error quarantined
            sems = {}
        out = [_guard("encode", lambda r, i=i: encode_clip(r, self.extractors, sem=sems.get(i)), r, _ENCODED)
               for i, r in enumerate(rows)]  # fmt: skip
        for r in out:
            r["encode_node"] = self.node
        return pack_rows(out, sem_dim=self.sem_dim)


def _py(v):
    """A numpy scalar of a batch column -> the Python value a row of ``ds.map`` would hold."""
    return v.item() if isinstance(v, np.generic) else v


def pack_rows(rows: list[dict], *, sem_dim: int | None, lip_dim: int = 0) -> dict:
    """Encoded rows -> what the writer needs, one compact record per clip: the shard row (checked against the
    schema) or the quarantine record, pickled. Done where the clip was encoded: a batch of ragged arrays converted
    to Arrow and back between the stages cost the writer 0.14 CPU s a clip, 40 % of the encoding (bench_preprocess).

    Returns:
        a numpy batch: ``clip_id``, ``kind`` ("data" or "failed"), ``task``, ``bucket_s``, ``payload`` (bytes).
    """
    out = {"clip_id": [], "kind": [], "task": [], "bucket_s": [], "payload": []}
    for r in rows:
        kind = "failed"
        if not r["error_stage"]:
            try:
                f = to_features({k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()})
                S.check_features(f, sem_dim=sem_dim, lip_dim=lip_dim)
                kind, value = "data", S.features_to_row(f)
            except Exception as e:  # noqa: BLE001 - a row the schema refuses is quarantined, the job goes on
                r = {**r, **error_fields("write", e)}
        if kind == "failed":
            value = record(r)
        out["clip_id"].append(str(r["clip_id"]))
        out["kind"].append(kind)
        out["task"].append(str(r["task"]))
        out["bucket_s"].append(float(r["bucket_s"]))
        out["payload"].append(pickle.dumps(value, protocol=5))
    payloads = np.empty(len(rows), dtype=object)
    payloads[:] = out.pop("payload")
    return {**{k: np.asarray(v) for k, v in out.items()}, "payload": payloads}


def write_stage(
    batch: dict, *, vdir: str | Location, sem_dim: int, lip_dim: int, file_md: dict, row_group_rows: int
) -> dict:
    """Write a batch of packed rows (:func:`pack_rows`): one shard per (task, bucket) present, one quarantine file
    for failures.

    Returns:
        {"entry": JSON strings}: one ``_manifest.json`` entry per written file (with its clip ids).
    """
    groups, failed = defaultdict(list), []
    for kind, payload in zip(batch["kind"], batch["payload"], strict=True):
        value = pickle.loads(payload)
        if kind == "data":
            groups[(value["task"], float(value["bucket_s"]))].append(value)
        else:
            failed.append(value)
    entries = []
    for (task, bucket), feats in sorted(groups.items()):
        md = {**file_md, S.META["task"]: task, S.META["bucket_s"]: f"{bucket:g}"}
        schema = S.build_schema(sem_dim=sem_dim, lip_dim=lip_dim, metadata=md)
        ids = [r["clip_id"] for r in feats]
        path = location(vdir) / shard_name(task, bucket, ids)
        e = write_table_atomic(S.rows_to_table(feats, schema), path, row_group_rows=row_group_rows)
        entries.append({**e, "kind": "data", "task": task, "bucket_s": bucket, "clip_ids": ids})
    if failed:
        entries.append(write_quarantine(failed, vdir))
    return {"entry": np.array([json.dumps(e) for e in entries], dtype=object)}


class ShardWriter:
    """Ray actor around :func:`write_stage` (one per 8 encoder actors; alive for the whole job)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, batch: dict) -> dict:
        return write_stage(batch, **self.kwargs)
