"""The cloud verification protocol: msgpack bodies, plain dicts, checked by small functions.

Every request and response body is one msgpack map (Content-Type `application/msgpack`).
Token ids are non-negative integers below the target's vocabulary size.

Rounds. The server keeps, per session, the *committed* tokens (their KV entries are in the
target's cache) and one *pending* token: the newest token of the sequence, known but not yet
evaluated. `open` prefills all prompt tokens but the last, which becomes the pending token, and
returns only the session id (no first token: the edge drafts it, and the first `verify` checks
it; `verify` with nothing uploaded is one plain target decode step). Each `verify` evaluates
[pending, d1..dk] in one batch, so row j of the logits predicts the token after input j.

- ``open``   ``{"prompt": [int, ...], "synthetic"?: {"accepted": [0|1, ...]},
  "sampling"?: {"temperature": float, "seed": int}}`` (1..max_prompt tokens; at most one of
  the two options) -> ``{"session": str, "n_prompt": int, "prefill_ms": float}``. The options
  choose the session's verification rule (realrun.cloud.verifier): greedy by default; `synthetic`
  gives the acceptance verdict of each output position (0 = first generated token, positions
  past the list are rejections; at most max_session_len entries); `sampling` asks for
  speculative sampling at `temperature` in (0, 100] with a session Generator seeded by `seed`
  in [0, 2**63). ``"plan"?: {"batches": [[int, ...], ...], "edge": int, "last": bool}``
  seats the session in a DiP-SD plan (realrun.cloud.batching.parse_plan): its verifies wait for
  their batch's turn (policies/dipsd/turns.py), and closing the edge's `last` session retires it.
- ``upload`` ``{"session": str, "tokens": [int, ...], "probs"?: [float, ...],
  "dists"?: [[[int, ...], [float, ...]], ...]}`` -> ``{"pending": int}``, the number of tokens
  uploaded since the last verify. `probs` (one per token in [0, 1]): the draft's probability of
  each token, stored (no rule uses it: sampling takes q(d) from `dists`). `dists` (one per
  token): the draft distribution the token was drawn from, as [ids, probs] (distinct ids, 1..V
  of them, probabilities in [0, 1], renormalised over the ids by the server; the token must
  be among the ids with p > 0); required by a sampling session for every token, refused by
  the others. ``"rows": bin, "row_bytes": 2|4|8`` (optional, together): PipeSD's full
  draft distributions, one probability row over the whole vocabulary per token, packed as
  little-endian float16/float32/float64 (n_tokens x n_vocab x row_bytes bytes); each row
  finite, in [0, 1], summing to 1 within 1 %, and giving its token p > 0. Any rule accepts
  them; the rules use the ids (greedy) or `dists` (sampling), so rows are checked and
  carried, not used: they are the bytes PipeSD's regime puts on the link.
- ``verify`` ``{"session": str, "n": int, "tokens"?: [...], "probs"?: [...],
  "dists"?: [...]}``: the optional fields (same rules as upload, 0..max_upload tokens) are
  appended to the session's uploads first, so one request can carry a whole NAV. `n` must
  equal the number of tokens uploaded since the last verify, these included (a check that no
  upload was lost); the max_upload limit applies to that total. -> ``{"accepted": int,
  "token": int, "target_ms": float, "energy_j": float | None, "batch_size": int}``. `accepted`
  is the number of leading drafts the rule keeps; `token` is the rule's next token: the
  correction at the first rejection, or the bonus after the last draft (greedy: the target's
  argmax). Concurrent verifies of different sessions may be evaluated in one batch:
  `batch_size` says how many were, and `target_ms` is that batch's wall time (forward pass
  plus acceptance rules). `energy_j` is the target GPU's energy over the batch (NVML counter
  delta) divided by `batch_size`, None where no meter exists (the CPU).
- ``close``  ``{"session": str}`` -> ``{"closed": true}``

Edge-side verification (PicoSpec). `sampling` may carry ``"top_k": int`` (1..max_top_k; 0
or absent: the server verifies as above). Such a session's uploads carry token ids only (no
`dists`), and each verify answers ``{"topk": [[[ids], [probs]], ...], "target_ms", ...}``
instead of `accepted`/`token`: the target's top-K (decreasing probability, not
renormalised) of softmax(row / temperature) at each of the n verified positions plus the
bonus one. The edge decides (realrun.edge.topk_verify) and its next `upload` or `verify`
must carry ``"outcome": [accepted, token]`` (token among the top-K sent at position
`accepted`); the server then keeps `accepted` drafts and makes `token` the pending one. A
missing, unexpected or out-of-range outcome is a 422.

Ordering and speculative uploads (realrun.cloud.ordering). `upload`, `verify` and `close` may carry
``"seq": int`` (0, 1, 2, ... per session, in [0, 2**31)): numbered requests are applied in
that order whatever connection brought them (a request waits for its turn, 409 after the
server's timeout or for a number already used), so an edge can upload while its verify is in
flight. An `upload` may be *conditional*: ``"at": int`` (output position of its first token)
and ``"after": int`` (the session's verify count it was drafted behind, >= 1; needs `at`).
It is kept only if that verify accepted all its tokens and every position the server already
holds (the pending answer token first: greedy and sampling compare ids, synthetic sessions the
position's verdict) holds the same token; the held positions are skipped and the rest
appended. Otherwise it is *stale*: nothing is appended, nor from later uploads behind the same
verify. The upload answer is ``{"pending": int, "kept": int, "stale": bool, "queued_ms":
float}`` (`kept`: tokens appended; `queued_ms`: time the request waited for its turn and the
model); a verify answer has `queued_ms` too.

Requests of one session are applied one at a time: an unnumbered request waits while a
numbered one of its session holds its turn, and at most a few requests per session may wait
(429 past the server's bound).

Errors come back as ``{"error": str}``: 400 undecodable body, 401 missing or wrong shared
secret, 404 unknown session (closed, expired after the server's idle timeout, or never
opened), 408 body not received in time, 409 `seq` used, too far ahead or never reached, 413
body too large, 415 wrong content type, 422 a field missing, of the wrong type or out of
range, 429 rate, session, in-flight or waiting limit (with Retry-After), 503 the server holds
too many request bytes right now (with Retry-After). The limits and timeouts:
realrun.cloud.settings, reported by /v1/health under "settings".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from realrun.cloud.verifier import Rule, Sampling, SparseDist, Synthetic, TopK

CONTENT_TYPE = "application/msgpack"
TOKEN_HEADER = "X-PipeSD-Token"
MAX_TEMPERATURE = 100.0
"""Highest sampling temperature accepted (any finite value works; this bounds nonsense)."""


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
    max_top_k: int = 256
    """Largest `sampling.top_k` (edge-side verification): a verify answer holds top_k
    (id, probability) pairs per verified position."""


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


def parse_open(obj: dict[str, Any], limits: Limits) -> tuple[list[int], Rule | None]:
    """(prompt token ids, verification rule or None for greedy) of an `open` request."""
    prompt = token_list(_field(obj, "prompt"), "prompt", limits, 1, limits.max_prompt)
    synthetic, sampling = obj.get("synthetic"), obj.get("sampling")
    if synthetic is not None and sampling is not None:
        raise ProtocolError(422, "'synthetic' and 'sampling' cannot be combined")
    if synthetic is not None:
        return prompt, _synthetic(synthetic, limits)
    if sampling is not None:
        return prompt, _sampling(sampling, limits)
    return prompt, None


def _synthetic(value: Any, limits: Limits) -> Synthetic:
    if not isinstance(value, dict) or set(value) != {"accepted"}:
        raise ProtocolError(422, "'synthetic' must be a map {'accepted': [0|1, ...]}")
    verdicts = value["accepted"]
    if not isinstance(verdicts, list) or len(verdicts) > limits.max_session_len:
        raise ProtocolError(
            422, f"'synthetic.accepted' must be a list of at most {limits.max_session_len} verdicts"
        )
    if not all(v in (0, 1) and (_int(v) or isinstance(v, bool)) for v in verdicts):
        raise ProtocolError(422, "'synthetic.accepted' must hold 0 or 1 (or booleans)")
    return Synthetic(tuple(bool(v) for v in verdicts))


def _sampling(value: Any, limits: Limits) -> Sampling | TopK:
    keys = {"temperature", "seed"}
    if not isinstance(value, dict) or not keys <= set(value) <= keys | {"top_k"}:
        raise ProtocolError(
            422, "'sampling' must be a map {'temperature': float, 'seed': int, 'top_k'?: int}"
        )
    temperature, seed = value["temperature"], value["seed"]
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ProtocolError(422, "'sampling.temperature' must be a number")
    if not (math.isfinite(temperature) and 0 < temperature <= MAX_TEMPERATURE):
        raise ProtocolError(422, f"'sampling.temperature' must be in (0, {MAX_TEMPERATURE}]")
    if not _int(seed) or not 0 <= seed < 2**63:
        raise ProtocolError(422, "'sampling.seed' must be an integer in [0, 2**63)")
    top_k = value.get("top_k", 0)
    if not _int(top_k) or not 0 <= top_k <= limits.max_top_k:
        raise ProtocolError(422, f"'sampling.top_k' must be an integer in [0, {limits.max_top_k}]")
    if top_k:
        return TopK(float(temperature), int(min(top_k, limits.n_vocab)))
    return Sampling(float(temperature), int(seed))


@dataclass(frozen=True)
class Drafts:
    """Draft tokens of an `upload` (or of a `verify` carrying them) and what comes with them."""

    tokens: list[int]
    probs: list[float] | None
    dists: list[SparseDist] | None
    rows: np.ndarray | None = None
    """Full draft distributions (tokens x n_vocab, float32), checked and carried (`rows`)."""


ROW_DTYPES = {2: "<f2", 4: "<f4", 8: "<f8"}
"""Bytes per probability of a `rows` field and their little-endian numpy dtypes."""
ROW_SUM_TOLERANCE = 0.01
"""How far a full row's sum may be from 1 (float16 rounding of 49,152 entries stays far
below)."""


def encode_rows(rows: np.ndarray, row_bytes: int) -> dict[str, Any]:
    """The `rows` and `row_bytes` fields for probability rows (tokens x n_vocab)."""
    if row_bytes not in ROW_DTYPES:
        raise ValueError(f"row_bytes must be one of {sorted(ROW_DTYPES)} (got {row_bytes!r})")
    data = np.ascontiguousarray(rows, dtype=ROW_DTYPES[row_bytes]).tobytes()
    return {"rows": data, "row_bytes": row_bytes}


def _rows(obj: dict[str, Any], tokens: list[int], limits: Limits) -> np.ndarray | None:
    """The checked `rows` of a request (None if it has none); 422 on any violation."""
    data, row_bytes = obj.get("rows"), obj.get("row_bytes")
    if data is None and row_bytes is None:
        return None
    if not isinstance(data, bytes) or row_bytes not in ROW_DTYPES or not _int(row_bytes):
        raise ProtocolError(
            422, f"'rows' must be msgpack binary with 'row_bytes' in {sorted(ROW_DTYPES)}"
        )
    if len(data) != len(tokens) * limits.n_vocab * row_bytes:
        raise ProtocolError(
            422, f"'rows' must hold {len(tokens)} x {limits.n_vocab} x {row_bytes} bytes"
        )
    values = np.frombuffer(data, dtype=ROW_DTYPES[row_bytes]).astype(np.float32)
    rows = values.reshape(len(tokens), limits.n_vocab)
    bounded = rows.min(initial=0.0) >= 0 and rows.max(initial=0.0) <= 1
    if not (np.all(np.isfinite(rows)) and bounded):
        raise ProtocolError(422, "'rows' must hold probabilities in [0, 1]")
    sums = rows.sum(axis=1, dtype=np.float64)
    if np.any(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE):
        raise ProtocolError(422, f"'rows': each row must sum to 1 (within {ROW_SUM_TOLERANCE:g})")
    if tokens and np.any(rows[np.arange(len(tokens)), tokens] <= 0):
        raise ProtocolError(422, "'rows': each draft token must have p > 0 in its row")
    return rows


def _probability(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(422, f"{name!r} must hold numbers")
    p = float(value)
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ProtocolError(422, f"{name!r} must hold probabilities in [0, 1]")
    return p


def _dist(value: Any, token: int, limits: Limits) -> SparseDist:
    """One `[[ids...], [probs...]]` draft distribution, renormalised over its ids."""
    if not isinstance(value, list) or len(value) != 2:
        raise ProtocolError(422, "'dists' entries must be [[ids...], [probs...]]")
    ids = token_list(value[0], "dists ids", limits, 1, limits.n_vocab)
    probs = value[1]
    if not isinstance(probs, list) or len(probs) != len(ids):
        raise ProtocolError(422, "'dists': one probability per id")
    if len(set(ids)) != len(ids):
        raise ProtocolError(422, "'dists': ids must be distinct")
    values = np.array([_probability(p, "dists probs") for p in probs])
    total = float(values.sum())
    if total <= 0:
        raise ProtocolError(422, "'dists': probabilities must not all be 0")
    where = np.flatnonzero(np.asarray(ids) == token)
    if where.size == 0 or values[where[0]] <= 0:
        raise ProtocolError(
            422, "'dists': each draft token must be among its distribution's ids with p > 0"
        )
    return SparseDist(np.asarray(ids, dtype=np.int64), values / total)


def parse_drafts(obj: dict[str, Any], limits: Limits, min_len: int = 1) -> Drafts:
    """The `tokens` and optional `probs` and `dists` of a request (see the module docstring)."""
    tokens = token_list(_field(obj, "tokens"), "tokens", limits, min_len, limits.max_upload)
    probs, dists = obj.get("probs"), obj.get("dists")
    if probs is not None:
        if not isinstance(probs, list) or len(probs) != len(tokens):
            raise ProtocolError(422, "'probs' must be a list with one probability per token")
        probs = [_probability(p, "probs") for p in probs]
    if dists is not None:
        if not isinstance(dists, list) or len(dists) != len(tokens):
            raise ProtocolError(422, "'dists' must be a list with one distribution per token")
        dists = [_dist(d, t, limits) for d, t in zip(dists, tokens, strict=True)]
    return Drafts(tokens, probs, dists, _rows(obj, tokens, limits))


def parse_outcome(obj: dict[str, Any], limits: Limits) -> tuple[int, int] | None:
    """The optional `outcome` [accepted, token] of an upload, verify or close: the edge's
    decision on its session's latest top-K verify answer (None: not carried)."""
    value = obj.get("outcome")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or not all(_int(v) for v in value):
        raise ProtocolError(422, "'outcome' must be [accepted, token] (two integers)")
    accepted, token = value
    if not 0 <= accepted <= limits.max_upload or not 0 <= token < limits.n_vocab:
        raise ProtocolError(
            422,
            f"'outcome': accepted in [0, {limits.max_upload}], token in [0, {limits.n_vocab})",
        )
    return int(accepted), int(token)


