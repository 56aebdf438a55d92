"""The cloud verification server: FastAPI + uvicorn around one target model (any backend).

Routes (msgpack bodies, see realrun.protocol): POST /v1/open, /v1/upload, /v1/verify,
/v1/close, /v1/probe; GET /v1/health (no secret needed; says only that the server is up, the
model file name, vocabulary and context sizes, the number of sessions, the batch limit and
every limit and timeout, realrun.cloud.settings).

The pieces: realrun.cloud.endpoints (admission and body reading, in the order rate limit,
in-flight limit, secret, size, byte budget, body deadline, content type, msgpack; a refused
request changes no state), realrun.cloud.routes (parse, session, turn), realrun.cloud.handlers
(the model work, in worker threads under one lock), realrun.cloud.sessions (limits per client
and idle expiry), realrun.cloud.connections (header deadline, connections per client).
Verifies go through a realrun.cloud.batching.Batcher: those waiting when the model frees up
(plus those arriving within --batch-window-ms, default 0) are evaluated in one batch of at
most --max-batch, each answered with its own result, the batch's time and its size. The
default adds no wait, so one session's latency is unchanged.

Backends (realrun.cloud.backend.TargetBackend): `--backend llama`
(realrun.cloud.llama_target.LlamaTarget, GGUF; `--device cuda` offloads all layers where
llama-cpp-python was built with GPU support), `--backend torch`
(realrun.cloud.torch_target.TorchTarget, imported only then), or `--synthetic-target` with
`--profile` (realrun.cloud.synthetic_target: seeded logits, the profile's target latency; for
load tests and demos without a model). On a CUDA device the GPU's NVML energy counter gives
each answer's `energy_j`: the counter's delta over the batch / batch size. The counter moves
in steps of tens of milliseconds, so a single value is coarse (often 0 or one step); sums
over many verifications are right. On the CPU energy_j is None.

    python -m realrun.cloud.server --model smollm2-135m --threads 4 --port 8600 [--max-batch 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from models.registry import resolve_model
from realrun.cli import add_arguments
from realrun.cloud.backend import TargetBackend
from realrun.cloud.connections import uvicorn_config
from realrun.cloud.endpoints import LOG, OneLineLog, guarded, reply
from realrun.cloud.energy import NvmlEnergyMeter, PowerUnavailable, nvml_index_for_cuda
from realrun.cloud.handlers import Cloud, EnergyMeter, health
from realrun.cloud.llama_target import LlamaTarget
from realrun.cloud.routes import Routes, reap
from realrun.cloud.settings import SETTING_FLAGS, ServerSettings
from realrun.cloud.synthetic_target import SyntheticTarget
from realrun.cloud.torch_target import TorchTarget
from realrun.protocol import Limits
from simulator.errors import ConfigError
from simulator.profile import load_profile

BACKENDS = ("llama", "torch")
"""Model backends: realrun.cloud.llama_target.LlamaTarget, .torch_target.TorchTarget."""


def create_app(
    target_model_path: Path | str,
    threads: int = 1,
    token: str | None = None,
    n_ctx: int = 2048,
    target: TargetBackend | None = None,
    kv_slots: int = 8,
    energy_meter: EnergyMeter | None = None,
    settings: ServerSettings | None = None,
    **overrides: Any,
) -> FastAPI:
    """The FastAPI app serving one target model (a LlamaTarget loaded here unless `target`).

    `target`: any TargetBackend; closed on shutdown only if loaded here. `token`: shared
    secret required in X-PipeSD-Token (None: none needed). `settings`: limits and timeouts
    (realrun.cloud.settings.ServerSettings), `overrides` any of its fields by name (e.g.
    `rate_limit_per_s=None`, `max_batch=3`). A loaded LlamaTarget gets `kv_slots` KV
    sequences. `energy_meter` (`read_j()`, e.g. NVML's) gives each answer's energy_j.
    """
    settings = dataclasses.replace(settings or ServerSettings(), **overrides)
    owned = target is None
    if target is None:
        target = LlamaTarget(target_model_path, threads=threads, n_ctx=n_ctx, kv_slots=kv_slots)
    if settings.max_upload + 1 > target.n_batch:
        raise ValueError(f"max_upload must be < n_batch ({target.n_batch})")
    limits = Limits(
        n_vocab=target.n_vocab,
        max_prompt=target.n_ctx - 1,
        max_upload=settings.max_upload,
        max_body_bytes=settings.max_body_bytes,
        max_session_len=target.n_ctx,
    )
    cloud = Cloud(target, settings, limits, energy_meter)
    log = OneLineLog()
    app = FastAPI(title="pipesd-kit cloud verifier", lifespan=lifespan(cloud, log, owned))
    app.state.target, app.state.limits, app.state.cloud = target, limits, cloud
    app.state.settings, app.state.log = settings, log
    add_routes(app, cloud, log, token.encode() if token else None)
    return app


def lifespan(cloud: Cloud, log: OneLineLog, owned: bool) -> Any:
    """Startup: enough worker threads for every session's request; a periodic reaper of idle
    sessions. Shutdown: stop it; close the target if the app loaded it."""

    @asynccontextmanager
    async def run(_app: Any) -> AsyncIterator[None]:

        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, 2 * cloud.settings.max_sessions + 8)
        reaper = asyncio.create_task(reap_forever(cloud, log))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            if owned:
                with cloud.lock:
                    cloud.target.close()

    return run


async def reap_forever(cloud: Cloud, log: OneLineLog) -> None:
    """Expire idle sessions every quarter of the idle timeout (at most every 5 s)."""
    interval_s = min(cloud.settings.session_idle_timeout_s / 4, 5.0)
    while True:
        await asyncio.sleep(interval_s)
        try:
            await reap(cloud, log)
        except Exception as exc:  # the target refused a drop: say so, keep reaping
            LOG.warning("expiring idle sessions failed: %s: %s", type(exc).__name__, exc)


def add_routes(app: FastAPI, cloud: Cloud, log: OneLineLog, secret: bytes | None) -> None:
    """Register the POST routes (guarded) and GET /v1/health."""
    routes = Routes(cloud, log)
    for name, route in [
        ("open", routes.open),
        ("upload", routes.upload),
        ("verify", routes.verify),
        ("close", routes.close),
        ("probe", routes.probe),
    ]:
        limit = cloud.settings.max_probe_bytes if name == "probe" else cloud.settings.max_body_bytes
        app.add_api_route(
            f"/v1/{name}", guarded(cloud, route, limit, secret, log), methods=["POST"]
        )

    async def health_route(_request: Request) -> Response:
        return reply(health(cloud))

    app.add_api_route("/v1/health", health_route, methods=["GET"])


def load_target(args: argparse.Namespace) -> tuple[TargetBackend, Any]:
    """(target, energy meter or None) for the CLI's options; ConfigError on bad ones."""
    backend = getattr(args, "backend", "llama")
    device = getattr(args, "device", "cpu")
    kv_slots = getattr(args, "kv_slots", 8)
    if backend not in BACKENDS:
        raise ConfigError("--backend", backend, f"allowed: {', '.join(BACKENDS)}")
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError("--device", device, "allowed: cpu, cuda, cuda:N")
    if kv_slots < 1:
        raise ConfigError("--kv-slots", str(kv_slots), "must be >= 1")
    if getattr(args, "synthetic_target", False):
        return synthetic_target(args), None
    if backend == "torch":
        try:
            target = TorchTarget(args.model, device, n_ctx=args.n_ctx, threads=args.threads)
        except ImportError as exc:
            raise ConfigError("--backend", "torch", f"cannot import it ({exc})") from None
        return target, gpu_meter(device)
    return llama_target(args, device, kv_slots), gpu_meter(device)


def llama_target(args: argparse.Namespace, device: str, kv_slots: int) -> TargetBackend:
    """The llama.cpp target of the CLI's options."""
    import llama_cpp  # the llama backend's package: only when it is used

    if device != "cpu" and not llama_cpp.llama_supports_gpu_offload():
        raise ConfigError("--device", device, "this llama-cpp-python build is CPU-only")
    return LlamaTarget(
        resolve_model(args.model),
        threads=args.threads,
        n_ctx=args.n_ctx,
        kv_slots=kv_slots,
        gpu_layers=0 if device == "cpu" else -1,
    )


def synthetic_target(args: argparse.Namespace) -> TargetBackend:
    """`--synthetic-target`: seeded logits, the timing of `--profile`'s target latency."""
    if args.profile is None:
        raise ConfigError("--synthetic-target", "", "needs --profile PROFILE.json (its timing)")
    if not 2 <= args.synthetic_vocab <= 1 << 24:
        raise ConfigError("--synthetic-vocab", str(args.synthetic_vocab), "must be in [2, 2**24]")
    if args.n_ctx < 2:
        raise ConfigError("--n-ctx", str(args.n_ctx), "must be >= 2")
    profile = load_profile(args.profile)
    return SyntheticTarget(
        n_vocab=args.synthetic_vocab,
        n_ctx=args.n_ctx,
        latency=profile.profile.target_latency,
        seed=args.seed,
        model_name=f"synthetic (seed {args.seed}, timing of {Path(args.profile).name})",
    )


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The ServerSettings of the CLI's options (the absent ones keep their defaults)."""
    values = {
        name: getattr(args, flag[2:].replace("-", "_"))
        for name, flag in SETTING_FLAGS.items()
        if hasattr(args, flag[2:].replace("-", "_"))
    }
    if "rate_limit_per_s" in values:
        values["rate_limit_per_s"] = values["rate_limit_per_s"] or None
    return ServerSettings(**values)


def gpu_meter(device: str) -> Any:
    """NVML's energy counter of the CUDA device `device` (None on the CPU or without NVML)."""
    if device == "cpu":
        return None

    index = int(device.partition(":")[2] or 0)
    try:
        return NvmlEnergyMeter(nvml_index_for_cuda(index))
    except PowerUnavailable as exc:
        print(f"realrun-cloud: energy_j will be None ({exc})", file=sys.stderr)
        return None


def serve(args: argparse.Namespace) -> int:
    """Load the target and serve until interrupted; bad options raise ConfigError."""

    settings = settings_from_args(args)
    target, meter = load_target(args)
    app = create_app(
        args.model, token=args.token, target=target, energy_meter=meter, settings=settings
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s realrun-cloud: %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    try:
        uvicorn.Server(uvicorn_config(app, args.host, args.port)).run()
    finally:
        LOG.removeHandler(handler)
        target.close()
        if meter is not None:
            meter.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m realrun.cloud.server`: the same as `pipesd realrun cloud`."""

    parser = argparse.ArgumentParser(prog="realrun-cloud", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve(args)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    raise SystemExit(main())
