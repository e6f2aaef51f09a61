"""A clip's features as one file: what a client that preprocessed sends to ``POST /v1/generate/features``.

Two forms, told apart by their first bytes:

* ``.npz`` (``numpy.savez``, no pickles): ``duration_s`` (scalar), ``task`` (string), ``sem`` (T_sem, D) and the
  optional ``lip``, ``sync``, ``phonemes``, ``speaker``, ``speech_span`` (2,) seconds, ``phoneme_durations`` (P,);
  an empty array is the same as an absent one. :func:`features_to_npz` writes it.
* a one-row Parquet file of the shard schema (:mod:`vssflow.data.schema`); its target ``mel`` is dropped.

Compressed input is a decompression bomb until proven otherwise (100 MB of zeros deflate to ~100 KB): with
``max_bytes`` the sizes the file declares (each ``.npy`` header's shape and dtype and each zip entry's size; the
Parquet footer's row count and uncompressed column sizes) are checked before anything is unpacked.

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


class FeaturesTooLargeError(FeaturesFileError):
    """An uploaded features file that unpacks to more than allowed (HTTP 413)."""

    reason = "too_large"


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


def read_features_file(data: bytes, *, source: str = "features", max_bytes: int | None = None) -> ClipFeatures:
    """The clip of an uploaded ``.npz`` or one-row Parquet file.

    Args:
        data: the file's bytes.
        source: the upload's name in error messages.
        max_bytes: the most the file may unpack to, checked on its declared sizes before unpacking.

    Raises:
        FeaturesTooLargeError: it declares more than ``max_bytes`` unpacked.
        FeaturesFileError: unreadable, an unknown or missing array, a bad task, duration or span, not one row.
    """
    if data[:4] == _PARQUET_MAGIC:
        return _read_parquet(data, source, max_bytes)
    return _read_npz(data, source, max_bytes)


def _too_large(size: float, max_bytes: int, source: str) -> FeaturesTooLargeError:
    return FeaturesTooLargeError(f"unpacks to {size / 1e6:.1f} MB; at most {max_bytes / 1e6:g} MB are accepted "
                                 "(a clip's features are a few MB)", source=source)  # fmt: skip


def _check_npz_sizes(data: bytes, source: str, max_bytes: int) -> None:
    """Refuse a ``.npz`` whose entries declare more than ``max_bytes``, reading only the zip directory and the
    ``.npy`` headers (np.load would allocate each array's declared shape before reading it)."""
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > len(NPZ_REQUIRED) + len(NPZ_OPTIONAL):
                raise FeaturesFileError(f".npz has {len(infos)} entries; expected at most "
                                        f"{len(NPZ_REQUIRED) + len(NPZ_OPTIONAL)} arrays", source=source)  # fmt: skip
            declared = sum(i.file_size for i in infos)
            if declared > max_bytes:
                raise _too_large(declared, max_bytes, source)
            total = 0
            for info in infos:
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f, max_header_size=10_000)
                total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if total > max_bytes:
                    raise _too_large(total, max_bytes, source)
    except FeaturesFileError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged zip or .npy header is the client's file
        raise FeaturesFileError(f"not a readable .npz file ({type(e).__name__})", source=source) from e


def _read_npz(data: bytes, source: str, max_bytes: int | None) -> ClipFeatures:
    if max_bytes is not None:
        _check_npz_sizes(data, source, max_bytes)
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
    return _finite(ClipFeatures(duration_s=duration, task=task, sem=arrays["sem"], lip=opt("lip"), sync=opt("sync"),
                                phonemes=opt("phonemes"), speaker=opt("speaker"), speech_span=span,
                                phoneme_durations=opt("phoneme_durations")), source)  # fmt: skip


def _finite(f: ClipFeatures, source: str) -> ClipFeatures:
    """``f``, once every number in it is finite: a NaN or an infinity in a condition makes the model's audio NaN."""
    if not np.isfinite(f.duration_s):
        raise FeaturesFileError("duration_s is not a finite number", source=source)
    for k in ("sem", "lip", "sync", "phonemes", "speaker", "phoneme_durations"):
        a = getattr(f, k)
        if a is not None and np.asarray(a).dtype.kind in "fc" and not np.isfinite(a).all():
            raise FeaturesFileError(f"{k} has NaN or infinite values; send finite features", source=source)
    return f


_WIDTH = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8}


def _parquet_declared_bytes(meta) -> int:
    """An upper bound of what a Parquet file decodes to, from its footer. A column chunk's "uncompressed" size is
    after dictionary and run-length encoding (a million zeros are a few bytes of it), so fixed-width values count
    as values x width; a string column's values may each repeat a dictionary entry, so they count as values x the
    chunk's whole size (a one-row file has a handful)."""
    total = 0
    for r in range(meta.num_row_groups):
        rg = meta.row_group(r)
        for c in range(rg.num_columns):
            col = rg.column(c)
            if col.physical_type == "BYTE_ARRAY":
                total += col.total_uncompressed_size * max(1, col.num_values)
                continue
            fixed = col.physical_type == "FIXED_LEN_BYTE_ARRAY"
            width = meta.schema.column(c).length if fixed else _WIDTH.get(col.physical_type, 8)
            total += max(col.total_uncompressed_size, col.num_values * max(1, width))
    return total


def _read_parquet(data: bytes, source: str, max_bytes: int | None) -> ClipFeatures:
    import pyarrow.parquet as pq

    from vssflow.data.schema import row_to_features, table_to_rows

    try:
        meta = pq.ParquetFile(io.BytesIO(data)).metadata
    except Exception as e:  # noqa: BLE001 - any parse failure is the client's file
        raise FeaturesFileError(f"not a vssflow shard row ({type(e).__name__})", source=source) from e
    if meta.num_rows != 1:
        raise FeaturesFileError(f"the Parquet file has {meta.num_rows} rows; send exactly one", source=source)
    if max_bytes is not None:  # the footer's sizes, before any page is decompressed
        declared = _parquet_declared_bytes(meta)
        if declared > max_bytes:
            raise _too_large(declared, max_bytes, source)
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
    return _finite(f, source)