MAX_SEQ = 2**31
"""Bound of `seq` and `after` (any session ends long before)."""


def _optional_int(obj: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if not _int(value) or not low <= value < high:
        raise ProtocolError(422, f"{name!r} must be an integer in [{low}, {high})")
    return int(value)


def parse_seq(obj: dict[str, Any]) -> int | None:
    """The optional `seq` of an upload, verify or close (None: not ordered)."""
    return _optional_int(obj, "seq", 0, MAX_SEQ)


@dataclass(frozen=True)
class Upload:
    """A parsed `upload`: its drafts, order number, and condition (`after`, `at`) if any."""

    sid: str
    drafts: Drafts
    seq: int | None
    at: int | None
    after: int | None


def parse_upload(obj: dict[str, Any], limits: Limits) -> Upload:
    """An `upload` request, checked (see the module docstring)."""
    sid, drafts = session_id(obj), parse_drafts(obj, limits)
    at = _optional_int(obj, "at", 0, limits.max_session_len)
    after = _optional_int(obj, "after", 1, MAX_SEQ)
    if (at is None) != (after is None):
        raise ProtocolError(422, "'at' and 'after' come together (a conditional upload)")
    return Upload(sid, drafts, parse_seq(obj), at, after)


def parse_verify(obj: dict[str, Any], limits: Limits) -> tuple[str, int, Drafts | None]:
    """(session, tokens to verify, draft tokens carried by this request or None)."""
    sid = session_id(obj)
    n = _field(obj, "n")
    if not _int(n) or not 0 <= n <= limits.max_upload:
        raise ProtocolError(422, f"'n' must be an integer in [0, {limits.max_upload}]")
    if "tokens" not in obj:
        if any(name in obj for name in ("probs", "dists", "rows", "row_bytes")):
            raise ProtocolError(422, "'probs'/'dists'/'rows' need 'tokens'")
        return sid, n, None
    return sid, n, parse_drafts(obj, limits, min_len=0)


def parse_close(obj: dict[str, Any], limits: Limits) -> str:
    """The session of a `close` request."""
    return session_id(obj)


def _topk_row(row: Any) -> bool:
    """Whether `row` is [[ids...], [probs...]] of equal, non-zero length."""
    return (
        isinstance(row, list)
        and len(row) == 2
        and all(isinstance(part, list) for part in row)
        and 0 < len(row[0]) == len(row[1])
        and all(_int(i) and i >= 0 for i in row[0])
    )


def check_verify_result(obj: Any) -> dict[str, Any]:
    """A verify response, checked (used by the client): ValueError if malformed."""
    if not isinstance(obj, dict):
        raise ValueError("verify response is not a map")
    if "topk" in obj:
        rows = obj["topk"]
        if not isinstance(rows, list) or not rows or not all(_topk_row(r) for r in rows):
            raise ValueError(f"verify response has a bad 'topk': {obj!r}"[:300])
        return obj
    if not _int(obj.get("accepted")) or obj["accepted"] < 0 or not _int(obj.get("token")):
        raise ValueError(f"verify response lacks integer 'accepted'/'token': {obj!r}")
    if not _int(obj.get("batch_size", 1)) or obj.get("batch_size", 1) < 1:
        raise ValueError(f"verify response has a bad 'batch_size': {obj!r}")
    return obj


__all__ = [
    "CONTENT_TYPE",
    "TOKEN_HEADER",
    "Drafts",
    "Limits",
    "ProtocolError",
    "Upload",
    "check_verify_result",
    "decode",
    "encode",
    "encode_rows",
    "parse_close",
    "parse_drafts",
    "parse_open",
    "parse_outcome",
    "parse_seq",
    "parse_upload",
    "parse_verify",
]
