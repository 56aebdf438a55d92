"""The cloud verification protocol: msgpack bodies, plain dicts, checked by small functions.

Every request and response body is one msgpack map (Content-Type `application/msgpack`).
Token ids are non-negative integers below the target's vocabulary size.

Rounds. The server keeps, per session, the *committed* tokens (their KV entries are in the
target's cache) and one *pending* token: the newest token of the sequence, known but not yet
evaluated. `open` prefills all prompt tokens but the last, which becomes the pending token, and
returns only the session id (no first token: the edge drafts it, and the first `verify` checks
it; `verify` with nothing uploaded is one plain target decode step). Each `verify` evaluates
[pending, d1..dk] in one batch, so row j of the logits predicts the token after input j.

- ``open``   ``{"prompt": [int, ...]}`` (1..max_prompt tokens)
  -> ``{"session": str, "n_prompt": int, "prefill_ms": float}``
- ``upload`` ``{"session": str, "tokens": [int, ...], "probs": [float, ...] | None}``
  (probs optional, one per token in [0, 1]: the draft's probability of each token, stored for
  sampling verification; greedy verification ignores them) -> ``{"pending": int}``, the number
  of tokens uploaded since the last verify.
- ``verify`` ``{"session": str, "n": int}``; `n` must equal the number uploaded since the last
  verify (a check that no upload was lost) -> ``{"accepted": int, "token": int,
  "target_ms": float, "energy_j": float | None}``. Greedy: `accepted` is the longest prefix of
  the draft tokens equal to the target's greedy tokens; `token` is the target's greedy token at
  the first mismatch (the correction), or after the last draft token when all were accepted
  (the bonus). `target_ms` is the wall time of the target's batch evaluation plus the argmax;
  `energy_j` is None on the CPU (no energy meter).
- ``close``  ``{"session": str}`` -> ``{"closed": true}``

Errors come back as ``{"error": str}`` with a 4xx status: 400 undecodable body, 401 missing or
wrong shared secret, 404 unknown session, 413 body too large, 415 wrong content type, 422 a
field missing, of the wrong type or out of range, 429 rate or session limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack

CONTENT_TYPE = "application/msgpack"
TOKEN_HEADER = "X-PipeSD-Token"


class ProtocolError(Exception):
    """A request the server refuses: `status` is the HTTP status (4xx), `message` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may hold (checked before the model sees anything)."""

    n_vocab: int
    max_prompt: int = 1024
    max_upload: int = 64
    """Most draft tokens uploaded between two verifies (one batch evaluation)."""
    max_body_bytes: int = 64 * 1024
    max_session_len: int = 2048
    """Most tokens in one session (prompt + generated): the target's context size."""


def encode(obj: dict[str, Any]) -> bytes:
    """One message as msgpack bytes."""
    return msgpack.packb(obj, use_bin_type=True)


def decode(body: bytes, max_len: int = 1 << 20) -> dict[str, Any]:
    """A request body as a dict with string keys; ProtocolError(400) if it is not one."""
    if not body:
        raise ProtocolError(400, "empty body (expected one msgpack map)")
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_str_len=max_len,
            max_bin_len=max_len,
            max_array_len=max_len,
            max_map_len=64,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, ...)
        raise ProtocolError(400, f"body is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ProtocolError(400, "body must be a msgpack map with string keys")
    return obj


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(obj: dict[str, Any], name: str) -> Any:
    if name not in obj:
        raise ProtocolError(422, f"missing field {name!r}")
    return obj[name]


def session_id(obj: dict[str, Any]) -> str:
    sid = _field(obj, "session")
    if not isinstance(sid, str) or not 0 < len(sid) <= 64:
        raise ProtocolError(422, "'session' must be a non-empty string of at most 64 chars")
    return sid


def token_list(value: Any, name: str, limits: Limits, min_len: int, max_len: int) -> list[int]:
    if not isinstance(value, list):
        raise ProtocolError(422, f"{name!r} must be a list of token ids")
    if not min_len <= len(value) <= max_len:
        raise ProtocolError(422, f"{name!r} must hold {min_len}..{max_len} tokens")
    for t in value:
        if not _int(t) or not 0 <= t < limits.n_vocab:
            raise ProtocolError(
                422, f"{name!r}: token ids must be integers in [0, {limits.n_vocab})"
            )
    return list(value)


def parse_open(obj: dict[str, Any], limits: Limits) -> list[int]:
    """The prompt token ids of an `open` request."""
    return token_list(_field(obj, "prompt"), "prompt", limits, 1, limits.max_prompt)


def parse_upload(obj: dict[str, Any], limits: Limits) -> tuple[str, list[int], list[float] | None]:
    """(session, draft token ids, draft probabilities or None) of an `upload` request."""
    sid = session_id(obj)
    tokens = token_list(_field(obj, "tokens"), "tokens", limits, 1, limits.max_upload)
    probs = obj.get("probs")
    if probs is None:
        return sid, tokens, None
    if not isinstance(probs, list) or len(probs) != len(tokens):
        raise ProtocolError(422, "'probs' must be a list with one probability per token")
    out = []
    for p in probs:
        if isinstance(p, bool) or not isinstance(p, int | float):
            raise ProtocolError(422, "'probs' must hold numbers")
        p = float(p)
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ProtocolError(422, "'probs' must hold probabilities in [0, 1]")
        out.append(p)
    return sid, tokens, out


def parse_verify(obj: dict[str, Any], limits: Limits) -> tuple[str, int]:
    """(session, number of uploaded tokens to verify) of a `verify` request."""
    sid = session_id(obj)
    n = _field(obj, "n")
    if not _int(n) or not 0 <= n <= limits.max_upload:
        raise ProtocolError(422, f"'n' must be an integer in [0, {limits.max_upload}]")
    return sid, n


def parse_close(obj: dict[str, Any], limits: Limits) -> str:
    """The session of a `close` request."""
    return session_id(obj)


def check_verify_result(obj: Any) -> dict[str, Any]:
    """A verify response, checked (used by the client): ValueError if malformed."""
    if not isinstance(obj, dict):
        raise ValueError("verify response is not a map")
    if not _int(obj.get("accepted")) or obj["accepted"] < 0 or not _int(obj.get("token")):
        raise ValueError(f"verify response lacks integer 'accepted'/'token': {obj!r}")
    return obj


__all__ = [
    "CONTENT_TYPE",
    "TOKEN_HEADER",
    "Limits",
    "ProtocolError",
    "check_verify_result",
    "decode",
    "encode",
    "parse_close",
    "parse_open",
    "parse_upload",
    "parse_verify",
]
