"""Small file helpers shared by the library: content hashes and atomic text writes.

"Atomic" here is the project's rule for anything a reader may see: write a hidden temporary file in the target's
directory, then ``os.replace`` it over the target, so a reader finds the old file or the whole new one, never half.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **open_kw) -> Iterator[IO]:
    """Open a hidden temporary file beside ``path`` for writing; on a clean exit it replaces ``path``, on an error
    it is removed (the parent is created). Text modes default to UTF-8 with no newline translation."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "b" not in mode:
        open_kw = {"encoding": "utf-8", "newline": "", **open_kw}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary name in the same directory; the parent is created."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)
