"""Crash injection for the durability tests: kill -9 a writer before each of its filesystem steps, one run per step.

:func:`kill_at_every_step` runs ``action`` in a forked child that counts its filesystem mutations (mkdir, open for
writing, write through safetensors, fsync, rename/replace, symlink, unlink, rmdir...) and sends itself SIGKILL just
before the k-th one; k runs 1, 2, 3... until the action completes without reaching k. Nothing in the library knows
about this: the child wraps the ``os``/``builtins`` functions (and any ``extra`` callables, e.g. a module's
``save_file``) after the fork, so the parent process is untouched and checks what a crash at that step left.
"""

from __future__ import annotations

import builtins
import io
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence

_OS_MUTATIONS = ("mkdir", "rename", "replace", "symlink", "fsync", "unlink", "remove", "rmdir", "ftruncate", "pwrite")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install(k: int, extra: Sequence[tuple[object, str]]) -> None:
    """In the child: SIGKILL this process just before its k-th filesystem mutation."""
    count = [0]

    def step() -> None:
        count[0] += 1
        if count[0] >= k:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(fn, is_mutation=lambda *a, **kw: True):
        def wrapped(*args, **kwargs):
            if is_mutation(*args, **kwargs):
                step()
            return fn(*args, **kwargs)

        return wrapped

    for name in _OS_MUTATIONS:
        setattr(os, name, wrap(getattr(os, name)))
    os.open = wrap(os.open, lambda path, flags, *a, **kw: bool(flags & _WRITE_FLAGS))
    writes = lambda file, mode="r", *a, **kw: any(c in mode for c in "wax+")  # noqa: E731
    builtins.open = io.open = wrap(builtins.open, writes)
    for owner, name in extra:
        setattr(owner, name, wrap(getattr(owner, name)))


def kill_at_every_step(
    action: Callable[[], None],
    *,
    before: Callable[[], None] = lambda: None,
    extra: Sequence[tuple[object, str]] = (),
    first: int = 1,
    timeout_s: float = 120.0,
) -> Iterator[int]:
    """Yield k after a child running ``action`` was killed before its k-th filesystem step (k = 1, 2, ...).

    ``before()`` runs in the parent before each child (reset the state the action starts from). Ends when a child
    completes ``action`` without being killed; a child that fails otherwise raises AssertionError. ``first``: the
    first step to kill at.
    """
    k = first - 1
    while True:
        k += 1
        before()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the test runner
            code = 0
            try:
                _install(k, extra)
                action()
            except BaseException:  # noqa: BLE001 - reported through the exit code
                import traceback

                traceback.print_exc()
                code = 3
            os._exit(code)
        deadline = time.monotonic() + timeout_s
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"the writer hung at step {k}")
            time.sleep(0.01)
        status = done[1]
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            yield k
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return
        else:
            raise AssertionError(f"the writer failed at step {k} (status {status}), not by the injected kill")
