"""The link probe server: a bare ASGI app that counts request bodies and answers `?n=` bytes.

realrun.link.linkcheck starts it where a shaped link puts the cloud (inside the namespace for
tbf-netns). It imports only the standard library and uvicorn, so it starts in well under a
second: `python -m realrun.link.probeapp --host 127.0.0.1 --port 8650`.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import parse_qs

MAX_PROBE_BYTES = 256 * 1024 * 1024


async def probe_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI app: count the request body, answer with `n` zero bytes (query parameter)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    received, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        received += len(message.get("body", b""))
        more = message.get("more_body", False)
    text = parse_qs(scope["query_string"].decode()).get("n", ["0"])[0]
    size = int(text) if text.isdigit() else -1
    status, body = (200, bytes(size)) if 0 <= size <= MAX_PROBE_BYTES else (400, b"bad n")
    headers = [(b"content-type", b"application/octet-stream"), (b"x-received", b"%d" % received)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    """Serve the probe app until interrupted."""
    import uvicorn  # optional (extra 'realrun'): the server only when served

    parser = argparse.ArgumentParser(
        prog="realrun.link.probeapp", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(probe_app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
