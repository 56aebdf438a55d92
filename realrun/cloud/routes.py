"""The routes of the cloud server: parse, find the session, wait for the turn, run the handler.

Each route runs in the event loop after realrun.cloud.endpoints.guarded admitted and decoded
its body. Parsing (422) comes first, then the session (404: closed, expired or never opened),
then its turn (realrun.cloud.ordering.Sequencer: parked in the loop, no worker thread), then
the handler (realrun.cloud.handlers) in a worker thread. Idle sessions are expired by
`reap`, run before every open and periodically (realrun.cloud.server's lifespan).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from realrun import protocol
from realrun.cloud import handlers
from realrun.cloud.batching import parse_plan
from realrun.cloud.endpoints import OneLineLog
from realrun.cloud.handlers import Cloud, VerifyRequest
from realrun.protocol import ProtocolError


async def reap(cloud: Cloud, log: OneLineLog) -> int:
    """Close the sessions idle for over the timeout; how many were."""
    expired = cloud.table.take_expired()
    if not expired:
        return 0
    for sid in expired:
        cloud.sequencer.forget(sid)
    await run_in_threadpool(handlers.drop_sessions, cloud, expired)
    timeout_s = cloud.settings.session_idle_timeout_s
    log.note("expired", f"expired {len(expired)} session(s) idle for over {timeout_s:g} s")
    return len(expired)


@asynccontextmanager
async def in_turn(cloud: Cloud, sid: str, seq: int | None) -> AsyncIterator[float]:
    """The session in use (it cannot expire) and in its turn `seq`; yields perf_counter at
    the start (for `queued_ms`)."""
    start = time.perf_counter()
    cloud.table.use(sid)
    try:
        async with cloud.sequencer.turn(sid, seq):
            yield start
    finally:
        cloud.table.release(sid)


class Routes:
    """The POST routes' bodies, bound to one server's state and log."""

    def __init__(self, cloud: Cloud, log: OneLineLog) -> None:
        self.cloud = cloud
        self.log = log

    async def open(self, _request: Request, obj: dict[str, Any], client: str) -> dict[str, Any]:
        """`open`: a new session (idle ones are expired first, so they never lock clients out)."""
        prompt, rule = protocol.parse_open(obj, self.cloud.limits)
        try:
            seat = parse_plan(obj)
        except ValueError as exc:
            raise ProtocolError(422, str(exc)) from None
        await reap(self.cloud, self.log)
        answer = await run_in_threadpool(
            handlers.open_session, self.cloud, prompt, rule, client, seat
        )
        self.cloud.sequencer.begin(answer["session"])
        return answer

    async def upload(self, _request: Request, obj: dict[str, Any], _client: str) -> dict[str, Any]:
        """`upload`: drafts for the session's next verification (maybe conditional)."""
        upload = protocol.parse_upload(obj, self.cloud.limits)
        outcome = protocol.parse_outcome(obj, self.cloud.limits)
        async with in_turn(self.cloud, upload.sid, upload.seq) as start:
            return await run_in_threadpool(
                handlers.apply_upload, self.cloud, upload, start, outcome
            )

    async def verify(self, _request: Request, obj: dict[str, Any], _client: str) -> dict[str, Any]:
        """`verify`: the session's uploads (and those the request carries), in a batch."""
        sid, n, drafts = protocol.parse_verify(obj, self.cloud.limits)
        async with in_turn(self.cloud, sid, protocol.parse_seq(obj)) as start:
            outcome = protocol.parse_outcome(obj, self.cloud.limits)
            request = VerifyRequest(sid, n, drafts, outcome)
            return await run_in_threadpool(handlers.verify, self.cloud, request, start)

    async def close(self, _request: Request, obj: dict[str, Any], _client: str) -> dict[str, Any]:
        """`close`: end the session."""
        sid = protocol.parse_close(obj, self.cloud.limits)
        async with in_turn(self.cloud, sid, protocol.parse_seq(obj)):
            answer = await run_in_threadpool(handlers.close_session, self.cloud, sid)
        self.cloud.sequencer.forget(sid)
        return answer

    async def probe(self, _request: Request, obj: dict[str, Any], _client: str) -> dict[str, Any]:
        """`probe`: link calibration, a padded message the server only measures."""
        pad = obj.get("pad")
        if not isinstance(pad, bytes):
            raise ProtocolError(422, "'pad' must be msgpack binary")
        return {"bytes": len(pad)}


__all__ = ["Routes", "in_turn", "reap"]
