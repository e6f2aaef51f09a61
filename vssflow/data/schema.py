"""The Parquet contract of feature shards, in one place: columns, dtypes, file metadata and duration buckets.

One row per clip. Time series are ``list<fixed_size_list<...>>`` columns (variable length T, fixed inner size),
stored unpadded; readers pad to the clip's duration bucket (``bucket_frames``) so batches have equal shapes.

| column | arrow type | shape / notes |
|---|---|---|
| clip_id | string | unique over a shard set |
| task | dictionary<int8, string> | "v2s", "tts" or "joint" |
| split | dictionary<int8, string> | "train", "val", "test" |
| bucket_s | float32 | duration bucket (2/4/6/8/10 s): shards hold one task and one bucket |
| duration_s | float32 | exact clip length |
| source, licence | string | provenance of the clip |
| transcript, speaker_id | string (nullable) | |
| events | list<struct<time: float64, class: string>> | known sound events (onset seconds, class) |
| sem | list<fixed_size_list<float16, D_sem>> | (T_sem, D_sem) semantic frames at SEM_FPS |
| lip | list<fixed_size_list<uint8, 1024>> or <float16, D_lip> (nullable) | (T_lip, 32, 32) crops at LIP_FPS |
| sync | list<fixed_size_list<uint8, 1024>> (nullable) | (T_sync, 32, 32) grayscale frame thumbnails at SYNC_FPS |
| phonemes | list<int16> (nullable) | (P,) ids of the versioned phoneme vocabulary |
| phoneme_durations | list<float32> (nullable) | (P,) relative durations of the phonemes (espeak-ng timing) |
| speech_span | list<float32> (nullable) | (2,) start, end seconds of the speech in the clip |
| speaker_emb | list<float32> (nullable) | (SPEAKER_DIM,) reference-voice embedding, length checked on read |
| mel | list<fixed_size_list<float16, 64>> | (T_mel, 64) target log-mel at MEL_FPS |
| decode_node, encode_node | string | where the row was decoded / encoded (Ray node id, or host) |

float16 for ``sem`` and ``mel``: log-mel values lie in about [-11.5, 5] where float16 steps are <= 0.008 (under 1 %
in amplitude), and encoder features are already noisy at that level. ``speaker_emb`` stays float32 (one vector).
A null ``lip`` / ``sync`` / ``phonemes`` / ``speaker_emb`` means "condition absent" (the model's learned null value).
``speaker_emb`` is a plain list: a *nullable* fixed_size_list does not survive a Parquet round trip in pyarrow 25
("Expected all lists to be of size=256 but index 2 had size=0").
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from vssflow.constants import (
    BUCKETS_S,
    HOP_LENGTH,
    LIP_FPS,
    LIP_SIZE,
    MEL_FPS,
    N_MELS,
    SAMPLE_RATE,
    SEM_FPS,
    SPEAKER_DIM,
    SYNC_FPS,
    SYNC_SIZE,
)
from vssflow.errors import ClipTooLongError, FeatureShapeError
from vssflow.types import ClipFeatures

__all__ = [
    "SCHEMA_VERSION",
    "BUCKETS_S",
    "META",
    "build_schema",
    "quarantine_schema",
    "bucket_for",
    "expected_frames",
    "bucket_frames",
    "file_metadata",
    "read_metadata",
    "features_to_row",
    "row_to_features",
    "rows_to_table",
    "table_to_rows",
    "check_features",
]

SCHEMA_VERSION = "3"  # 2: the sync column; 3: phoneme_durations and speech_span
LIP_CROP_DIM = LIP_SIZE * LIP_SIZE  # 1024: one flattened 32x32 crop
SYNC_FRAME_DIM = SYNC_SIZE * SYNC_SIZE  # 1024: one flattened 32x32 thumbnail
FRAME_TOLERANCE = 2  # frames a time series may differ from duration * rate (rounding of decoders)

# File-metadata keys (bytes in Parquet; values are UTF-8 strings, JSON where structured).
META = {
    "schema_version": "vssflow.schema_version",
    "config_hash": "vssflow.config_hash",
    "config": "vssflow.config",  # JSON of the preprocessing config
    "extractors": "vssflow.extractors",  # JSON: {name: {model, version, weights_sha256}}
    "created_at": "vssflow.created_at",
    "task": "vssflow.task",
    "bucket_s": "vssflow.bucket_s",
    "sem_dim": "vssflow.sem_dim",
    "lip_dim": "vssflow.lip_dim",  # 0 = uint8 crops, else float feature size
}

_TS_COLUMNS = ("sem", "lip", "sync", "mel")


def _ts(dtype: pa.DataType, inner: int) -> pa.DataType:
    return pa.list_(pa.list_(dtype, inner))


def build_schema(*, sem_dim: int, lip_dim: int = 0, metadata: dict[str, str] | None = None) -> pa.Schema:
    """The shard schema.

    Args:
        sem_dim: D_sem, the semantic encoder's feature size (1280 MobileNetV2, 512/768 CLIP).
        lip_dim: 0 for uint8 mouth crops (LIP_SIZE x LIP_SIZE), else the size of float lip features.
        metadata: file metadata (see :func:`file_metadata`).
    """
    lip_type = _ts(pa.uint8(), LIP_CROP_DIM) if lip_dim == 0 else _ts(pa.float16(), lip_dim)
    dict_str = pa.dictionary(pa.int8(), pa.string())
    fields = [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("task", dict_str, nullable=False),
        pa.field("split", dict_str, nullable=False),
        pa.field("bucket_s", pa.float32(), nullable=False),
        pa.field("duration_s", pa.float32(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("licence", pa.string()),
        pa.field("transcript", pa.string()),
        pa.field("speaker_id", pa.string()),
        pa.field("events", pa.list_(pa.struct([("time", pa.float64()), ("class", pa.string())]))),
        pa.field("sem", _ts(pa.float16(), sem_dim), nullable=False),
        pa.field("lip", lip_type),
        pa.field("sync", _ts(pa.uint8(), SYNC_FRAME_DIM)),
        pa.field("phonemes", pa.list_(pa.int16())),
        pa.field("phoneme_durations", pa.list_(pa.float32())),
        pa.field("speech_span", pa.list_(pa.float32())),
        pa.field("speaker_emb", pa.list_(pa.float32())),
        pa.field("mel", _ts(pa.float16(), N_MELS), nullable=False),
        pa.field("decode_node", pa.string()),
        pa.field("encode_node", pa.string()),
    ]
    md = {META["schema_version"]: SCHEMA_VERSION, META["sem_dim"]: str(sem_dim), META["lip_dim"]: str(lip_dim)}
    md.update(metadata or {})
    return pa.schema(fields, metadata={k.encode(): str(v).encode() for k, v in md.items()})


def quarantine_schema() -> pa.Schema:
    """Rows that failed: which clip, at which stage, why (``reason`` is the InputError tag), and the message."""
    return pa.schema(
        [
            pa.field("clip_id", pa.string(), nullable=False),
            pa.field("stage", pa.string(), nullable=False),
            pa.field("reason", pa.string(), nullable=False),
            pa.field("error_type", pa.string(), nullable=False),
            pa.field("message", pa.string(), nullable=False),
            pa.field("video", pa.string()),
            pa.field("task", pa.string()),
            pa.field("node", pa.string()),
        ],
        metadata={META["schema_version"].encode(): SCHEMA_VERSION.encode()},
    )


# ----------------------------------------------------------------------------------------------- buckets / shapes
def bucket_for(duration_s: float, buckets: Sequence[float] = BUCKETS_S, *, source: str | None = None) -> float:
    """The smallest bucket that holds ``duration_s``. Raises ClipTooLongError beyond the largest."""
    for b in sorted(buckets):
        if duration_s <= b + 1e-3:
            return float(b)
    raise ClipTooLongError(
        f"clip is {duration_s:.2f} s, longer than the largest bucket ({max(buckets):g} s); cut it with the manifest's "
        "start/end columns or add a larger bucket",
        source=source,
    )


def expected_frames(duration_s: float) -> dict[str, int]:
    """Frames of each time series for a clip of ``duration_s`` (the decoders' conventions)."""
    return {
        "sem": max(1, int(round(duration_s * SEM_FPS))),
        "lip": max(1, int(round(duration_s * LIP_FPS))),
        "sync": max(1, int(round(duration_s * SYNC_FPS))),
        "mel": int(round(duration_s * SAMPLE_RATE)) // HOP_LENGTH,
    }


def bucket_frames(bucket_s: float) -> dict[str, int]:
    """Padded length of each time series in a bucket: what a batch of this bucket is padded to."""
    return {
        "sem": int(math.ceil(bucket_s * SEM_FPS)),
        "lip": int(math.ceil(bucket_s * LIP_FPS)),
        "sync": int(math.ceil(bucket_s * SYNC_FPS)),
        "mel": int(math.ceil(bucket_s * MEL_FPS)),
    }


def check_features(f: ClipFeatures, *, sem_dim: int | None = None, lip_dim: int = 0, source: str = "") -> None:
    """Raise FeatureShapeError unless ``f`` matches the schema (shapes, dtypes, lengths vs duration)."""
    where = source or str(f.meta.get("clip_id", "clip"))
    want = expected_frames(f.duration_s)

    def bad(msg: str) -> FeatureShapeError:
        return FeatureShapeError(f"{msg}; re-run `vssflow preprocess` with this config", source=where)

    def check_ts(name: str, x: np.ndarray | None, inner: tuple[int, ...] | None, required: bool) -> None:
        if x is None:
            if required:
                raise bad(f"{name} is missing")
            return
        if x.ndim != 1 + len(inner) or (inner and tuple(x.shape[1:]) != inner):
            raise bad(f"{name} has shape {tuple(x.shape)}, expected (T, {', '.join(map(str, inner))})")
        if abs(x.shape[0] - want[name]) > FRAME_TOLERANCE:
            raise bad(f"{name} has {x.shape[0]} frames for {f.duration_s:.2f} s, expected about {want[name]}")

    if f.sem is None or f.sem.ndim != 2 or (sem_dim is not None and f.sem.shape[1] != sem_dim):
        raise bad(f"sem has shape {None if f.sem is None else tuple(f.sem.shape)}, expected (T, {sem_dim})")
    check_ts("sem", f.sem, (f.sem.shape[1],), True)
    if f.lip is not None and lip_dim == 0 and f.lip.dtype != np.uint8:
        raise bad(f"lip crops have dtype {f.lip.dtype}, expected uint8")
    check_ts("lip", f.lip, (LIP_SIZE, LIP_SIZE) if lip_dim == 0 else (lip_dim,), False)
    if f.sync is not None and f.sync.dtype != np.uint8:
        raise bad(f"sync thumbnails have dtype {f.sync.dtype}, expected uint8")
    check_ts("sync", f.sync, (SYNC_SIZE, SYNC_SIZE), False)
    check_ts("mel", f.mel, (N_MELS,), True)
    if f.speaker is not None and f.speaker.shape != (SPEAKER_DIM,):
        raise bad(f"speaker has shape {tuple(f.speaker.shape)}, expected ({SPEAKER_DIM},)")
    if f.phonemes is not None and f.phonemes.ndim != 1:
        raise bad(f"phonemes have shape {tuple(f.phonemes.shape)}, expected (P,)")
    if f.phoneme_durations is not None and (f.phonemes is None or f.phoneme_durations.shape != f.phonemes.shape):
        raise bad(f"phoneme_durations have shape {tuple(f.phoneme_durations.shape)}, expected one per phoneme")
    if f.speech_span is not None and not (len(f.speech_span) == 2 and 0 <= f.speech_span[0] < f.speech_span[1]):
        raise bad(f"speech_span {tuple(f.speech_span)} is not (start, end) seconds with start < end")


# ----------------------------------------------------------------------------------------------- metadata
def file_metadata(
    *, config_hash: str, config: dict, extractors: dict, created_at: str, task: str | None = None, bucket_s=None
) -> dict[str, str]:
    """String metadata for a shard's footer (merged into :func:`build_schema`)."""
    md = {
        META["config_hash"]: config_hash,
        META["config"]: json.dumps(config, sort_keys=True),
        META["extractors"]: json.dumps(extractors, sort_keys=True),
        META["created_at"]: created_at,
    }
    if task is not None:
        md[META["task"]] = task
    if bucket_s is not None:
        md[META["bucket_s"]] = f"{float(bucket_s):g}"
    return md


def read_metadata(schema: pa.Schema) -> dict:
    """Decoded vssflow metadata of a shard (JSON values parsed, dims as int)."""
    raw = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    out = {}
    for name, key in META.items():
        if key not in raw:
            continue
        v = raw[key]
        if name in ("config", "extractors"):
            v = json.loads(v)
        elif name in ("sem_dim", "lip_dim"):
            v = int(v)
        elif name == "bucket_s":
            v = float(v)
        out[name] = v
    return out


# ----------------------------------------------------------------------------------------------- rows <-> arrow
def features_to_row(f: ClipFeatures) -> dict:
    """ClipFeatures -> a row dict (column name -> value) ready for :func:`rows_to_table`."""
    m = f.meta
    return {
        "clip_id": str(m["clip_id"]),
        "task": f.task,
        "split": m.get("split", "train"),
        "bucket_s": float(m.get("bucket_s") or bucket_for(f.duration_s)),
        "duration_s": float(f.duration_s),
        "source": m.get("source", ""),
        "licence": m.get("licence", ""),
        "transcript": m.get("transcript"),
        "speaker_id": m.get("speaker_id"),
        "events": list(m.get("events") or []),
        "sem": f.sem,
        "lip": f.lip,
        "sync": f.sync,
        "phonemes": f.phonemes,
        "phoneme_durations": f.phoneme_durations,
        "speech_span": None if f.speech_span is None else np.asarray(f.speech_span, np.float32),
        "speaker_emb": f.speaker,
        "mel": f.mel,
        "decode_node": m.get("decode_node"),
        "encode_node": m.get("encode_node"),
    }


def row_to_features(row: dict) -> ClipFeatures:
    """A row dict from :func:`table_to_rows` -> ClipFeatures (arrays as stored: float16 sem/mel)."""
    meta_keys = ("clip_id", "split", "bucket_s", "source", "licence", "transcript", "speaker_id", "events")
    meta = {k: row[k] for k in meta_keys if k in row}
    meta.update({k: row[k] for k in ("decode_node", "encode_node") if row.get(k) is not None})
    return ClipFeatures(
        duration_s=float(row["duration_s"]),
        task=row["task"],
        sem=row["sem"],
        lip=row["lip"],
        sync=row.get("sync"),
        phonemes=row["phonemes"],
        speaker=row["speaker_emb"],
        mel=row["mel"],
        meta=meta,
        speech_span=None if row.get("speech_span") is None else tuple(float(x) for x in row["speech_span"]),
        phoneme_durations=row.get("phoneme_durations"),
    )


_LIST_COLUMNS = {
    "speaker_emb": np.float32,
    "phonemes": np.int16,
    "phoneme_durations": np.float32,
    "speech_span": np.float32,
}  # fmt: skip  (plain list columns: dtype of their values)


def _ragged(values: list[np.ndarray | None], field: pa.Field) -> pa.Array:
    """[(T_i, ...)] arrays (None = null) -> list<fixed_size_list<dtype, inner>> array."""
    inner_type = field.type.value_type
    size, dtype = inner_type.list_size, inner_type.value_type.to_pandas_dtype()
    lens = [0 if v is None else len(v) for v in values]
    offsets = np.zeros(len(values) + 1, np.int32)
    offsets[1:] = np.cumsum(lens)
    parts = [np.asarray(v).reshape(len(v), size).astype(dtype, copy=False) for v in values if v is not None]
    flat = np.concatenate(parts).reshape(-1) if parts else np.zeros(0, dtype)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=inner_type.value_type), size)
    mask = pa.array([v is None for v in values], type=pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets), inner, type=field.type, mask=mask)


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Row dicts (see :func:`features_to_row`) -> a table of ``schema`` (float arrays cast to the column dtype)."""
    cols = []
    for field in schema:
        vals = [r.get(field.name) for r in rows]
        if field.name in _TS_COLUMNS:
            cols.append(_ragged(vals, field))
        elif field.name in _LIST_COLUMNS:
            dtype = _LIST_COLUMNS[field.name]
            cols.append(pa.array([None if v is None else np.asarray(v, dtype).reshape(-1) for v in vals], field.type))
        else:
            cols.append(pa.array(vals, type=field.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _fsl_rows(fsl: pa.FixedSizeListArray) -> np.ndarray:
    """(len, size) numpy view of a fixed-size list array (null slots hold placeholder values)."""
    size = fsl.type.list_size
    flat = fsl.values.to_numpy(zero_copy_only=False).reshape(-1, size)
    return flat[fsl.offset : fsl.offset + len(fsl)]


def _column_rows(arr: pa.Array, name: str, lip_dim: int) -> list:
    if name in _TS_COLUMNS:
        offs = arr.offsets.to_numpy()
        frames = _fsl_rows(arr.values)  # (sum T, inner)
        if name == "lip" and lip_dim == 0:
            frames = frames.reshape(-1, LIP_SIZE, LIP_SIZE)  # (sum T, 32, 32)
        elif name == "sync":
            frames = frames.reshape(-1, SYNC_SIZE, SYNC_SIZE)  # (sum T, 32, 32)
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        return [None if nulls[i] else frames[offs[i] : offs[i + 1]] for i in range(len(arr))]
    if name in _LIST_COLUMNS:
        dtype = _LIST_COLUMNS[name]
        offs = arr.offsets.to_numpy()
        flat = arr.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        return [None if nulls[i] else flat[offs[i] : offs[i + 1]].copy() for i in range(len(arr))]
    return arr.to_pylist()


def table_to_rows(table: pa.Table) -> list[dict]:
    """A shard table (or slice of one) -> row dicts with numpy arrays (inverse of :func:`rows_to_table`)."""
    lip_dim = int((table.schema.metadata or {}).get(META["lip_dim"].encode(), b"0"))
    table = table.combine_chunks()
    cols = {}
    for name in table.column_names:
        chunks = table.column(name).chunks
        arr = chunks[0] if chunks else pa.array([], type=table.schema.field(name).type)
        cols[name] = _column_rows(arr, name, lip_dim)
    return [{name: cols[name][i] for name in cols} for i in range(table.num_rows)]
