"""What the cloud server needs of a target model: the `TargetBackend` protocol.

The server (realrun.cloud.server and its handlers) talks to its target only through this
protocol, so the llama.cpp target (realrun.cloud.llama_target), the torch target
(realrun.cloud.torch_target) and the synthetic target (realrun.cloud.synthetic_target) are
interchangeable. Every backend keeps per-session state in `Session` objects and answers each
verification with a `VerifyResult`. Backends are not thread-safe: the server serialises calls
into one backend with a lock.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from realrun.cloud.verifier import Greedy, Rule, SparseDist


@dataclass
class Session:
    """One session's tokens as the target holds them (realrun.protocol's pending-token scheme)."""

    committed: list[int]
    """Tokens whose KV entries belong in the cache (all but the pending one)."""
    pending: int
    """The newest token of the sequence, not yet evaluated."""
    n_prompt: int = 0
    """Prompt length: output position of a token = its sequence index - n_prompt."""
    rule: Rule = field(default_factory=Greedy)
    uploaded: list[int] = field(default_factory=list)
    probs: list[float | None] = field(default_factory=list)
    dists: list[SparseDist | None] = field(default_factory=list)

    @classmethod
    def opened(cls, prompt: list[int], rule: Rule | None) -> Session:
        """A new session holding `prompt`: all but its last token committed, the last one
        pending; verified under `rule` (None: Greedy)."""
        return cls(
            committed=list(prompt[:-1]),
            pending=int(prompt[-1]),
            n_prompt=len(prompt),
            rule=rule if rule is not None else Greedy(),
        )

    @property
    def length(self) -> int:
        return len(self.committed) + 1

    def add_drafts(
        self, tokens: list[int], probs: list[float] | None, dists: list[SparseDist] | None
    ) -> int:
        """Append uploaded drafts (their probabilities and distributions, if sent): the number
        uploaded since the last verification."""
        self.uploaded.extend(tokens)
        self.probs.extend(probs if probs is not None else [None] * len(tokens))
        self.dists.extend(dists if dists is not None else [None] * len(tokens))
        return len(self.uploaded)

    def commit(self, accepted: int, token: int) -> None:
        """After a verification: the pending token and the accepted drafts are committed,
        `token` becomes the pending one, the uploads are cleared."""
        self.committed.extend([self.pending, *self.uploaded[:accepted]])
        self.pending = token
        self.uploaded, self.probs, self.dists = [], [], []

    @property
    def generated(self) -> int:
        """Output tokens in the sequence so far (the pending one included): d1's position."""
        return self.length - self.n_prompt


@dataclass(frozen=True)
class VerifyResult:
    """One session's verification: drafts kept, next token, and what the batch cost."""

    accepted: int
    token: int
    target_ms: float
    """Wall time of the batch this verification was part of (forward + acceptance rule)."""
    batch_size: int = 1
    """Verifications evaluated in that one batch."""


class SessionBook:
    """What every backend does alike with its sessions: ids, `Session` objects, uploads."""

    sessions: dict[str, Session]

    def _add_session(self, prompt: list[int], rule: Rule | None) -> str:
        """Record a new session (Session.opened) under a fresh random id; the id."""
        sid = secrets.token_hex(16)
        self.sessions[sid] = Session.opened(prompt, rule)
        return sid

    def upload(
        self,
        sid: str,
        tokens: list[int],
        probs: list[float] | None,
        dists: list[SparseDist] | None = None,
    ) -> int:
        """Append draft tokens (with their draft distributions: sampling sessions) to `sid`'s
        next verification: the number uploaded since the last verify."""
        return self.sessions[sid].add_drafts(tokens, probs, dists)


@runtime_checkable
class TargetBackend(Protocol):
    """A target model serving verification sessions (see the module docstring).

    Sizes: `n_vocab` token ids, `n_ctx` tokens per session, `n_batch` positions per forward
    (the server keeps uploads below it). `model_name`: what /v1/health reports.
    `supports_rules`: synthetic and sampling sessions work (else greedy only).
    `max_verify_batch`: most sessions one `verify_batch` call evaluates together (1: the
    backend verifies one session at a time; the server then never batches).
    """

    n_vocab: int
    n_ctx: int
    n_batch: int
    model_name: str
    supports_rules: bool
    max_verify_batch: int
    sessions: dict[str, Session]

    def open(self, prompt: list[int], rule: Rule | None = None) -> tuple[str, float]:
        """A new session holding `prompt` (all but its last token prefilled): (id, ms)."""

    def upload(
        self,
        sid: str,
        tokens: list[int],
        probs: list[float] | None,
        dists: list[SparseDist] | None = None,
    ) -> int:
        """Append drafts to `sid`'s next verification: the number uploaded since the last."""

    def verify_batch(self, sids: list[str]) -> list[VerifyResult]:
        """Verify the uploads of distinct sessions, one result each, in order."""

    def drop(self, sid: str) -> None:
        """Forget a session and free what it held."""

    def close(self) -> None:
        """Release the model."""


__all__ = ["Session", "SessionBook", "TargetBackend", "VerifyResult"]
