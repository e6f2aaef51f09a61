"""Limits on what a client can make the HTTP front hold: request body bytes, counted as they arrive.

``Content-Length`` is only a claim, and a chunked upload has none: the body is counted at the ASGI ``receive``
that the multipart parser reads from, and the request stops with a 413 at the first message past the limit. File
parts are spooled by the parser (1 MB in memory, then a temporary file), so what the ingress holds is bounded by the
limit, whatever the client sends; uploads are then read from the spool in bounded chunks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pipelines.serve.forms import HTTPError

Receive = Callable[[], Awaitable[dict]]
READ_CHUNK = 1 << 20  # bytes read from a spooled upload at a time


def too_large(what: str, size: float, limit_mb: float) -> HTTPError:
    return HTTPError(413, "too_large", f"{what} is {size / 1e6:.1f} MB; at most {limit_mb:g} MB are accepted")


def limited_receive(receive: Receive, *, max_mb: float) -> Receive:
    """``receive`` that raises a 413 :class:`HTTPError` as soon as the body has passed ``max_mb`` megabytes."""
    limit = max_mb * 1e6
    seen = 0

    async def counted() -> dict:
        nonlocal seen
        message = await receive()
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
