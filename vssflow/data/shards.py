"""Shard sets on disk: versioned directories, atomic shard files and the ``_manifest.json`` of complete shards.

Layout of ``vssflow preprocess MANIFEST --out OUT``::

    OUT/LATEST                      name of the newest version directory (written atomically)
    OUT/v1-<confighash>/            one directory per (schema version, preprocessing config hash): never mixed
        _manifest.json              complete shards: file, task, bucket, rows, bytes, sha256 (+ the config)
        v2s-2s-<id>.parquet         one task and one duration bucket per shard; <id> hashes its clip ids
        quarantine/q-<id>.parquet   rows that failed, with stage, reason and message

``OUT`` is a local directory or an ``s3://``/``gs://`` URI (:mod:`vssflow.storage`); paths here are
:class:`~vssflow.storage.Location` objects (a local one is also ``os.PathLike``).

Invariants: a shard file appears only complete (written to a hidden temporary name in the same directory, then
``os.replace``d locally, or copied server-side to its final key on an object store: see :mod:`vssflow.storage`);
readers use only the shards listed in ``_manifest.json``; a clip appears in at most one listed file (data or
quarantine). A shard renamed into place but not yet listed when the job died is *adopted* by
:func:`recover` on the next run (it is complete by construction), unless it overlaps listed shards, then deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from vssflow.data.schema import META, SCHEMA_VERSION
from vssflow.errors import InputError, MissingFileError
from vssflow.storage import TMP_MARK, Location, location

__all__ = [
    "MANIFEST_NAME",
    "QUARANTINE_DIR",
    "config_hash",
    "version_dir",
    "resolve_shard_dir",
    "set_latest",
    "shard_name",
    "write_table_atomic",
    "ShardManifest",
    "check_shards",
    "recover",
    "done_clip_ids",
]

MANIFEST_NAME = "_manifest.json"
QUARANTINE_DIR = "quarantine"
LATEST_NAME = "LATEST"


def config_hash(config: dict) -> str:
    """Stable 16-hex-digit hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def version_dir(out: str | os.PathLike | Location, cfg_hash: str) -> Location:
    """``out/v<schema>-<hash>``: where shards of this config live."""
    return location(out) / f"v{SCHEMA_VERSION}-{cfg_hash}"


def set_latest(out: str | os.PathLike | Location, vdir: Location) -> None:
    """Point ``out/LATEST`` at ``vdir`` (atomic)."""
    (location(out) / LATEST_NAME).write_text_atomic(vdir.name + "\n")


def resolve_shard_dir(path: str | os.PathLike | Location) -> Location:
    """A version directory (has ``_manifest.json``) from itself or from the ``--out`` root (via ``LATEST``)."""
    p = location(path)
    if (p / MANIFEST_NAME).is_file():
        return p
    latest = p / LATEST_NAME
    if latest.is_file():
        v = p / latest.read_text().strip()
        if (v / MANIFEST_NAME).is_file():
            return v
    raise MissingFileError(
        f"no shard set here (no {MANIFEST_NAME}, no {LATEST_NAME}); give the --out directory of `vssflow preprocess`",
        source=str(p),
    )


def shard_name(task: str, bucket_s: float, clip_ids: Iterable[str]) -> str:
    """Deterministic file name: same task, bucket and clip set -> same name (a retried write replaces itself)."""
    digest = hashlib.sha1("\n".join(sorted(clip_ids)).encode()).hexdigest()[:16]
    return f"{task}-{bucket_s:g}s-{digest}.parquet"


