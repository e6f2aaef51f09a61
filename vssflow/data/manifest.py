"""The one manifest format: one row per clip, as JSON Lines (``.jsonl``) or CSV (``.csv``).

The schema is documented in ``docs/manifest.md``. Paths in a manifest are relative to the manifest's own directory
(absolute paths are allowed too); :func:`read_manifest` resolves them and refuses any path that leaves the allowed
roots (default: the manifest's directory) with :class:`PathEscapeError`. Every validation error is a
:class:`ManifestError` naming the line and the field.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from vssflow.constants import SPEECH_TASKS, TASKS
from vssflow.errors import ManifestError, PathEscapeError
from vssflow.files import write_text_atomic

SCHEMA_VERSION = 1
FROM_VIDEO = "from_video"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Event:
    """A sound event: its onset time in seconds (relative to the clip's ``start``) and its class name."""

    time: float
    cls: str


@dataclass(frozen=True)
class TimedLabel:
    """A phoneme or word with its [start, end) in seconds, relative to the clip's ``start``."""

    label: str
    start: float
    end: float


def timed_triples(labels) -> list[tuple[str, float, float]]:
    """(label, start, end) of timed labels given as :class:`TimedLabel` objects or ``[label, start, end]`` lists
    (a manifest row's ``phonemes``/``words`` before or after parsing, or their JSON)."""
    out = []
    for item in labels or ():
        label, start, end = (item.label, item.start, item.end) if hasattr(item, "label") else tuple(item)[:3]
        out.append((str(label), float(start), float(end)))
    return out


@dataclass(frozen=True)
class ManifestRow:
    """One clip. Paths are absolute after :func:`read_manifest`; relative ones are written relative to the manifest.

    ``audio`` is a path or ``"from_video"`` (use the video's own audio track); ``end`` ``None`` means the end of
    the file. ``stems`` maps a source name ("speech", "sound") to a wav path. ``extra`` keeps unknown columns.
    """

    clip_id: str
    video: str
    task: str
    audio: str = FROM_VIDEO
    start: float = 0.0
    end: float | None = None
    transcript: str | None = None
    speaker_id: str | None = None
    reference_audio: str | None = None
    split: str = "train"
    licence: str = ""
    source: str = ""
    events: tuple[Event, ...] = ()
    phonemes: tuple[TimedLabel, ...] | None = None
    words: tuple[TimedLabel, ...] | None = None
    stems: dict[str, str] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start


COLUMNS = [f.name for f in fields(ManifestRow) if f.name != "extra"]
_PATH_FIELDS = ("video", "audio", "reference_audio")
_JSON_FIELDS = ("events", "phonemes", "words", "stems")


# ---------------------------------------------------------------------------------------------- to / from dicts
def row_to_dict(row: ManifestRow, base: Path | None = None) -> dict:
    """A JSON-ready dict; paths under ``base`` are written relative to it."""

    def rel(p: str | None) -> str | None:
        if p is None or p == FROM_VIDEO or base is None:
            return p
        try:
            return os.path.relpath(p, base) if Path(p).is_absolute() and _inside(Path(p), [base]) else p
        except ValueError:
            return p

    d = {
        "clip_id": row.clip_id,
        "video": rel(row.video),
        "audio": rel(row.audio),
        "start": row.start,
        "end": row.end,
        "task": row.task,
        "transcript": row.transcript,
        "speaker_id": row.speaker_id,
        "reference_audio": rel(row.reference_audio),
        "split": row.split,
        "licence": row.licence,
        "source": row.source,
        "events": [{"time": e.time, "class": e.cls} for e in row.events],
        "phonemes": None if row.phonemes is None else [[p.label, p.start, p.end] for p in row.phonemes],
        "words": None if row.words is None else [[w.label, w.start, w.end] for w in row.words],
        "stems": None if row.stems is None else {k: rel(v) for k, v in row.stems.items()},
    }
    d.update(row.extra)
    return d


def _err(where: str, fieldname: str, msg: str) -> ManifestError:
    return ManifestError(f"{fieldname}: {msg}", source=where)


def _float(v, where: str, name: str, *, optional: bool = False) -> float | None:
    if v is None or v == "":
        if optional:
            return None
        raise _err(where, name, "missing; give a number of seconds")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise _err(where, name, f"{v!r} is not a number of seconds") from None
    if not x >= 0 or x == float("inf"):
        raise _err(where, name, f"{x} must be a finite number >= 0")
    return x


def _timed(v, where: str, name: str) -> tuple[TimedLabel, ...] | None:
    if v is None or v == "":
        return None
    try:
        out = []
        for item in v:
            if isinstance(item, dict):
                item = [item["label"], item["start"], item["end"]]
            lab, s, e = item
            out.append(TimedLabel(str(lab), float(s), float(e)))
        return tuple(out)
    except (TypeError, ValueError, KeyError):
        raise _err(where, name, "must be a list of [label, start, end]") from None


def row_from_dict(d: dict, where: str = "row") -> ManifestRow:
    """Validate one raw row (JSON object or CSV record with JSON cells). ``where`` names it in errors."""
    if not isinstance(d, dict):
        raise _err(where, "row", "must be a JSON object")
    d = dict(d)
    for name in _JSON_FIELDS + ("extra",):
        v = d.get(name)
        if isinstance(v, str):
            if v.strip() == "":
                d[name] = None
                continue
            try:
                d[name] = json.loads(v)
            except json.JSONDecodeError:
                raise _err(where, name, "is not valid JSON") from None
    for name in ("clip_id", "video", "task"):
        if not isinstance(d.get(name), str) or not d[name].strip():
            raise _err(where, name, "missing or empty; every row needs clip_id, video and task")
    task = d["task"]
    if task not in TASKS:
        raise _err(where, "task", f"{task!r} is not one of {', '.join(TASKS)}")
    split = d.get("split") or "train"
    if split not in SPLITS:
        raise _err(where, "split", f"{split!r} is not one of {', '.join(SPLITS)}")
    start = _float(d.get("start", 0.0) if d.get("start") not in (None, "") else 0.0, where, "start")
    end = _float(d.get("end"), where, "end", optional=True)
    if end is not None and end <= start:
        raise _err(where, "end", f"{end} must be greater than start {start}")
    transcript = d.get("transcript") or None
    if transcript is not None and not isinstance(transcript, str):
        raise _err(where, "transcript", "must be a string")
    if task in SPEECH_TASKS and not (transcript and transcript.strip()):
        raise _err(where, "transcript", f"task {task!r} needs a non-empty transcript")
    events_raw = d.get("events") or []
    events = []
    try:
        for e in events_raw:
            events.append(Event(float(e["time"]), str(e["class"])))
    except (TypeError, ValueError, KeyError):
        raise _err(where, "events", 'must be a list of {"time": seconds, "class": name}') from None
    stems = d.get("stems") or None
    if stems is not None and not (isinstance(stems, dict) and all(isinstance(v, str) for v in stems.values())):
        raise _err(where, "stems", 'must be an object {"speech": path, "sound": path}')
    known = set(COLUMNS)
    extra = {k: v for k, v in d.items() if k not in known and k != "extra"}
    if isinstance(d.get("extra"), dict):
        extra.update(d["extra"])
    return ManifestRow(
        clip_id=d["clip_id"].strip(),
        video=d["video"],
        task=task,
        audio=d.get("audio") or FROM_VIDEO,
        start=start,
        end=end,
        transcript=transcript,
        speaker_id=(str(d["speaker_id"]) if d.get("speaker_id") not in (None, "") else None),
        reference_audio=d.get("reference_audio") or None,
        split=split,
        licence=str(d.get("licence") or ""),
        source=str(d.get("source") or ""),
        events=tuple(events),
        phonemes=_timed(d.get("phonemes"), where, "phonemes"),
        words=_timed(d.get("words"), where, "words"),
        stems=stems,
        extra=extra,
    )


# ---------------------------------------------------------------------------------------------- paths
def _real(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _inside(p: Path, roots: Sequence[Path]) -> bool:
    rp = _real(p)
    return any(rp == _real(r) or rp.is_relative_to(_real(r)) for r in roots)


def resolve_path(value: str, base: Path, roots: Sequence[Path], where: str, name: str) -> str:
    """Resolve ``value`` against ``base``; raise PathEscapeError when it lands outside every root.

    Returns the real path (symlinks resolved, then ``..``), the one that was checked: a lexically normalised path
    would differ from it when a symlink precedes ``..`` (``link/../x`` with ``link -> a/b`` is ``a/x``, not ``x``),
    and ``in-root-link/../../secret`` would pass the check and then open a file outside the root.
    """
    p = Path(value)
    p = p if p.is_absolute() else base / p
    if not _inside(p, roots):
        allowed = ", ".join(str(r) for r in roots)
        raise PathEscapeError(
            f"{name}: {value!r} resolves outside the allowed roots ({allowed}); move the file there or pass it "
            "in allowed_roots",
            source=where,
        )
    return str(_real(p))


def resolve_row(row: ManifestRow, base: Path, roots: Sequence[Path], where: str) -> ManifestRow:
    changes = {}
    for name in _PATH_FIELDS:
        v = getattr(row, name)
        if v is not None and v != FROM_VIDEO:
            changes[name] = resolve_path(v, base, roots, where, name)
    if row.stems:
        changes["stems"] = {k: resolve_path(v, base, roots, where, f"stems.{k}") for k, v in row.stems.items()}
    return replace(row, **changes)


# ---------------------------------------------------------------------------------------------- read / write
def _records(path: Path) -> Iterable[tuple[int, dict]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "clip_id" not in reader.fieldnames:
            raise ManifestError(
                "line 1: the CSV header must name the columns (clip_id, video, task, ...)", source=str(path)
            )
        for rec in reader:
            # an empty cell in an extra column means "not set for this row"
            rec = {k: v for k, v in rec.items() if k is not None and (k in COLUMNS or v != "")}
            for k, v in rec.items():  # extra columns hold JSON values (plain text is kept as text)
                if k not in COLUMNS and isinstance(v, str):
                    try:
                        rec[k] = json.loads(v)
                    except json.JSONDecodeError:
                        pass
            yield reader.line_num, rec
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"line {n}: not valid JSON ({e.msg})", source=str(path)) from None


def read_manifest(
    path: str | os.PathLike, *, allowed_roots: Sequence[str | os.PathLike] | None = None
) -> list[ManifestRow]:
    """Read and validate a manifest (``.jsonl`` or ``.csv``); return rows with absolute, checked paths.

    Args:
        path: the manifest file.
        allowed_roots: directories the clip paths may live in; default only the manifest's directory.

    Raises:
        MissingFileError / ManifestError (line and field named) / PathEscapeError.
    """
    from vssflow.errors import EmptyFileError, MissingFileError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError("manifest not found; check the path", source=str(path))
    base = path.resolve().parent
    roots = [Path(r).resolve() for r in allowed_roots] if allowed_roots else [base]
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for line, rec in _records(path):
        where = f"{path}:{line}"
        row = row_from_dict(rec, where)
        if row.clip_id in seen:
            raise _err(
                where, "clip_id", f"{row.clip_id!r} already used on line {seen[row.clip_id]}; ids must be unique"
            )
        seen[row.clip_id] = line
        rows.append(resolve_row(row, base, roots, where))
    if not rows:
        raise EmptyFileError("manifest has no rows; add one JSON object (or CSV record) per clip", source=str(path))
    return rows


def write_manifest(rows: Sequence[ManifestRow], path: str | os.PathLike) -> Path:
    """Write rows atomically as JSONL or CSV (by suffix); paths under the manifest's directory become relative."""
    path = Path(path)
    base = path.resolve().parent
    dicts = [row_to_dict(r, base) for r in rows]
    if path.suffix.lower() == ".csv":
        extra_cols = sorted({k for d in dicts for k in d} - set(COLUMNS))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS + extra_cols, lineterminator="\n")
        w.writeheader()
        for d in dicts:
            out = {}
            for k in COLUMNS + extra_cols:
                v = d.get(k)
                if v is None:
                    out[k] = ""
                elif k in _JSON_FIELDS or k not in COLUMNS:  # extra columns hold JSON values
                    out[k] = json.dumps(v, ensure_ascii=False)
                else:
                    out[k] = v
            w.writerow(out)
        text = buf.getvalue()
    else:
        text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dicts)
    write_text_atomic(path, text)
    return path
