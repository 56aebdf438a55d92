"""A small synchronous client for the cloud verification server (httpx, msgpack bodies)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import msgpack
import numpy as np

from realrun.protocol import CONTENT_TYPE, TOKEN_HEADER, check_verify_result, encode, encode_rows

Dist = tuple[Sequence[int], Sequence[float]]
"""A draft distribution: (token ids, their probabilities)."""

Rows = tuple[np.ndarray, int]
"""Full draft distributions (tokens x n_vocab probabilities) and the bytes per probability
they travel in (2, 4 or 8: float16/32/64, realrun.protocol `rows`)."""


def _drafts(
    tokens: Sequence[int],
    probs: Sequence[float] | None,
    dists: Sequence[Dist] | None,
    rows: Rows | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"tokens": [int(t) for t in tokens]}
    if probs is not None:
        body["probs"] = [float(p) for p in probs]
    if dists is not None:
        body["dists"] = [[[int(i) for i in ids], [float(p) for p in ps]] for ids, ps in dists]
    if rows is not None:
        body |= encode_rows(*rows)
    return body


def _extra(**fields: int | None) -> dict[str, int]:
    """The optional integer fields that are set."""
    return {name: int(value) for name, value in fields.items() if value is not None}


def _outcome(outcome: tuple[int, int] | None) -> dict[str, list[int]]:
    """The `outcome` field (the edge's decision on a top-K verify answer), if there is one."""
    return {} if outcome is None else {"outcome": [int(outcome[0]), int(outcome[1])]}


class CloudError(RuntimeError):
    """The server refused a request (`status` is the HTTP status, `message` its reason)."""

    def __init__(self, status: int, message: str, path: str) -> None:
        super().__init__(f"{path}: HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.path = path


KEEPALIVE_EXPIRY_S = 2.0
"""The client drops a connection idle this long, well before the server closes it
(realrun.cloud.settings.ServerSettings.keep_alive_s, 5 s): with equal timeouts a request sent
on a connection the server is closing fails ("Server disconnected without sending a
response"), and the edge took that for a lost cloud (runs 16 and 18, one request each)."""


class CloudClient:
    """`CloudClient("http://127.0.0.1:8600", token)`: open/upload/verify/close return dicts.

    Network failures raise httpx's exceptions (httpx.TransportError); refused requests raise
    CloudError. `transport` replaces httpx's own (realrun.link.shaping's software shaper is one).
    Use as a context manager, or call `shutdown()`.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE}
        if token:
            headers[TOKEN_HEADER] = token
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
        )

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        self.http.close()

    def _answer(self, response: httpx.Response, path: str) -> dict[str, Any]:
        try:
            obj = msgpack.unpackb(response.content, raw=False)
        except Exception:
            obj = None
        if response.status_code != 200:
            message = obj.get("error") if isinstance(obj, dict) else None
            raise CloudError(response.status_code, str(message or response.text[:200]), path)
        if not isinstance(obj, dict):
            raise CloudError(response.status_code, "response is not a msgpack map", path)
        return obj

    def _post(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/v1/{name}"
        return self._answer(self.http.post(path, content=encode(body)), path)

    def health(self) -> dict[str, Any]:
        return self._answer(self.http.get("/v1/health"), "/v1/health")

    def open(
        self,
        prompt: Sequence[int],
        synthetic_accepted: Sequence[bool | int] | None = None,
        sampling: tuple[float, int] | None = None,
        top_k: int = 0,
        plan: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Open a session: greedy, or `synthetic_accepted` verdicts per output position, or
        `sampling` = (temperature, seed); with `sampling`, `top_k` > 0 asks for the target's
        top-K rows instead of the server's decision (PicoSpec's edge-side verification).
        `plan`: the session's seat in a DiP-SD plan (realrun.protocol, `open`)."""
        body: dict[str, Any] = {"prompt": [int(t) for t in prompt]}
        if plan is not None:
            body["plan"] = plan
        if synthetic_accepted is not None:
            body["synthetic"] = {"accepted": [int(bool(v)) for v in synthetic_accepted]}
        if sampling is not None:
            body["sampling"] = {"temperature": float(sampling[0]), "seed": int(sampling[1])}
            if top_k:
                body["sampling"]["top_k"] = int(top_k)
        elif top_k:
            raise ValueError("CloudClient.open: top_k needs sampling (temperature, seed)")
        return self._post("open", body)

    def upload(
        self,
        session: str,
        tokens: Sequence[int],
        probs: Sequence[float] | None = None,
        dists: Sequence[Dist] | None = None,
        seq: int | None = None,
        at: int | None = None,
        after: int | None = None,
        rows: Rows | None = None,
        outcome: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """Upload drafts; `seq` orders the request, `at` + `after` make it conditional on the
        session's `after`-th verify (realrun.protocol, realrun.cloud.ordering); `rows`: the
        drafts' full distributions (PipeSD's payload); `outcome`: the edge's (accepted,
        token) for the last top-K verify (edge-side verification)."""
        body = {"session": session, **_drafts(tokens, probs, dists, rows)}
        body |= _extra(seq=seq, at=at, after=after) | _outcome(outcome)
        return self._post("upload", body)

    def verify(
        self,
        session: str,
        n: int,
        tokens: Sequence[int] | None = None,
        probs: Sequence[float] | None = None,
        dists: Sequence[Dist] | None = None,
        seq: int | None = None,
        rows: Rows | None = None,
        outcome: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """Verify the `n` tokens uploaded since the last verify, `tokens` (sent along, with
        their full `rows` if given) included; `outcome` as for `upload`."""
        body: dict[str, Any] = {"session": session, "n": int(n), **_extra(seq=seq)}
        body |= _outcome(outcome)
        if tokens is not None:
            body |= _drafts(tokens, probs, dists, rows)
        return check_verify_result(self._post("verify", body))

    def close(self, session: str, seq: int | None = None) -> dict[str, Any]:
        return self._post("close", {"session": session, **_extra(seq=seq)})


__all__ = ["CloudClient", "CloudError", "Rows"]
