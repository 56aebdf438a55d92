"""The cloud verification server: FastAPI + uvicorn around one target model (any backend).

Routes (msgpack bodies, see realrun.protocol): POST /v1/open, /v1/upload, /v1/verify,
/v1/close, /v1/probe; GET /v1/health (no secret needed; says only that the server is up, the
model file name, vocabulary and context sizes, the number of sessions and the batch limit).

Checks, in order, for every POST: per-client rate limit (token bucket on the peer address,
429), shared secret in the X-PipeSD-Token header when the server has one (401), body size
(413, the body is read in chunks and abandoned past the limit), content type (415), msgpack
(400), fields (422), session (404). A refused request changes no state. Model work runs in
worker threads under one lock. Verifies go through a realrun.cloud.batching.Batcher: those waiting
when the model frees up (plus those arriving within --batch-window-ms, default 0) are
evaluated in one batch of at most --max-batch, each answered with its own result, the batch's
time and its size. The default adds no wait, so one session's latency is unchanged.

Backends: `--backend llama` (realrun.cloud.llama_target.LlamaTarget, GGUF; `--device cuda` offloads all
layers where llama-cpp-python was built with GPU support) or `--backend torch`
(realrun.cloud.torch_target.TorchTarget(model, device), imported only then). Greedy, synthetic and
sampling verification need the backend's `supports_rules`; batching needs `verify_batch`
(otherwise verifies run one at a time). On a CUDA device the GPU's NVML energy counter gives
each answer's `energy_j`: the counter's delta over the batch / batch size. The counter moves
in steps of tens of milliseconds, so a single value is coarse (often 0 or one step); sums
over many verifications are right. On the CPU energy_j is None.

    python -m realrun.cloud.server --model smollm2-135m --threads 4 --port 8600 [--max-batch 8]
"""

from __future__ import annotations

import argparse
import hmac
import re
import sys
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from realrun import protocol
from realrun.cloud.batching import Batcher
from realrun.cloud.ordering import Chain, Sequencer, follow_up
from realrun.cloud.verifier import Sampling, Synthetic
from realrun.protocol import CONTENT_TYPE, TOKEN_HEADER, Drafts, Limits, ProtocolError
from simulator.errors import ConfigError

BACKENDS = ("llama", "torch")
"""Target backends: realrun.cloud.llama_target.LlamaTarget, realrun.cloud.torch_target.TorchTarget."""


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