def write_table_atomic(table: pa.Table, path: str | os.PathLike | Location, *, row_group_rows: int = 32) -> dict:
    """Write ``table`` as zstd Parquet to ``path`` (local or object store), atomically (:mod:`vssflow.storage`).

    The file is serialised in memory (a shard is tens of MB), hashed, then written through a temporary name.

    Returns:
        entry dict: file (name), rows, bytes, sha256.
    """
    path = location(path)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=max(1, row_group_rows), write_statistics=False)
    data = sink.getvalue().to_pybytes()
    path.write_bytes_atomic(data)
    return {"file": path.name, "rows": table.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


class ShardManifest:
    """``_manifest.json`` of one version directory: the complete data shards and quarantine files.

    Only the driver of a job writes it (atomically); workers write shard files and return their entries.
    """

    def __init__(self, vdir: str | os.PathLike | Location, *, config_hash: str = "", config: dict | None = None):
        self.vdir = location(vdir)
        self.path = self.vdir / MANIFEST_NAME
        self.data: dict = {
            "schema_version": SCHEMA_VERSION,
            "config_hash": config_hash,
            "config": config or {},
            "extractors": {},
            "shards": [],
            "quarantine": [],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
            if config_hash and self.data.get("config_hash") != config_hash:
                raise InputError(
                    f"holds shards of config {self.data.get('config_hash')}, not {config_hash}; use another --out",
                    source=str(self.path),
                )

    @property
    def shards(self) -> list[dict]:
        return self.data["shards"]

    @property
    def quarantine(self) -> list[dict]:
        return self.data["quarantine"]

    def files(self) -> set[str]:
        """Relative paths of every listed file (data and quarantine)."""
        return {e["file"] for e in self.shards} | {e["file"] for e in self.quarantine}

    def add(self, entry: dict, *, kind: str = "data") -> None:
        """List a complete file (``entry["file"]`` relative to the version directory); replaces a same-name entry."""
        entries = self.shards if kind == "data" else self.quarantine
        entries[:] = [e for e in entries if e["file"] != entry["file"]]
        entries.append({k: v for k, v in entry.items() if k != "clip_ids"})

    def save(self) -> None:
        self.data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.data["rows"] = sum(e["rows"] for e in self.shards)
        self.data["quarantined"] = sum(e["rows"] for e in self.quarantine)
        self.path.write_text_atomic(json.dumps(self.data, indent=1, sort_keys=True) + "\n")

    def shard_paths(self) -> list[Location]:
        """Absolute paths of the listed data shards, in a stable order."""
        return [self.vdir / e["file"] for e in sorted(self.shards, key=lambda e: e["file"])]

    def verify(self) -> list[str]:
        """Problems found (missing file, checksum mismatch, a clip in two files); empty when the set is sound."""
        problems, seen = [], {}
        for e in self.shards + self.quarantine:
            p = self.vdir / e["file"]
            if (problem := _file_problem(p, e)) is not None:
                problems.append(f"{e['file']}: {problem}")
                if not p.is_file():
                    continue
            for cid in _clip_ids(p):
                if cid in seen:
                    problems.append(f"{cid}: in {seen[cid]} and {e['file']}")
                seen[cid] = e["file"]
        return problems


def check_shards(manifest: ShardManifest, entries: Iterable[dict] | None = None) -> None:
    """Check that the listed data shards (or ``entries`` of them) are on disk with the bytes listed: size, then
    sha256. Training and evaluation call this when they open a shard set, before reading any row.

    Raises:
        InputError naming the first missing or corrupt shard, in one line.
    """
    for e in manifest.shards if entries is None else entries:
        p = manifest.vdir / e["file"]
        if (problem := _file_problem(p, e)) is not None:
            raise InputError(
                f"{problem}; delete it and re-run `vssflow preprocess` with the same --out (it redoes only the clips "
                "of missing shards)",
                source=str(p),
            )


def _file_problem(p: Location, e: dict) -> str | None:
    if not p.is_file():
        return f"listed in {MANIFEST_NAME} but missing"
    if "bytes" in e and p.size() != int(e["bytes"]):
        return f"corrupt shard: {p.size()} bytes, {MANIFEST_NAME} lists {e['bytes']}"
    if (actual := p.sha256()) != e["sha256"]:
        return f"corrupt shard: sha256 {actual[:12]}... is not the {e['sha256'][:12]}... in {MANIFEST_NAME}"
    return None


def _clip_ids(path: Location) -> list[str]:
    return _read_table(path, columns=["clip_id"]).column(0).to_pylist()


def _read_table(path: Location, columns: list[str] | None = None) -> pa.Table:
    with path.open_input() as f:
        return pq.read_table(f, columns=columns)


def _candidates(vdir: Location) -> list[tuple[Location, str]]:
    out = [(p, "data") for p in vdir.glob("*.parquet")]
    out += [(p, "quarantine") for p in (vdir / QUARANTINE_DIR).glob("*.parquet")]
    return [(p, k) for p, k in out if not p.name.startswith(".")]


def recover(manifest: ShardManifest) -> dict:
    """Make a version directory consistent after a crash, before a rerun.

    Deletes leftover temporary files; adopts complete shard files that the dead job renamed but did not list
    (same config hash, readable, no clip already listed); deletes the others. Saves the manifest when it changed.

    Returns:
        counts: {"temp_removed", "adopted", "deleted"}.
    """
    vdir = manifest.vdir
    counts = {"temp_removed": 0, "adopted": 0, "deleted": 0}
    for d in (vdir, vdir / QUARANTINE_DIR):
        for p in d.glob(f".*{TMP_MARK}*"):
            p.unlink(missing_ok=True)
            counts["temp_removed"] += 1
    listed = manifest.files()
    done = done_clip_ids(manifest)
    for path, kind in _candidates(vdir):
        rel = path.relative_to(vdir)
        if rel in listed:
            continue
        try:
            with path.open_input() as f:
                md = {k.decode(): v.decode() for k, v in (pq.read_schema(f).metadata or {}).items()}
            same = kind == "quarantine" or md.get(META["config_hash"]) == manifest.data["config_hash"]
            ids = _clip_ids(path)
        except Exception:  # unreadable: cannot be ours complete, remove it
            same, ids = False, []
        if same and not (set(ids) & done):
            entry = {"file": rel, "rows": len(ids), "bytes": path.size(), "sha256": path.sha256()}
            if kind == "data":
                entry.update(task=md.get(META["task"]), bucket_s=float(md.get(META["bucket_s"], 0) or 0))
            manifest.add(entry, kind=kind)
            done |= set(ids)
            counts["adopted"] += 1
        else:
            path.unlink(missing_ok=True)
            counts["deleted"] += 1
    if counts["adopted"] or counts["deleted"]:
        manifest.save()
    return counts


def done_clip_ids(manifest: ShardManifest) -> set[str]:
    """Clip ids present in listed files (written or quarantined): a rerun skips them."""
    ids: set[str] = set()
    for e in manifest.shards + manifest.quarantine:
        p = manifest.vdir / e["file"]
        if p.is_file():
            ids.update(_clip_ids(p))
    return ids
