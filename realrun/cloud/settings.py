"""The cloud server's limits and timeouts: one frozen record, its defaults and their reasons.

Every bound a client could otherwise exhaust is here (docs/reliability.md, "Cloud server
limits"): sessions (global, per client, idle expiry), requests in flight per client,
out-of-order requests parked per session, connections per client, header, body and
keep-alive timeouts, and the bytes of request bodies buffered at once. `describe()` is what
/v1/health reports, so a run's manifest (realrun.local records the server's health) records
the settings it ran under.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from policies.batching import DEFAULT_BATCH_WINDOW_S, DEFAULT_MAX_BATCH
from simulator.errors import ConfigError

MIB = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    """Limits and timeouts of one cloud server (defaults: what `pipesd realrun cloud` uses)."""

    max_sessions: int = 64
    """Open sessions at once, all clients together (429 past it)."""
    max_sessions_per_client: int = 16
    """Open sessions per client address (429 past it): one client cannot take them all."""
    session_idle_timeout_s: float = 120.0
    """A session no request has touched for this long is closed by the server."""
    rate_limit_per_s: float | None = 200.0
    """Requests per second per client address (token bucket; None: unlimited)."""
    max_inflight_per_client: int = 32
    """Requests of one client address being read, parked or served at once (429 past it)."""
    order_timeout_s: float = 30.0
    """How long a numbered request waits for its turn (409 after)."""
    max_parked_per_session: int = 8
    """Numbered requests of one session waiting for their turn at once (429 past it); they
    wait in the event loop, holding no worker thread."""
    max_connections_per_client: int = 64
    """Open TCP connections per client address (further ones are closed at once)."""
    header_timeout_s: float = 10.0
    """A request's headers must arrive within this of its first byte (or of the connection's
    opening); the connection is closed otherwise."""
    body_timeout_s: float = 10.0
    """A request's body must arrive within this of its headers (408 and close otherwise)."""
    keep_alive_s: float = 5.0
    """An idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive)."""
    max_header_bytes: int = 16 * 1024
    """Most bytes of a request line and headers (h11's max_incomplete_event_size; 400 past)."""
    max_body_bytes: int = 64 * 1024
    """Most bytes of one request body (413 past it); link probes have their own bound."""
    max_probe_bytes: int = 4 * MIB
    """Most bytes of one /v1/probe body (link calibration padding)."""
    max_buffered_bytes: int = 64 * MIB
    """Request body bytes held at once, all requests together (503 + Retry-After past it).
    Bodies over max_body_bytes (probes) may use at most half of it, so the other half
    always serves the protocol's small requests."""
    max_upload: int = 64
    """Most draft tokens per verification."""
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_S * 1e3
    """How long the oldest waiting verify waits for others to join its batch (the scenario's
    `[cloud] batch_window_s`; the rule: policies/batching.py)."""
    max_batch: int = DEFAULT_MAX_BATCH
    """Most verifications per batch (the scenario's `[cloud] max_batch`; capped by the
    backend's max_verify_batch)."""

    def __post_init__(self) -> None:
        for item in fields(self):
            problem = _problem(item.name, getattr(self, item.name), item.default)
            if problem:
                flag = SETTING_FLAGS.get(item.name, item.name)
                raise ConfigError(flag, str(getattr(self, item.name)), problem)

    def describe(self) -> dict[str, Any]:
        """Every setting by name (what /v1/health reports and a run's manifest keeps)."""
        return asdict(self)


MAX_BODY_CEILING_BYTES = 64 * MIB
"""The hard ceiling of a derived body limit: a scenario needing more is refused."""
BODY_SAFETY_FACTOR = 1.5
"""Margin of a derived body limit over the largest message the payload model predicts."""
BODY_SLACK_BYTES = 4096
"""Bytes added to a derived limit for the body's keys, session id, `seq`, array headers."""