@dataclass(frozen=True)
class VerifyRequest:
    """One parsed `verify`, waiting for a batch."""

    sid: str
    n: int
    drafts: Drafts | None


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
    batch_window_ms: float = 0.0,
    max_batch: int = 8,
    kv_slots: int = 8,
    energy_meter: Any = None,
    order_timeout_s: float = 30.0,
) -> FastAPI:
    """The FastAPI app serving one target model (a LlamaTarget loaded here unless `target`).

    `target`: any backend with LlamaTarget's interface (realrun.cloud.torch_target's TorchTarget);
    closed on shutdown only if loaded here. `token`: shared secret required in X-PipeSD-Token
    (None: none needed). Bodies are limited to `max_body_bytes`, link probes (`/v1/probe`,
    padding only) to `max_probe_bytes`. `rate_limit_per_s`: requests per second per client
    address (None: unlimited). `max_upload`: most draft tokens per verification. Verifies
    waiting together (plus those arriving within `batch_window_ms`) run as one batch of at most
    `max_batch` when the backend has `verify_batch` (else one at a time); a loaded LlamaTarget
    gets `kv_slots` KV sequences. `energy_meter` (`read_j()`, e.g. realrun.cloud.energy's
    NvmlEnergyMeter; default: the target's `energy_meter` attribute, if any) gives energy_j.
    Numbered requests (`seq`) wait at most `order_timeout_s` for their turn (realrun.cloud.ordering).
    """
    from realrun.cloud.llama_target import LlamaTarget

    owned = target is None
    if owned:
        target = LlamaTarget(target_model_path, threads=threads, n_ctx=n_ctx, kv_slots=kv_slots)
    if max_upload + 1 > getattr(target, "n_batch", max_upload + 1):
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
    meter = energy_meter if energy_meter is not None else getattr(target, "energy_meter", None)
    batched = hasattr(target, "verify_batch")
    sequencer = Sequencer(order_timeout_s)
    chains: dict[str, Chain] = {}
    model_path = getattr(target, "model_path", None)
    model_name = Path(model_path).name if model_path else str(getattr(target, "model_name", "?"))

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

    def check_drafts(session: Any, drafts: Drafts, total: int) -> None:
        """Refuse drafts that do not fit the session (its rule, its limits)."""
        sampling = isinstance(getattr(session, "rule", None), Sampling)
        if drafts.dists is not None and not sampling:
            raise ProtocolError(422, "'dists' needs a session opened with 'sampling'")
        if sampling and drafts.tokens and drafts.dists is None:
            raise ProtocolError(422, "a 'sampling' session needs 'dists' for every token")
        if total > limits.max_upload:
            raise ProtocolError(
                422, f"more than {limits.max_upload} tokens uploaded before a verify"
            )
        if session.length + total > limits.max_session_len:
            raise ProtocolError(422, "session would exceed the target's context size")

    def store(sid: str, drafts: Drafts) -> int:
        if drafts.dists is None:
            return target.upload(sid, drafts.tokens, drafts.probs)
        return target.upload(sid, drafts.tokens, drafts.probs, drafts.dists)

    def do_open(obj: dict[str, Any]) -> dict[str, Any]:
        prompt, rule = protocol.parse_open(obj, limits)
        if rule is not None and not getattr(target, "supports_rules", False):
            raise ProtocolError(422, "this server's backend verifies greedily only")
        with lock:
            if len(target.sessions) >= max_sessions:
                raise ProtocolError(429, f"session limit ({max_sessions}) reached")
            sid, ms = target.open(prompt) if rule is None else target.open(prompt, rule)
            chains[sid] = Chain()
            sequencer.begin(sid)
        return {"session": sid, "n_prompt": len(prompt), "prefill_ms": ms}

    def matcher(session: Any) -> Callable[[int, int], bool]:
        """Whether an edge's guess at the pending token's position counts as that token."""
        rule = getattr(session, "rule", None)
        if isinstance(rule, Synthetic):
            return lambda pos, _tok: pos < len(rule.verdicts) and rule.verdicts[pos]
        return lambda _pos, tok: tok == session.pending

    def trimmed(session: Any, upload: protocol.Upload) -> Drafts | None:
        """The drafts of `upload` to append (a conditional one loses its held prefix); None
        if it is stale (realrun.cloud.ordering.follow_up)."""
        drafts = upload.drafts
        if upload.after is None or upload.at is None:
            return drafts
        held = [session.pending, *session.uploaded]
        plan = follow_up(
            chains[upload.sid],
            upload.after,
            upload.at,
            drafts.tokens,
            held,
            session.generated - 1,
            matcher(session),
        )
        if plan is None:
            return None
        skip = plan[0]
        return Drafts(
            drafts.tokens[skip:],
            drafts.probs[skip:] if drafts.probs is not None else None,
            drafts.dists[skip:] if drafts.dists is not None else None,
        )

    def do_upload(obj: dict[str, Any]) -> dict[str, Any]:
        upload = protocol.parse_upload(obj, limits)
        start = time.perf_counter()
        with sequencer.turn(upload.sid, upload.seq), lock:
            session = session_of(upload.sid)
            check_drafts(session, upload.drafts, len(session.uploaded))
            drafts = trimmed(session, upload)
            kept = len(drafts.tokens) if drafts is not None else 0
            if drafts is not None and kept:
                check_drafts(session, drafts, len(session.uploaded) + kept)
                store(upload.sid, drafts)
            return {
                "pending": len(session.uploaded),
                "kept": kept,
                "stale": drafts is None,
                "queued_ms": 1e3 * (time.perf_counter() - start),
            }

    def admit(request: VerifyRequest) -> None:
        """Check one verify against its session and store the tokens it carries."""
        session = session_of(request.sid)
        drafts = request.drafts or Drafts([], None, None)
        total = len(session.uploaded) + len(drafts.tokens)
        if request.n != total:
            raise ProtocolError(422, f"'n' is {request.n} but {total} tokens were uploaded")
        check_drafts(session, drafts, total)
        if drafts.tokens:
            store(request.sid, drafts)

    def run_batch(requests: list[VerifyRequest]) -> list[dict[str, Any] | BaseException]:
        """Verify a batch (the Batcher holds the model lock): one answer or error each."""
        answers: list[dict[str, Any] | BaseException] = []
        admitted = []
        for request in requests:
            try:
                admit(request)
                admitted.append(request.sid)
                answers.append({})
            except ProtocolError as exc:
                answers.append(exc)
        if not admitted:
            return answers
        before = meter.read_j() if meter is not None else None
        if batched:
            results = iter(target.verify_batch(admitted))
        else:
            results = iter([target.verify(sid) for sid in admitted])
        energy = None if before is None else (meter.read_j() - before) / len(admitted)
        for request, answer in zip(requests, answers, strict=True):
            if isinstance(answer, dict):
                result = next(results)
                chains[request.sid].verified(result.accepted, request.n)
                answer |= {
                    "accepted": result.accepted,
                    "token": result.token,
                    "target_ms": result.target_ms,
                    "energy_j": energy,
                    "batch_size": getattr(result, "batch_size", 1),
                }
        return answers

    batcher: Batcher[VerifyRequest, dict[str, Any]] = Batcher(
        run_batch, batch_window_ms / 1e3, max_batch if batched else 1, lock
    )

    def do_verify(obj: dict[str, Any]) -> dict[str, Any]:
        sid, n, drafts = protocol.parse_verify(obj, limits)
        start = time.perf_counter()
        with sequencer.turn(sid, protocol.parse_seq(obj)):
            answer = batcher.submit(sid, VerifyRequest(sid, n, drafts))
        waited_ms = 1e3 * (time.perf_counter() - start) - answer["target_ms"]
        return answer | {"queued_ms": max(waited_ms, 0.0)}

    def do_close(obj: dict[str, Any]) -> dict[str, Any]:
        sid = protocol.parse_close(obj, limits)
        with sequencer.turn(sid, protocol.parse_seq(obj)), lock:
            session_of(sid)
            target.drop(sid)
            chains.pop(sid, None)
        sequencer.forget(sid)
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
                "model": model_name,
                "n_vocab": target.n_vocab,
                "n_ctx": target.n_ctx,
                "sessions": len(target.sessions),
                "max_batch": batcher.max_batch,
            }
        )

    return app


