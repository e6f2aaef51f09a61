"""Who may call the API: an optional bearer token on every ``/v1/*`` route, and no cross-site form posts.

* With ``vssflow serve --api-token-file F`` (RayService: ``args.api_token_file``, a mounted Secret), every request
  to ``/v1/*`` needs ``Authorization: Bearer <the file's content>``: 401 without it, 403 with another token. Each
  Api replica reads the file itself when it starts (the token is never in the Serve config, its logs or a
  manifest); the comparison takes the same time whatever the token (``hmac.compare_digest``). The page (``/``),
  its static files, ``/healthz``, ``/readyz`` and the OpenAPI page stay open: they hold nothing.
* Without a token, a browser on another site could still make a visitor's browser post a form here (a "simple"
  request needs no CORS preflight). A ``POST``/``PUT``/``DELETE`` whose ``Origin`` is not this server's own
  (``Host``), or that the browser marks ``Sec-Fetch-Site: cross-site``, is refused with 403. Clients that are not
  browsers send neither header and are not affected. With a token the check is not needed: a cross-site form
  cannot set ``Authorization``.

A pure ASGI middleware, so that a refused request is answered before its body is read.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from urllib.parse import urlsplit

from vssflow.errors import VssflowError

_TOKEN: bytes | None = None  # this replica's token (set by configure, in the replica's process)
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def read_token_file(path: str | Path) -> bytes:
    """The token in ``path`` (surrounding whitespace removed). Raises VssflowError: missing, empty or too short."""
    try:
        token = Path(path).read_bytes().strip()
    except OSError as e:
        raise VssflowError(f"--api-token-file {path}: cannot read it ({e.strerror}); give a readable file") from e
    if len(token) < 16:
        raise VssflowError(f"--api-token-file {path}: the token has {len(token)} characters, at least 16 are needed; "
                           "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")  # fmt: skip
    return token


def configure(token_file: str | None) -> None:
    """Set this process's token from ``token_file`` (None: no token; the Origin check applies)."""
    global _TOKEN
    _TOKEN = None if token_file is None else read_token_file(token_file)


class ApiAuth:
    """ASGI middleware: the bearer token on ``/v1/*`` when configured, else the same-origin check."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refusal = _refusal(scope)
            if refusal is not None:
                status, reason, detail, headers = refusal
                body = json.dumps({"error": reason, "detail": detail}).encode()
                headers = [(b"content-type", b"application/json"), *headers]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _refusal(scope) -> tuple[int, str, str, list] | None:
    headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
    path = scope.get("path", "")
    if _TOKEN is not None:
        if not path.startswith("/v1/"):
            return None
        scheme, _, given = headers.get("authorization", b"").partition(b" ")
        challenge = [(b"www-authenticate", b'Bearer realm="vssflow"')]
        if scheme.lower() != b"bearer" or not given.strip():
            return 401, "unauthorized", "this server needs an API token: send Authorization: Bearer TOKEN", challenge
        if not hmac.compare_digest(given.strip(), _TOKEN):
            return 403, "forbidden", "the API token is not this server's; check it", challenge
        return None
    if scope.get("method") not in _UNSAFE:
        return None
    origin = headers.get("origin", b"").decode("latin-1")
    host = headers.get("host", b"").decode("latin-1")
    cross = headers.get("sec-fetch-site", b"") == b"cross-site"
    if cross or (origin and (origin == "null" or urlsplit(origin).netloc != host)):
        return 403, "cross_origin", f"a {scope.get('method')} from another site ({origin or 'cross-site'}) is " \
               "refused: post from this server's own page, or from a client that is not a browser", []  # fmt: skip
    return None