def body_limit_bytes(largest_message_bytes: int, source: str, field: str) -> int:
    """The request-body limit for messages of at most `largest_message_bytes` (the payload
    model's largest uplink message): that x BODY_SAFETY_FACTOR + BODY_SLACK_BYTES, at least
    the default 64 KiB; one-line ConfigError (naming `source` and `field`) past
    MAX_BODY_CEILING_BYTES."""
    limit = math.ceil(largest_message_bytes * BODY_SAFETY_FACTOR) + BODY_SLACK_BYTES
    if limit > MAX_BODY_CEILING_BYTES:
        raise ConfigError(
            source,
            field,
            f"its largest message ({largest_message_bytes} bytes) needs a {limit / MIB:.1f} "
            f"MiB request body, over the server's ceiling of {MAX_BODY_CEILING_BYTES // MIB} "
            "MiB (send fewer tokens per message, fewer bytes per probability or a smaller "
            "vocabulary)",
        )
    return max(ServerSettings.max_body_bytes, limit)


def settings_for_body(
    settings: ServerSettings, max_body_bytes: int, uplink_mbps: float | None = None
) -> ServerSettings:
    """`settings` admitting bodies of `max_body_bytes`: the global buffered-bytes bound grows
    to at least 4 bodies (so it admits one in the half left to large bodies, twice over), and
    with the link's `uplink_mbps` the body timeout to at least BODY_TIMEOUT_FACTOR times such
    a body's transmission time (a full-row NAV at a few Mbit/s takes seconds)."""
    buffered = max(settings.max_buffered_bytes, 4 * max_body_bytes)
    timeout_s = settings.body_timeout_s
    if uplink_mbps is not None and uplink_mbps > 0:
        send_s = max_body_bytes * 8 / (uplink_mbps * 1e6)
        timeout_s = max(timeout_s, math.ceil(BODY_TIMEOUT_FACTOR * send_s))
    return replace(
        settings,
        max_body_bytes=max_body_bytes,
        max_buffered_bytes=buffered,
        body_timeout_s=float(timeout_s),
    )


BODY_TIMEOUT_FACTOR = 4.0
"""Margin of a derived body timeout over the largest body's transmission at the link rate."""


def _problem(name: str, value: Any, default: Any) -> str:
    """Why `value` is no valid setting `name` ("" if it is): integers >= 1 where the default
    is an integer, finite positive numbers otherwise; the batch window in [0, 1000] ms; the
    rate limit may be None."""
    if value is None and name == "rate_limit_per_s":
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if isinstance(default, int) and not isinstance(value, int):
        return "must be an integer"
    if name == "batch_window_ms":
        return "" if 0 <= value <= 1000 else "must be in [0, 1000]"
    if not math.isfinite(value) or value < (1 if isinstance(default, int) else 0) or value == 0:
        return "must be >= 1" if isinstance(default, int) else "must be a finite number > 0"
    return ""


SETTING_FLAGS = {
    "max_sessions": "--max-sessions",
    "max_sessions_per_client": "--max-sessions-per-client",
    "session_idle_timeout_s": "--session-idle-timeout-s",
    "rate_limit_per_s": "--rate-limit",
    "max_inflight_per_client": "--max-inflight-per-client",
    "order_timeout_s": "--order-timeout-s",
    "max_parked_per_session": "--max-parked-per-session",
    "max_connections_per_client": "--max-connections-per-client",
    "header_timeout_s": "--header-timeout-s",
    "body_timeout_s": "--body-timeout-s",
    "keep_alive_s": "--keep-alive-s",
    "max_body_bytes": "--max-body-bytes",
    "max_buffered_bytes": "--max-buffered-bytes",
    "batch_window_ms": "--batch-window-ms",
    "max_batch": "--max-batch",
}
"""The settings `pipesd realrun cloud` takes as options (the others keep their defaults)."""


__all__ = [
    "MAX_BODY_CEILING_BYTES",
    "MIB",
    "SETTING_FLAGS",
    "ServerSettings",
    "body_limit_bytes",
    "settings_for_body",
]
