"""A clip's features as one file: what a client that preprocessed sends to ``POST /v1/generate/features``.

Two forms, told apart by their first bytes:

* ``.npz`` (``numpy.savez``, no pickles): ``duration_s`` (scalar), ``task`` (string), ``sem`` (T_sem, D) and the
  optional ``lip``, ``sync``, ``phonemes``, ``speaker``, ``speech_span`` (2,) seconds, ``phoneme_durations`` (P,);
  an empty array is the same as an absent one. :func:`features_to_npz` writes it.
* a one-row Parquet file of the shard schema (:mod:`vssflow.data.schema`); its target ``mel`` is dropped.

Shapes against a model are checked later, by the generator (``Generator.check``); here only what the file itself
says: readable, the arrays known, a task, a duration, a valid span. Every failure is one :class:`FeaturesFileError`
line that starts with the upload's name.
"""

from __future__ import annotations

import io

import numpy as np

from vssflow.constants import TASKS
from vssflow.errors import InputError
from vssflow.types import ClipFeatures

NPZ_REQUIRED = ("duration_s", "task", "sem")
NPZ_OPTIONAL = ("lip", "sync", "phonemes", "speaker", "speech_span", "phoneme_durations")
_PARQUET_MAGIC = b"PAR1"


class FeaturesFileError(InputError):
    """An uploaded features file that is not one clip's features (HTTP 422)."""

    reason = "bad_features"


def features_to_npz(f: ClipFeatures) -> bytes:
    """``f`` -> the ``.npz`` bytes :func:`read_features_file` reads back (``mel`` and ``meta`` are not written)."""
    arrays: dict[str, np.ndarray] = {"duration_s": np.float32(f.duration_s), "task": np.str_(f.task), "sem": f.sem}
    for k in ("lip", "sync", "phonemes", "speaker", "phoneme_durations"):
        if getattr(f, k) is not None:
            arrays[k] = np.asarray(getattr(f, k))
    if f.speech_span is not None:
        arrays["speech_span"] = np.asarray(f.speech_span, np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def read_features_file(data: bytes, *, source: str = "features") -> ClipFeatures:
    """The clip of an uploaded ``.npz`` or one-row Parquet file.

    Args:
        data: the file's bytes.
        source: the upload's name in error messages.

    Raises:
        FeaturesFileError: unreadable, an unknown or missing array, a bad task, duration or span, not one row.
    """
    return _read_parquet(data, source) if data[:4] == _PARQUET_MAGIC else _read_npz(data, source)


def _read_npz(data: bytes, source: str) -> ClipFeatures:
    try:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any parse failure is the client's file
        raise FeaturesFileError(f"not a readable .npz file ({type(e).__name__})", source=source) from e
    missing = [k for k in NPZ_REQUIRED if k not in arrays]
    if missing:
        raise FeaturesFileError(f".npz lacks {missing}; expected duration_s, task, sem, ...", source=source)
    unknown = sorted(set(arrays) - set(NPZ_REQUIRED) - set(NPZ_OPTIONAL))
    if unknown:
        raise FeaturesFileError(f"unknown arrays {unknown}", source=source)

    def opt(k: str) -> np.ndarray | None:
        a = arrays.get(k)
        return None if a is None or a.size == 0 else a

    task = str(arrays["task"])
    if task not in TASKS:
        raise FeaturesFileError(f"task must be one of {TASKS}, got {task!r}", source=source)
    try:
        duration = float(arrays["duration_s"])
    except (TypeError, ValueError) as e:
        raise FeaturesFileError("duration_s must be a number", source=source) from e
    span = opt("speech_span")
    if span is not None:
        from vssflow.features.span import parse_span

        try:
            span = parse_span(np.asarray(span, np.float64).reshape(-1).tolist(), source=f"{source}: speech_span")
        except (InputError, TypeError, ValueError):
            raise FeaturesFileError("speech_span must be (2,) seconds [START, END] with 0 <= START < END",
                                    source=source) from None  # fmt: skip
    return ClipFeatures(duration_s=duration, task=task, sem=arrays["sem"], lip=opt("lip"), sync=opt("sync"),
                        phonemes=opt("phonemes"), speaker=opt("speaker"), speech_span=span,
                        phoneme_durations=opt("phoneme_durations"))  # fmt: skip


def _read_parquet(data: bytes, source: str) -> ClipFeatures:
    import pyarrow.parquet as pq

    from vssflow.data.schema import row_to_features, table_to_rows

    try:
        rows = table_to_rows(pq.read_table(io.BytesIO(data)))
    except Exception as e:  # noqa: BLE001 - any parse failure is the client's file
        raise FeaturesFileError(f"not a vssflow shard row ({type(e).__name__})", source=source) from e
    if len(rows) != 1:
        raise FeaturesFileError(f"the Parquet file has {len(rows)} rows; send exactly one", source=source)
    try:
        f = row_to_features(rows[0])
    except Exception as e:  # noqa: BLE001
        raise FeaturesFileError(f"not a vssflow shard row ({type(e).__name__})", source=source) from e
    f.mel = None
    return f
