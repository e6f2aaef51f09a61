"""Small file helpers shared by the library: content hashes, durable atomic writes, directory versions, locks.

"Atomic" here is the project's rule for anything a reader may see: write a hidden temporary file in the target's
directory, then ``os.replace`` it over the target, so a reader finds the old file or the whole new one, never half.
"Durable" adds the fsyncs that make the rename survive a power cut too: the file's bytes before the rename, the
directory entry after it.

A directory cannot be renamed over a non-empty one, so a directory that is replaced as a whole (a model directory)
is a *versioned directory behind a symlink*: ``models/tiny`` is a symlink to the hidden sibling
``models/.tiny.v-<time>-<id>``; :func:`staged_directory` writes a new version beside it, fsyncs it, and swaps the
symlink with one ``rename``. A kill at any moment leaves ``models/tiny`` naming the old version or the new one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from vssflow.errors import AssetError, InputError

VERSION_MARK = ".v-"  # a directory version is ".<name>.v-<time>-<id>" beside <name>
LINK_MARK = ".link-"  # a symlink being swapped in is ".<name>.link-<id>"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (the names created or renamed in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under ``root`` (``root`` included), files before their directories."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(dirpath)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **open_kw) -> Iterator[IO]:
    """Open a hidden temporary file beside ``path`` for writing; on a clean exit it is fsynced and replaces
    ``path`` (and the directory is fsynced), on an error it is removed (the parent is created). Text modes default
    to UTF-8 with no newline translation."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "b" not in mode:
        open_kw = {"encoding": "utf-8", "newline": "", **open_kw}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary name in the same directory; the parent is created."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


# ---- locks -------------------------------------------------------------------------------------------------------


@contextmanager
def exclusive_lock(path: str | os.PathLike, *, wait: bool = True, what: str = "another process") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    The kernel drops the lock when its holder dies (kill -9 included), so a crash never leaves a stale lock.

    Args:
        wait: block until the lock is free; else raise :class:`InputError` at once if another process holds it.
        what: who else would hold it, for the error message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 128, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(
                f"in use by {what} ({holder}; lock {path.name}); wait for it to finish or use another directory",
                source=str(path.parent),
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# ---- versioned directories ---------------------------------------------------------------------------------------


@contextmanager
def staged_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Write a directory that replaces ``target`` as a whole, in one atomic step.

    Yields a new, empty, hidden version directory beside ``target``; on a clean exit of the ``with`` block its files
    and directories are fsynced, ``target`` becomes a symlink to it (one ``rename`` of a new symlink over the old
    one; the parent directory is fsynced), and older versions and leftovers of killed writes are removed. On an
    error the new version is removed and ``target`` is untouched. Writers of one target take turns (a lock).

    A ``target`` that is a real directory (written before versions existed) is swapped for the symlink with Linux's
    ``renameat2(RENAME_EXCHANGE)``, also one atomic step; where that is missing (not Linux) it is moved aside first
    and a kill between the two renames would leave no ``target``.
    """
    target = Path(os.path.abspath(target))
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(parent / f".{target.name}.lock", what="another save of this directory"):
        stamp = time.strftime("%Y%m%dT%H%M%S")
        version = Path(tempfile.mkdtemp(prefix=f".{target.name}{VERSION_MARK}{stamp}-", dir=parent))
        try:
            yield version
            fsync_tree(version)
            fsync_dir(parent)
        except BaseException:
            shutil.rmtree(version, ignore_errors=True)
            raise
        _point(target, version)
        _remove_stale(target)


def _point(target: Path, version: Path) -> None:
    """Make ``target`` a symlink to ``version`` (a sibling) in one rename; fsync the parent."""
    parent = target.parent
    link = parent / f".{target.name}{LINK_MARK}{uuid.uuid4().hex[:8]}"
    os.symlink(version.name, link)  # relative: the pair can be moved or copied together
    if target.is_dir() and not target.is_symlink():
        if not _exchange(link, target):  # no atomic exchange here: move the old directory aside first
            os.rename(target, parent / f".{target.name}{LINK_MARK}{uuid.uuid4().hex[:8]}")
            os.rename(link, target)
    else:
        os.replace(link, target)
    fsync_dir(parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove_stale(target: Path) -> None:
    """Remove versions of ``target`` it no longer names, and what killed writes left (called under the lock)."""
    current = os.readlink(target) if target.is_symlink() else None
    for p in target.parent.glob(f".{target.name}.*"):
        name = p.name[len(target.name) + 1 :]
        if p.name == current or not (name.startswith(VERSION_MARK) or name.startswith(LINK_MARK)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    fsync_dir(target.parent)


def check_sha256(path: str | os.PathLike, expected: str | None, *, fix: str) -> None:
    """Raise a one-line :class:`~vssflow.errors.AssetError` naming ``path`` when its sha256 is not ``expected``
    (nothing to check when ``expected`` is None: files recorded before checksums were)."""
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise AssetError(f"{path}: sha256 {actual[:16]}... is not the {expected[:16]}... recorded; {fix}")
