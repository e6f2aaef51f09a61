"""Limits on what a client can make the HTTP front hold: body bytes, time, and places in the work queue.

* Bytes. ``Content-Length`` is only a claim, and a chunked upload has none: the body is counted at the ASGI
  ``receive`` that the multipart parser reads from, and the request stops with a 413 at the first message past the
  limit. File parts are spooled by the parser (1 MB in memory, then a temporary file), so what the ingress holds is
  bounded by the limit, whatever the client sends; uploads are then read from the spool in bounded chunks.
* Time. The whole body must arrive within ``body_timeout_s`` (408 after it), so a client that trickles bytes holds
  a connection for a bounded time and never a work slot; the work after the body (waiting for a slot, extraction,
  generation) has ``request_timeout_s`` (504 after it, and the remote calls still running are cancelled).
* Slots. A request takes one of ``max_inflight`` work slots only once its body is read; up to ``max_queued`` more
  wait for one; any further request gets 503 + Retry-After at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable

from pipelines.serve.forms import HTTPError

Receive = Callable[[], Awaitable[dict]]
# time.time() by which the request being handled must end (set once its body is read; a module attribute, read as
# ``limits.DEADLINE``: Serve pickles the ingress class by value, and a ContextVar does not pickle)
DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar("deadline")
READ_CHUNK = 1 << 20  # bytes read from a spooled upload at a time


def too_large(what: str, size: float, limit_mb: float) -> HTTPError:
    return HTTPError(413, "too_large", f"{what} is {size / 1e6:.1f} MB; at most {limit_mb:g} MB are accepted")


def limited_receive(receive: Receive, *, max_mb: float, timeout_s: float | None = None) -> Receive:
    """``receive`` that raises a 413 :class:`HTTPError` as soon as the body has passed ``max_mb`` megabytes, and a
    408 when the whole body has not arrived ``timeout_s`` seconds after this call."""
    limit = max_mb * 1e6
    seen = 0
    deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s

    async def counted() -> dict:
        nonlocal seen
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise HTTPError(408, "body_timeout", f"the request body did not arrive within {timeout_s:g} s; "
                            "send it faster, or a smaller file") from None  # fmt: skip
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPError(413, "too_large", f"request body passed {max_mb:g} MB; at most "
                                f"{max_mb:g} MB are accepted")  # fmt: skip
        return message

    return counted


async def read_upload(item, name: str, *, max_mb: float) -> bytes:
    """The bytes of an uploaded form file, read ``READ_CHUNK`` at a time and refused (413) past ``max_mb``."""
    limit = max_mb * 1e6
    chunks, size = [], 0
    while chunk := await item.read(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise too_large(name, size, max_mb)
        chunks.append(chunk)
    return b"".join(chunks)


class Admission:
    """At most ``slots`` requests worked on at once and ``queued`` more waiting for a slot; any further one: 503."""

    def __init__(self, slots: int, queued: int):
        self.slots, self.queued = slots, queued
        self.active = self.waiting = self.rejected = 0
        self._free: asyncio.Semaphore | None = None  # made in the replica's event loop, on first use

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float, *, retry_after_s: int, timeout_s: float) -> AsyncIterator[None]:
        """Hold a work slot; wait for one until ``deadline`` (event-loop time: 504 after it)."""
        if self._free is None:
            self._free = asyncio.Semaphore(self.slots)
        if self.active + self.waiting >= self.slots + self.queued:
            self.rejected += 1
            raise HTTPError(503, "overloaded", f"{self.active} requests in progress and {self.waiting} waiting; "
                            "retry later", {"Retry-After": str(retry_after_s)})  # fmt: skip
        self.waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self._free.acquire()
        except TimeoutError:
            raise timed_out(timeout_s, "waiting for a free slot") from None
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._free.release()


def timed_out(timeout_s: float, doing: str) -> HTTPError:
    return HTTPError(504, "timeout", f"the request took longer than {timeout_s:g} s ({doing}); retry with a "
                     "shorter video or fewer steps, or later")  # fmt: skip


async def cancel_on_exit(response):
    """Await a Serve ``DeploymentResponse``; if the caller is cancelled (its deadline passed), cancel the remote
    call too, so that the replica stops working for nobody (awaiting alone does not cancel it)."""
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise
