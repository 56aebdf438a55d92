"""The HTTP side of the cloud server: admission, body reading, ordering, one route each.

Every POST goes through `guarded`, whose checks, in order, refuse at once and change no
state: rate limit per client address (429), requests in flight per client (429), shared
secret (401), declared body size (413), the global budget of buffered body bytes (503 with
Retry-After), then the body is read within the body deadline (408; a client that drops
meanwhile is logged in one line at INFO), content type (415) and msgpack (400). The route
then parses its fields (422), finds the session (404), waits for its turn in the event loop
(realrun.cloud.ordering; no worker thread held) and runs its handler (realrun.cloud.handlers)
in a worker thread.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from realrun import protocol
from realrun.cloud.handlers import Cloud
from realrun.protocol import CONTENT_TYPE, TOKEN_HEADER, ProtocolError

LOG = logging.getLogger("realrun.cloud")
"""The server's own log: one line per event, at INFO (dropped clients, timeouts, expiry)."""

Route = Callable[[Request, dict[str, Any], str], Awaitable[dict[str, Any]]]
"""A route body: (request, decoded body, client address) -> the answer's fields."""


class OneLineLog:
    """INFO lines, at most one per `interval_s` per kind (the rest counted in the next line),
    so an attack cannot flood the log."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.last: dict[str, float] = {}
        self.skipped: dict[str, int] = {}

    def note(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -self.interval_s) < self.interval_s:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
            return
        self.last[kind] = now
        skipped = self.skipped.pop(kind, 0)
        LOG.info("%s%s", message, f" (+{skipped} similar before)" if skipped else "")


def reply(
    obj: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A msgpack response."""
    return Response(
        protocol.encode(obj), status_code=status, media_type=CONTENT_TYPE, headers=headers
    )


def refusal(exc: ProtocolError) -> Response:
    """The error answer for a refused request (Retry-After on 429/503, close on 408)."""
    headers = None
    if exc.status in (429, 503):
        headers = {"Retry-After": "1"}
    elif exc.status == 408:
        headers = {"Connection": "close"}
    return reply({"error": exc.message}, exc.status, headers)


def peer(request: Request) -> tuple[str, str]:
    """(client address, "address:port") of a request."""
    if request.client is None:
        return "?", "?"
    return request.client.host, f"{request.client.host}:{request.client.port}"


def check_secret(request: Request, secret: bytes | None) -> None:
    """401 unless the request carries the server's shared secret (if it has one)."""
    if secret is None:
        return
    given = request.headers.get(TOKEN_HEADER, "").encode("utf-8", "replace")
    if not hmac.compare_digest(given, secret):
        raise ProtocolError(401, f"missing or wrong {TOKEN_HEADER} header")


def declared_size(request: Request, limit: int) -> int:
    """The body size to reserve: the declared Content-Length (413 past `limit`), else `limit`."""
    declared = request.headers.get("content-length")
    if declared is None:
        return limit
    if not declared.isdigit() or int(declared) > limit:
        raise ProtocolError(413, f"body larger than {limit} bytes")
    return int(declared)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, read in chunks: 413 past `limit`, 408 if it takes over `timeout_s`."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ProtocolError(413, f"body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ProtocolError(408, f"body not received within {timeout_s:g} s") from None
    return b"".join(chunks)


def decode_body(request: Request, body: bytes, limit: int) -> dict[str, Any]:
    """The body as a msgpack map (415 for another content type, 400 if undecodable)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != CONTENT_TYPE:
        raise ProtocolError(415, f"Content-Type must be {CONTENT_TYPE}")
    return protocol.decode(body, limit)


@asynccontextmanager
async def held_bytes(cloud: Cloud, size: int) -> AsyncIterator[None]:
    """Hold `size` bytes of the global body budget for the block (503 if it is spent)."""
    if not cloud.budget.take(size, large=size > cloud.settings.max_body_bytes):
        raise ProtocolError(503, "the server holds too many request bytes; retry shortly")
    try:
        yield
    finally:
        cloud.budget.give(size)


def guarded(
    cloud: Cloud, route: Route, limit: int, secret: bytes | None, log: OneLineLog
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint: the checks of the module docstring around `route`."""

    async def endpoint(request: Request) -> Response:
        client, where = peer(request)
        if cloud.limiter is not None and not cloud.limiter.allow(client):
            return refusal(ProtocolError(429, "rate limit exceeded"))
        if not cloud.inflight.take(client):
            limit_n = cloud.settings.max_inflight_per_client
            return refusal(ProtocolError(429, f"more than {limit_n} requests in flight"))
        try:
            check_secret(request, secret)
            size = declared_size(request, limit)
            async with held_bytes(cloud, size):
                body = await read_body(request, limit, cloud.settings.body_timeout_s)
                obj = decode_body(request, body, limit)
                return reply(await route(request, obj, client))
        except ProtocolError as exc:
            if exc.status == 408:
                log.note("slow-body", f"client {where}: {request.url.path}: {exc.message}")
            return refusal(exc)
        except ClientDisconnect:
            log.note("dropped", f"client {where} dropped {request.url.path} mid-request")
            return Response(status_code=400)
        finally:
            cloud.inflight.give(client)

    return endpoint
