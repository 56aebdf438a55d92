"""The cloud server's connections: uvicorn's h11 protocol with a header deadline and a cap.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but not one that opened and
then sent a partial request line or headers: such a connection stayed open forever (1,500 of
them were held open in a hostile test). `guarded_protocol` subclasses uvicorn's
H11Protocol: a request's headers must be complete within `header_timeout_s` of the
connection's opening or of the request's first byte, else the connection is closed (one INFO
line); a client address may hold at most `max_connections_per_client` connections (further
ones are closed at once). `uvicorn_config` builds the server's configuration with these, the
keep-alive timeout and h11's header size bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from realrun.cloud.endpoints import OneLineLog
from realrun.cloud.guards import ClientCounter
from realrun.cloud.settings import ServerSettings


def guarded_protocol(settings: ServerSettings, log: OneLineLog) -> type[H11Protocol]:
    """An H11Protocol class with the header deadline and per-client cap of `settings`."""
    connections = ClientCounter(settings.max_connections_per_client)
    header_timeout_s = settings.header_timeout_s

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol, plus a header deadline and a connection cap per client."""

        header_timer: asyncio.TimerHandle | None = None
        counted: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else "?"
            if not connections.take(host):
                log.note(
                    "connections",
                    f"client {host}: {connections.limit} connections open; one more closed",
                )
                transport.close()
                return
            self.counted = host
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.header_timer is None and self.conn.their_state is h11.IDLE:
                self._arm()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.counted is not None:
                connections.give(self.counted)
                self.counted = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self.header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_late(self) -> None:
            self.header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                where = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
                log.note(
                    "slow-headers",
                    f"client {where}: no complete request headers within "
                    f"{header_timeout_s:g} s; connection closed",
                )
                self.transport.close()

    return GuardedH11Protocol


def uvicorn_config(
    app: Any, host: str = "127.0.0.1", port: int = 8600, **extra: Any
) -> uvicorn.Config:
    """uvicorn's configuration for an app made by realrun.cloud.server.create_app (its
    settings and log come from `app.state`); `extra`: more uvicorn.Config options."""
    settings: ServerSettings = app.state.settings
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "on"} | extra
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(settings, app.state.log),
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        **options,
    )


__all__ = ["guarded_protocol", "uvicorn_config"]
