"""The target model of the cloud server: one llama.cpp model, greedy verification, sessions.

One `Llama` context (CPU here), loaded like calibrate/draft.py (`logits_all=False`), but the
batches are built directly (`_batch.set_batch(..., logits_all=True)` + `_ctx.decode`) so one
verification of [pending, d1..dk] gets all k+1 logit rows with `get_logits_ith(i)`, without
the n_ctx x n_vocab score buffer `logits_all=True` would allocate.

KV cache (see realrun.protocol for the pending-token scheme). The context holds the KV entries
of one *resident* session at a time, at positions 0..len(committed)-1 of sequence 0. After a
verification that accepted n of k drafts, positions past the accepted prefix are removed with
`llama._ctx.kv_cache_seq_rm(0, p0, -1)` (llama_memory_seq_rm in llama-cpp-python 0.3.x), and
`n_tokens` is set back: no recomputation. When a request is for another session, the cache is
cleared and that session's committed tokens re-prefilled (correctness first: each session
keeps its token list; one llama.cpp sequence, so sessions never see each other's KV).

Not thread-safe: the server serialises calls with a lock.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Session:
    committed: list[int]
    """Tokens whose KV entries belong in the cache (all but the pending one)."""
    pending: int
    """The newest token of the sequence, not yet evaluated."""
    uploaded: list[int] = field(default_factory=list)
    probs: list[float | None] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.committed) + 1


@dataclass(frozen=True)
class VerifyResult:
    accepted: int
    token: int
    target_ms: float


class LlamaTarget:
    """A GGUF target model with per-session KV state and greedy verification.

    Flash attention is on (as in calibrate.acceptance): with llama.cpp's default CPU attention,
    a batched verification and one-token-at-a-time decoding give slightly different logits, so
    the target's greedy output would depend on how it is evaluated.
    """

    def __init__(self, model_path: Path | str, threads: int, n_ctx: int = 2048) -> None:
        import llama_cpp

        self.model_path = Path(model_path)
        self.llama: Any = llama_cpp.Llama(
            model_path=str(self.model_path),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=n_ctx,
            logits_all=False,
            flash_attn=True,
            verbose=False,
            seed=0,
        )
        self.n_vocab = int(self.llama.n_vocab())
        self.n_ctx = int(self.llama.n_ctx())
        self.n_batch = int(self.llama.n_batch)
        self.sessions: dict[str, Session] = {}
        self.resident: str | None = None

    def close(self) -> None:
        self.llama.close()

    # ---------------------------------------------------------------- llama.cpp plumbing

    def _decode(self, tokens: list[int], all_logits: bool) -> None:
        """Evaluate `tokens` after the cache's n_tokens (batches of n_batch)."""
        llama = self.llama
        for i in range(0, len(tokens), self.n_batch):
            batch = tokens[i : i + self.n_batch]
            n_past = llama.n_tokens
            llama._batch.set_batch(batch=batch, n_past=n_past, logits_all=all_logits)
            llama._ctx.decode(llama._batch)
            llama.input_ids[n_past : n_past + len(batch)] = batch
            llama.n_tokens += len(batch)

    def _row(self, i: int) -> np.ndarray:
        pointer = self.llama._ctx.get_logits_ith(i)
        if not pointer:
            raise RuntimeError(f"llama.cpp returned no logits for output row {i}")
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def _truncate(self, n: int) -> None:
        """Keep the first n cache positions (KV rollback)."""
        self.llama._ctx.kv_cache_seq_rm(0, n, -1)
        self.llama.n_tokens = n

    def _make_resident(self, sid: str) -> Session:
        session = self.sessions[sid]
        if self.resident != sid:
            self.llama.reset()
            self.llama._ctx.kv_cache_clear()
            self.resident = None
            if session.committed:
                self._decode(session.committed, all_logits=False)
            self.resident = sid
        return session

    # ---------------------------------------------------------------- sessions

    def open(self, prompt: list[int]) -> tuple[str, float]:
        """A new session holding `prompt` (all but the last token prefilled): (id, ms)."""
        sid = secrets.token_hex(16)
        self.sessions[sid] = Session(committed=list(prompt[:-1]), pending=int(prompt[-1]))
        start = time.perf_counter()
        try:
            self._make_resident(sid)
        except Exception:
            self.sessions.pop(sid, None)
            self.resident = None
            raise
        return sid, 1e3 * (time.perf_counter() - start)

    def upload(self, sid: str, tokens: list[int], probs: list[float] | None) -> int:
        session = self.sessions[sid]
        session.uploaded.extend(tokens)
        session.probs.extend(probs if probs is not None else [None] * len(tokens))
        return len(session.uploaded)

    def verify(self, sid: str) -> VerifyResult:
        """Greedy verification of everything uploaded since the last verify."""
        session = self._make_resident(sid)
        drafts = session.uploaded
        base = len(session.committed)
        start = time.perf_counter()
        try:
            self._decode([session.pending, *drafts], all_logits=True)
        except Exception:
            self._truncate(base)
            raise
        accepted = 0
        token = int(np.argmax(self._row(0)))
        for j, d in enumerate(drafts, start=1):
            if d != token:
                break
            accepted += 1
            token = int(np.argmax(self._row(j)))
        elapsed = time.perf_counter() - start
        session.committed.extend([session.pending, *drafts[:accepted]])
        session.pending = token
        session.uploaded = []
        session.probs = []
        self._truncate(len(session.committed))
        return VerifyResult(accepted=accepted, token=token, target_ms=1e3 * elapsed)

    def drop(self, sid: str) -> None:
        self.sessions.pop(sid)
        if self.resident == sid:
            self.resident = None


__all__ = ["LlamaTarget", "Session", "VerifyResult"]
