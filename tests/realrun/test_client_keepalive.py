"""The edge's client never reuses a connection the server may be closing (issue 19's long run
lost the cloud once: httpx's and uvicorn's keep-alive timeouts were both 5 s)."""

import pytest

pytest.importorskip("msgpack", reason="needs the 'realrun' extra")

from realrun.cloud.settings import ServerSettings
from realrun.edge.client import KEEPALIVE_EXPIRY_S, CloudClient


def test_client_drops_idle_connections_well_before_the_server_closes_them() -> None:
    assert ServerSettings().keep_alive_s / 2 >= KEEPALIVE_EXPIRY_S
    with CloudClient("http://127.0.0.1:9") as client:
        pool = client.http._transport._pool  # httpx's connection pool (httpcore)
        assert pool._keepalive_expiry == KEEPALIVE_EXPIRY_S
