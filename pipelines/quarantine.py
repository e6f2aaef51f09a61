"""Quarantine: rows that fail a preprocessing stage are recorded, not fatal.

A failed row becomes a record (clip id, stage, reason, error type, one-line message) carried through the rest of
the pipeline and written to ``<version dir>/quarantine/q-<id>.parquet`` (schema: :func:`vssflow.data.schema.
quarantine_schema`). ``reason`` is the :class:`vssflow.errors.InputError` tag (``bad_video``, ``no_audio_track``,
...); anything else is ``internal_error`` so that a bug shows up in the summary instead of killing a long job.

Also here: a *lenient* manifest reader, so that one malformed line is quarantined (stage ``manifest``) instead of
rejecting the whole manifest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from vssflow.data.manifest import resolve_row, row_from_dict
from vssflow.data.schema import quarantine_schema
from vssflow.data.shards import QUARANTINE_DIR, write_table_atomic
from vssflow.errors import InputError, ManifestError, MissingFileError
from vssflow.storage import Location, location

ERROR_KEYS = ("error_stage", "error_reason", "error_type", "error_message")


def error_fields(stage: str, err: BaseException) -> dict:
    """The error columns of a failed row (``reason`` from InputError, else ``internal_error``)."""
    reason = err.reason if isinstance(err, InputError) else "internal_error"
    msg = (str(err).strip().splitlines() or [type(err).__name__])[0][:500]
    return {"error_stage": stage, "error_reason": reason, "error_type": type(err).__name__, "error_message": msg}


def record(row: dict) -> dict:
    """Quarantine record of a failed clip dict."""
    return {
        "clip_id": str(row.get("clip_id", "")),
        "stage": str(row["error_stage"]),
        "reason": str(row["error_reason"]),
        "error_type": str(row["error_type"]),
        "message": str(row["error_message"]),
        "video": str(row.get("video", "")) or None,
        "task": str(row.get("task", "")) or None,
        "node": str(row.get("encode_node") or row.get("decode_node") or "") or None,
    }


def write_quarantine(records: list[dict], vdir: str | Path | Location) -> dict:
    """Write records as one quarantine file (atomic); return its ``_manifest.json`` entry."""
    ids = sorted(r["clip_id"] for r in records)
    name = "q-" + hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16] + ".parquet"
    schema = quarantine_schema()
    table = pa.Table.from_pylist(records, schema=schema)
    entry = write_table_atomic(table, location(vdir) / QUARANTINE_DIR / name)
    entry["file"] = f"{QUARANTINE_DIR}/{name}"
    entry["kind"] = "quarantine"
    entry["clip_ids"] = ids
    entry["reasons"] = dict(Counter(r["reason"] for r in records))
    return entry


def read_manifest_lenient(path: str | Path, *, allowed_roots: list[str] | None = None) -> tuple[list, list[dict]]:
    """Read a manifest (.jsonl or .csv), keeping going past bad lines.

    Returns:
        (rows, records): valid ManifestRows with resolved paths, and quarantine records of the bad lines
        (stage "manifest"; a line without a usable clip_id is named ``line:<n>``; a repeated clip_id is bad).

    Raises:
        MissingFileError when the manifest itself is missing; ManifestError when it has no line at all.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("manifest not found; check the path", source=str(path))
    base = path.resolve().parent
    roots = [Path(r).resolve() for r in allowed_roots] if allowed_roots else [base]
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        raw = [(i + 2, json.dumps(rec)) for i, rec in enumerate(reader)]
    else:
        raw = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    rows, bad, seen = [], [], set()
    for n, line in raw:
        where = f"{path}:{n}"
        cid = f"line:{n}"
        try:
            rec = json.loads(line)
            if isinstance(rec, dict) and isinstance(rec.get("clip_id"), str) and rec["clip_id"].strip():
                cid = rec["clip_id"].strip()
            if cid in seen:
                first = cid
                cid = f"{cid}#line:{n}"  # the record needs an id of its own: a clip is in one file only
                raise ManifestError(f"clip_id: {first!r} is used twice; ids must be unique", source=where)
            seen.add(cid)
            rows.append(resolve_row(row_from_dict(rec, where), base, roots, where))
        except Exception as e:  # noqa: BLE001 - any bad line is quarantined
            err = e if isinstance(e, InputError) else ManifestError(f"not valid JSON ({e})", source=where)
            bad.append(record({"clip_id": cid, **error_fields("manifest", err)}))
    if not raw:
        raise ManifestError("manifest has no rows; add one JSON object (or CSV record) per clip", source=str(path))
    return rows, bad
