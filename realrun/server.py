"""The cloud verification server: FastAPI + uvicorn around one llama.cpp target model.

Routes (msgpack bodies, see realrun.protocol): POST /v1/open, /v1/upload, /v1/verify,
/v1/close; GET /v1/health (no secret needed; says only that the server is up, the model file
name, vocabulary and context sizes, and the number of sessions).

Checks, in order, for every POST: per-client rate limit (token bucket on the peer address,
429), shared secret in the X-PipeSD-Token header when the server has one (401), body size
(413, the body is read in chunks and abandoned past the limit), content type (415), msgpack
(400), fields (422), session (404). A refused request changes no state. Model work runs in a
worker thread under one lock: one evaluation at a time, sessions serialised.

    python -m realrun.server --model smollm2-135m --threads 4 --port 8600
"""

from __future__ import annotations

import argparse
import hmac
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from realrun import protocol
from realrun.protocol import CONTENT_TYPE, TOKEN_HEADER, Limits, ProtocolError


class RateLimiter:
    """Token bucket per client: `rate` requests per second, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float | None = None, max_clients: int = 10_000):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self.max_clients = max_clients
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        with self.lock:
            if len(self.buckets) >= self.max_clients and client not in self.buckets:
                self.buckets.clear()
            tokens, last = self.buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            ok = tokens >= 1.0
            self.buckets[client] = (tokens - 1.0 if ok else tokens, now)
            return ok


def create_app(
    target_model_path: Path | str,
    threads: int = 1,
    token: str | None = None,
    max_body_bytes: int = 64 * 1024,
    max_probe_bytes: int = 4 * 1024 * 1024,
    max_sessions: int = 64,
    rate_limit_per_s: float | None = 200.0,
    n_ctx: int = 2048,
    max_upload: int = 64,
    target: Any = None,
) -> FastAPI:
    """The FastAPI app serving one target model (loaded here unless `target` is given).

    `token`: shared secret required in X-PipeSD-Token (None: none needed). Bodies are limited
    to `max_body_bytes`, link probes (`/v1/probe`, padding only) to `max_probe_bytes`.
    `rate_limit_per_s`: requests per second per client address (None: unlimited).
    `max_upload`: most draft tokens per verification. The app's `state.target` is the
    LlamaTarget (closed on shutdown only if loaded here).
    """
    from realrun.target import LlamaTarget

    owned = target is None
    if owned:
        target = LlamaTarget(target_model_path, threads=threads, n_ctx=n_ctx)
    if max_upload + 1 > target.n_batch:
        raise ValueError(f"max_upload must be < n_batch ({target.n_batch})")
    limits = Limits(
        n_vocab=target.n_vocab,
        max_prompt=target.n_ctx - 1,
        max_upload=max_upload,
        max_body_bytes=max_body_bytes,
        max_session_len=target.n_ctx,
    )
    limiter = RateLimiter(rate_limit_per_s) if rate_limit_per_s else None
    lock = threading.Lock()
    secret = token.encode() if token else None

    @asynccontextmanager
    async def lifespan(_app: Any):
        yield
        if owned:
            with lock:
                target.close()

    app = FastAPI(title="pipesd-kit cloud verifier", lifespan=lifespan)
    app.state.target = target
    app.state.limits = limits

    def reply(obj: dict[str, Any], status: int = 200) -> Response:
        return Response(protocol.encode(obj), status_code=status, media_type=CONTENT_TYPE)

    async def read_request(request: Request, limit: int) -> dict[str, Any]:
        client = request.client.host if request.client else "?"
        if limiter is not None and not limiter.allow(client):
            raise ProtocolError(429, "rate limit exceeded")
        if secret is not None:
            given = request.headers.get(TOKEN_HEADER, "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, secret):
                raise ProtocolError(401, f"missing or wrong {TOKEN_HEADER} header")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ProtocolError(413, f"body larger than {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProtocolError(413, f"body larger than {limit} bytes")
            chunks.append(chunk)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != CONTENT_TYPE:
            raise ProtocolError(415, f"Content-Type must be {CONTENT_TYPE}")
        return protocol.decode(b"".join(chunks), limit)

    def session_of(sid: str) -> Any:
        session = target.sessions.get(sid)
        if session is None:
            raise ProtocolError(404, "unknown session")
        return session

    def do_open(obj: dict[str, Any]) -> dict[str, Any]:
        prompt = protocol.parse_open(obj, limits)
        with lock:
            if len(target.sessions) >= max_sessions:
                raise ProtocolError(429, f"session limit ({max_sessions}) reached")
            sid, ms = target.open(prompt)
        return {"session": sid, "n_prompt": len(prompt), "prefill_ms": ms}

    def do_upload(obj: dict[str, Any]) -> dict[str, Any]:
        sid, tokens, probs = protocol.parse_upload(obj, limits)
        with lock:
            session = session_of(sid)
            if len(session.uploaded) + len(tokens) > limits.max_upload:
                raise ProtocolError(
                    422, f"more than {limits.max_upload} tokens uploaded before a verify"
                )
            if session.length + len(session.uploaded) + len(tokens) > limits.max_session_len:
                raise ProtocolError(422, "session would exceed the target's context size")
            return {"pending": target.upload(sid, tokens, probs)}

    def do_verify(obj: dict[str, Any]) -> dict[str, Any]:
        sid, n = protocol.parse_verify(obj, limits)
        with lock:
            session = session_of(sid)
            if n != len(session.uploaded):
                raise ProtocolError(
                    422, f"'n' is {n} but {len(session.uploaded)} tokens were uploaded"
                )
            if session.length + n > limits.max_session_len:
                raise ProtocolError(422, "session is at the target's context size")
            result = target.verify(sid)
        return {
            "accepted": result.accepted,
            "token": result.token,
            "target_ms": result.target_ms,
            "energy_j": None,
        }

    def do_close(obj: dict[str, Any]) -> dict[str, Any]:
        sid = protocol.parse_close(obj, limits)
        with lock:
            session_of(sid)
            target.drop(sid)
        return {"closed": True}

    def do_probe(obj: dict[str, Any]) -> dict[str, Any]:
        """Link calibration: a padded message the server only measures (no model work)."""
        pad = obj.get("pad")
        if not isinstance(pad, bytes):
            raise ProtocolError(422, "'pad' must be msgpack binary")
        return {"bytes": len(pad)}

    def route(
        handler: Callable[[dict[str, Any]], dict[str, Any]], limit: int
    ) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            try:
                obj = await read_request(request, limit)
                return reply(await run_in_threadpool(handler, obj))
            except ProtocolError as exc:
                headers = {"Retry-After": "1"} if exc.status == 429 else None
                response = reply({"error": exc.message}, exc.status)
                if headers:
                    response.headers.update(headers)
                return response

        return endpoint

    for name, handler in [
        ("open", do_open),
        ("upload", do_upload),
        ("verify", do_verify),
        ("close", do_close),
        ("probe", do_probe),
    ]:
        limit = max_probe_bytes if name == "probe" else max_body_bytes
        app.add_api_route(f"/v1/{name}", route(handler, limit), methods=["POST"])

    @app.get("/v1/health")
    async def health() -> Response:
        return reply(
            {
                "ok": True,
                "model": target.model_path.name,
                "n_vocab": target.n_vocab,
                "n_ctx": target.n_ctx,
                "sessions": len(target.sessions),
            }
        )

    return app


def serve(args: argparse.Namespace) -> int:
    """Load the target and serve until interrupted; a bad model raises ConfigError."""
    import uvicorn

    from calibrate.models import resolve_model

    app = create_app(
        resolve_model(args.model),
        threads=args.threads,
        token=args.token,
        max_sessions=args.max_sessions,
        rate_limit_per_s=args.rate_limit or None,
        n_ctx=args.n_ctx,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m realrun.server`: the same as `pipesd realrun cloud`."""
    from realrun.cli import add_arguments
    from simulator.errors import ConfigError

    parser = argparse.ArgumentParser(prog="realrun-cloud", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve(args)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    raise SystemExit(main())
