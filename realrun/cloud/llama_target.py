"""The target model of the cloud server: one llama.cpp model, sessions in KV slots, batching.

A `llama_cpp.Llama` object holds the model and tokenizer; verification runs in a context of
its own with `kv_slots` sequences (`n_seq_max`, a non-unified KV cache of `n_ctx` cells per
sequence, flash attention on). Batches are built directly (one `llama_batch`, every position
with logits) so a verification of [pending, d1..dk] gets all k+1 logit rows with
`get_logits_ith(i)`, without the n_ctx x n_vocab score buffer `logits_all=True` allocates.

KV cache (see realrun.protocol for the pending-token scheme). A *resident* session owns one
slot (sequence id) holding its committed tokens at positions 0..len(committed)-1. After a
verification that accepted n of k drafts, the positions past the accepted prefix are removed
(`llama_memory_seq_rm`): no recomputation. A session without a slot takes a free one or the
least recently used one, whose owner is evicted (re-prefilled from its token list when it next
needs the model: correctness first). `verify_batch` evaluates several sessions' verifications
in ONE decode (distinct sequence ids), chunked only where they exceed the context's batch size
or the number of slots. Per-sequence KV streams keep each session's cells in its own order, so
a session's logits are bit-identical whether it is verified alone or in a batch (tested).

The acceptance rule of each session (greedy, synthetic or sampling) is realrun.cloud.verifier's,
applied to the logit rows. Not thread-safe: the server serialises calls with a lock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from realrun.cloud.backend import Session, SessionBook, VerifyResult
from realrun.cloud.verifier import Rule, decide


class LlamaTarget(SessionBook):
    """A GGUF target model with per-session KV slots and batched verification.

    `n_ctx`: context size per session; `kv_slots`: sessions kept in the KV cache at once (the
    cache holds n_ctx x kv_slots cells); `gpu_layers`: layers offloaded (-1 all) on a GPU build.

    Flash attention is on (as in calibrate.acceptance): with llama.cpp's default CPU attention,
    a batched verification and one-token-at-a-time decoding give slightly different logits, so
    the target's greedy output would depend on how it is evaluated.
    """

    supports_rules = True
    """Synthetic and sampling sessions work here (realrun.cloud.server checks this)."""
    max_verify_batch = 1 << 16
    """`verify_batch` takes any number of sessions (chunked by n_batch and kv_slots)."""

    def __init__(
        self,
        model_path: Path | str,
        threads: int,
        n_ctx: int = 2048,
        kv_slots: int = 1,
        gpu_layers: int = 0,
    ) -> None:
        import llama_cpp  # llama-cpp-python: optional, loaded only with a model
        from llama_cpp import _internals  # (the same package)

        if kv_slots < 1:
            raise ValueError(f"kv_slots must be >= 1 (got {kv_slots})")
        self.model_path = Path(model_path)
        self.model_name = self.model_path.name
        self.llama: Any = llama_cpp.Llama(
            model_path=str(self.model_path),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=32,  # its own context is unused (tokenizer and model only)
            n_gpu_layers=gpu_layers,
            logits_all=False,
            flash_attn=True,
            verbose=False,
            seed=0,
        )
        params = self.llama.context_params
        params.n_ctx = n_ctx * kv_slots
        params.n_seq_max = kv_slots
        params.kv_unified = False
        params.n_batch = params.n_ubatch = min(512, n_ctx * kv_slots)
        self.ctx: Any = _internals.LlamaContext(
            model=self.llama._model, params=params, verbose=False
        )
        self.batch: Any = _internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=1)
        self.n_vocab = int(self.llama.n_vocab())
        self.n_ctx = int(llama_cpp.llama_n_ctx_seq(self.ctx.ctx))
        self.n_batch = int(params.n_batch)
        self.kv_slots = kv_slots
        self.sessions: dict[str, Session] = {}
        self.slots: OrderedDict[str, int] = OrderedDict()
        """Resident sessions -> sequence id, least recently used first."""

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()
        self.llama.close()

    # ---------------------------------------------------------------- llama.cpp plumbing

    def _decode(self, parts: list[tuple[int, int, list[int]]], logits: bool) -> None:
        """One llama_decode of (sequence id, first position, tokens) parts (<= n_batch)."""
        batch, n = self.batch.batch, 0
        for seq, p0, tokens in parts:
            for i, t in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = t, p0 + i, 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = logits
                n += 1
        batch.n_tokens = n
        self.ctx.decode(self.batch)

    def _row(self, i: int) -> np.ndarray:
        pointer = self.ctx.get_logits_ith(i)
        if not pointer:
            raise RuntimeError(f"llama.cpp returned no logits for output row {i}")
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def _row_at(self, offset: int, j: int) -> np.ndarray:
        return self._row(offset + j)

    def _truncate(self, sid: str, n: int) -> None:
        """Keep the first n cache positions of a resident session (KV rollback)."""
        self.ctx.kv_cache_seq_rm(self.slots[sid], n, -1)

    def _evict(self, sid: str) -> None:
        seq = self.slots.pop(sid)
        self.ctx.kv_cache_seq_rm(seq, -1, -1)

    def _make_resident(self, sids: list[str]) -> None:
        """Give each session a slot holding its committed tokens (LRU eviction, re-prefill)."""
        for sid in sids:
            if sid in self.slots:
                self.slots.move_to_end(sid)
                continue
            used = set(self.slots.values())
            free = [s for s in range(self.kv_slots) if s not in used]
            if not free:
                victim = next(s for s in self.slots if s not in sids)
                free = [self.slots[victim]]
                self._evict(victim)
            self.slots[sid] = free[0]
            committed = self.sessions[sid].committed
            try:
                for i in range(0, len(committed), self.n_batch):
                    self._decode([(free[0], i, committed[i : i + self.n_batch])], logits=False)
            except Exception:
                self._evict(sid)
                raise

    # ---------------------------------------------------------------- sessions

    def open(self, prompt: list[int], rule: Rule | None = None) -> tuple[str, float]:
        """A new session holding `prompt` (all but the last token prefilled): (id, ms)."""
        sid = self._add_session(prompt, rule)
        start = time.perf_counter()
        try:
            self._make_resident([sid])
        except Exception:
            self.sessions.pop(sid, None)
            raise
        return sid, 1e3 * (time.perf_counter() - start)

    def verify(self, sid: str) -> VerifyResult:
        """Verification of everything uploaded since the last verify, under the session rule."""
        return self.verify_batch([sid])[0]

    def verify_batch(self, sids: list[str]) -> list[VerifyResult]:
        """Verify several (distinct) sessions, as few llama_decode calls as fit: one usually."""
        if len(set(sids)) != len(sids):
            raise ValueError("verify_batch: a session appears twice")
        results: dict[str, VerifyResult] = {}
        group: list[str] = []
        size = 0
        for sid in sids:
            n = len(self.sessions[sid].uploaded) + 1
            if group and (size + n > self.n_batch or len(group) == self.kv_slots):
                results.update(self._verify_group(group))
                group, size = [], 0
            group.append(sid)
            size += n
        if group:
            results.update(self._verify_group(group))
        return [results[sid] for sid in sids]

    def _verify_group(self, sids: list[str]) -> dict[str, VerifyResult]:
        self._make_resident(sids)
        sessions = [self.sessions[sid] for sid in sids]
        for sid, s in zip(sids, sessions, strict=True):  # a top-K outcome may have rolled back
            self._truncate(sid, len(s.committed))
        parts = [
            (self.slots[sid], len(s.committed), [s.pending, *s.uploaded])
            for sid, s in zip(sids, sessions, strict=True)
        ]
        start = time.perf_counter()
        decisions, offset = [], 0
        try:
            self._decode(parts, logits=True)
            for s, (_, _, tokens) in zip(sessions, parts, strict=True):
                rows = partial(self._row_at, offset)
                decisions.append(decide(s.rule, rows, s.uploaded, s.generated, s.dists))
                offset += len(tokens)
        except Exception:
            for sid, s in zip(sids, sessions, strict=True):
                self._truncate(sid, len(s.committed))
            raise
        elapsed_ms = 1e3 * (time.perf_counter() - start)
        out = {}
        for sid, s, (accepted, token) in zip(sids, sessions, decisions, strict=True):
            s.commit(accepted, token)
            self._truncate(sid, len(s.committed))
            out[sid] = VerifyResult(accepted, token, elapsed_ms, len(sids))
        return out

    def drop(self, sid: str) -> None:
        """Forget a session and free its KV slot."""
        self.sessions.pop(sid)
        if sid in self.slots:
            self._evict(sid)


__all__ = ["LlamaTarget", "Session", "VerifyResult"]
