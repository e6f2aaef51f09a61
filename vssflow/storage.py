"""Local paths and object-store URIs (``s3://``, ``gs://``) behind one small path type, over pyarrow filesystems.

Shards, their ``_manifest.json`` and Ray Train's checkpoints live wherever the user points ``--out``/``--data``/
``--storage``: a local (or mounted) directory, or a bucket. :func:`location` turns either into a
:class:`Location`, a pathlib-like handle (``/``, ``name``, ``is_file``, ``read_text``, ``glob``...) on a
``pyarrow.fs.FileSystem``. A local :class:`Location` is also ``os.PathLike``, so code that takes paths keeps working.

Object stores:

* **S3 and S3-compatible servers (MinIO).** Credentials are the AWS SDK's usual ones (``AWS_ACCESS_KEY_ID``/
  ``AWS_SECRET_ACCESS_KEY``, a profile, an instance role). The endpoint of a non-AWS server comes from the URI
  (``s3://bucket/key?endpoint_override=host:9000&scheme=http``, pyarrow's own syntax) or else from the standard
  ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` environment variables (e.g. ``http://minio:9000``).
* **GCS** through pyarrow's ``GcsFileSystem`` (application default credentials).

Atomic writes (the project's rule: a reader sees the old object or the whole new one, never half of it). On a local
filesystem: a hidden temporary file in the same directory, fsynced, then ``os.replace``, then the directory fsynced.
On an object store there is no rename, so the bytes go to a hidden temporary key (``.<name>.tmp-<id>``) and are then
**copied server-side** to the final key and the temporary key deleted (``FileSystem.move``): the final key is only
ever created by a copy of a complete object, which S3 and GCS make visible atomically. Readers never list temporary
names (they read only what a ``_manifest.json`` lists), and :func:`vssflow.data.shards.recover` deletes temporary
keys a killed job left behind.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pyarrow.fs as pafs

from vssflow.files import fsync_dir

__all__ = ["Location", "location", "is_uri", "TMP_MARK"]

TMP_MARK = ".tmp-"  # temporary names are ".<final name>.tmp-<8 hex>"
_SCHEMES = ("s3", "gs", "gcs")


def is_uri(target: str | os.PathLike) -> bool:
    """True for ``s3://``, ``gs://`` (and ``gcs://``) URIs; False for local paths and ``file://``."""
    return isinstance(target, str) and urlparse(target).scheme in _SCHEMES


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, bucket: str, query: str, endpoint: str) -> pafs.FileSystem:
    """One filesystem per (scheme, bucket, options, endpoint): pyarrow resolves an S3 bucket's region once."""
    if scheme != "s3" or not endpoint or "endpoint_override" in parse_qs(query):
        return pafs.FileSystem.from_uri(f"{scheme}://{bucket}/" + (f"?{query}" if query else ""))[0]
    ep = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return pafs.S3FileSystem(endpoint_override=ep.netloc, scheme=ep.scheme, region=region)


def location(target: str | os.PathLike | Location) -> Location:
    """A :class:`Location` for a local path, a ``file://`` URI or an ``s3://``/``gs://`` URI."""
    if isinstance(target, Location):
        return target
    if not is_uri(target):
        text = os.fspath(target)
        if text.startswith("file://"):
            text = urlparse(text).path
        return Location(pafs.LocalFileSystem(), str(Path(text).expanduser().resolve()))
    u = urlparse(target)
    scheme = "gs" if u.scheme == "gcs" else u.scheme
    endpoint = ""
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    fs = _filesystem(scheme, u.netloc, u.query, endpoint)
    return Location(fs, f"{u.netloc}{u.path}".rstrip("/"), scheme=scheme, query=u.query)


@dataclass(frozen=True)
class Location:
    """A file or directory on a pyarrow filesystem (``path`` is the filesystem's own, without a scheme)."""

    fs: pafs.FileSystem
    path: str
    scheme: str = ""  # "" for local
    query: str = ""  # URI options kept for display and for Ray (endpoint_override=...)

    # ---- naming
    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def uri(self) -> str:
        """What to print or pass on: the absolute local path, or ``scheme://bucket/key[?options]``."""
        if self.is_local:
            return self.path
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        if not self.is_local:  # a local-only API (open(), os.*) given a bucket: fail loudly, not on a wrong path
            raise TypeError(f"{self.uri} is not a local path")
        return self.path

    def __truediv__(self, part: str) -> Location:
        return Location(self.fs, f"{self.path.rstrip('/')}/{str(part).strip('/')}", self.scheme, self.query)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.fs, self.path.rstrip("/").rsplit("/", 1)[0] or "/", self.scheme, self.query)

    def relative_to(self, other: Location) -> str:
        base = other.path.rstrip("/") + "/"
        if not self.path.startswith(base):
            raise ValueError(f"{self.uri} is not under {other.uri}")
        return self.path[len(base) :]

    # ---- queries
    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def size(self) -> int:
        return int(self.fs.get_file_info(self.path).size or 0)

    def iterdir(self) -> list[Location]:
        """Entries directly in this directory, sorted by name; [] if it does not exist."""
        sel = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        return [self / n for n in sorted(i.path.rstrip("/").rsplit("/", 1)[-1] for i in self.fs.get_file_info(sel))]

    def glob(self, pattern: str) -> list[Location]:
        """Entries directly in this directory whose name matches ``pattern`` (fnmatch), sorted; [] if absent."""
        return [p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern)]

    # ---- reading
    def open_input(self):
        """A random-access pyarrow file (for ``pq.ParquetFile``)."""
        return self.fs.open_input_file(self.path)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def sha256(self) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(self.path) as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()

    # ---- writing
    def mkdir(self) -> None:
        """Create the directory and its parents (object stores have no directories: nothing to do)."""
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def unlink(self, missing_ok: bool = True) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def temp_sibling(self) -> Location:
        """A hidden temporary name beside this one, ``.<name>.tmp-<id>`` (never read as data)."""
        return self.parent / f".{self.name}{TMP_MARK}{uuid.uuid4().hex[:8]}"

    def write_bytes_atomic(self, data: bytes) -> None:
        """Make this file hold ``data``, atomically (see the module docstring): temporary name, then replace/copy."""
        self.parent.mkdir()
        tmp = self.temp_sibling()
        try:
            if self.is_local:
                with open(tmp.path, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp.path, self.path)
                fsync_dir(self.parent.path)  # the new name survives a power cut too
            else:
                with self.fs.open_output_stream(tmp.path) as f:
                    f.write(data)
                self.fs.move(tmp.path, self.path)  # S3/GCS: server-side copy to the final key, then delete tmp
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_bytes(self, data: bytes) -> None:
        """Plain (non-atomic) write, as ``Path.write_bytes``."""
        self.parent.mkdir()
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def write_text_atomic(self, text: str) -> None:
        self.write_bytes_atomic(text.encode("utf-8"))