def load_target(args: argparse.Namespace) -> tuple[Any, Any]:
    """(target, energy meter or None) for the CLI's options; ConfigError on bad ones."""
    from models.registry import resolve_model

    backend = getattr(args, "backend", "llama")
    device = getattr(args, "device", "cpu")
    kv_slots = getattr(args, "kv_slots", 8)
    if backend not in BACKENDS:
        raise ConfigError("--backend", backend, f"allowed: {', '.join(BACKENDS)}")
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError("--device", device, "allowed: cpu, cuda, cuda:N")
    if kv_slots < 1:
        raise ConfigError("--kv-slots", str(kv_slots), "must be >= 1")
    if backend == "torch":
        try:
            from realrun.cloud.torch_target import TorchTarget
        except ImportError as exc:
            raise ConfigError("--backend", "torch", f"cannot import it ({exc})") from None
        target = TorchTarget(args.model, device, n_ctx=args.n_ctx, threads=args.threads)
    else:
        import llama_cpp

        from realrun.cloud.llama_target import LlamaTarget

        if device != "cpu" and not llama_cpp.llama_supports_gpu_offload():
            raise ConfigError("--device", device, "this llama-cpp-python build is CPU-only")
        target = LlamaTarget(
            resolve_model(args.model),
            threads=args.threads,
            n_ctx=args.n_ctx,
            kv_slots=kv_slots,
            gpu_layers=0 if device == "cpu" else -1,
        )
    return target, gpu_meter(device)


def gpu_meter(device: str) -> Any:
    """NVML's energy counter of the CUDA device `device` (None on the CPU or without NVML)."""
    if device == "cpu":
        return None
    from realrun.cloud.energy import NvmlEnergyMeter, PowerUnavailable, nvml_index_for_cuda

    index = int(device.partition(":")[2] or 0)
    try:
        return NvmlEnergyMeter(nvml_index_for_cuda(index))
    except PowerUnavailable as exc:
        print(f"realrun-cloud: energy_j will be None ({exc})", file=sys.stderr)
        return None


def serve(args: argparse.Namespace) -> int:
    """Load the target and serve until interrupted; bad options raise ConfigError."""
    import uvicorn

    window = getattr(args, "batch_window_ms", 0.0)
    max_batch = getattr(args, "max_batch", 8)
    if not (window >= 0 and window <= 1000):
        raise ConfigError("--batch-window-ms", str(window), "must be in [0, 1000]")
    if max_batch < 1:
        raise ConfigError("--max-batch", str(max_batch), "must be >= 1")
    target, meter = load_target(args)
    app = create_app(
        args.model,
        token=args.token,
        max_sessions=args.max_sessions,
        rate_limit_per_s=args.rate_limit or None,
        target=target,
        batch_window_ms=window,
        max_batch=max_batch,
        energy_meter=meter,
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        target.close()
        if meter is not None:
            meter.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m realrun.cloud.server`: the same as `pipesd realrun cloud`."""
    from realrun.cli import add_arguments

    parser = argparse.ArgumentParser(prog="realrun-cloud", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve(args)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    raise SystemExit(main())
