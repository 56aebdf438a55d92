"""A target model without a model: seeded logits, real verification rules, modelled timing.

For load tests and demos of the cloud server (`pipesd realrun cloud --synthetic-target
--profile P`): it speaks the whole protocol through realrun.cloud.backend.TargetBackend, and
verification applies realrun.cloud.verifier.decide (greedy, synthetic verdicts or speculative
sampling) to logit rows. The "model": the token after token t at sequence index i is
`next_token(t, i)`, a seeded hash; row j of a verification is seeded noise with a clear peak
at that token, built only when a rule reads rows (sampling), so greedy and synthetic sessions
cost no vocabulary-sized work. Greedy decoding through the server therefore reproduces
`next_token`'s chain exactly, a losslessness check without a model.

Timing comes from a profile's target latency model (simulator.profile.TargetLatency): an open
takes prefill_s(prompt length), a batch of verifications takes forward_s(new positions,
context, batch size); the calling thread sleeps until that much wall time has passed (the
server holds its model lock meanwhile, as a real target would keep the device busy).
"""

from __future__ import annotations

import time

import numpy as np
from numpy.typing import NDArray

from realrun.cloud.backend import Session, SessionBook, VerifyResult
from realrun.cloud.verifier import Rule, decide
from simulator.profile import TargetLatency

MASK64 = (1 << 64) - 1
PEAK = 8.0
"""How far the peak token's logit stands above the noise's largest (a confident model)."""


def mix64(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


class SyntheticTarget(SessionBook):
    """A TargetBackend with seeded logits and a profile's latency (see the module docstring).

    `n_vocab`, `n_ctx`: sizes as a model's; `max_verify`: most drafts per verification;
    `latency`: the profile's target latency model (None: no modelled time, as fast as the
    host goes); `seed`: which synthetic "model".
    """

    supports_rules = True
    max_verify_batch = 1 << 16

    def __init__(
        self,
        n_vocab: int = 49152,
        n_ctx: int = 2048,
        latency: TargetLatency | None = None,
        seed: int = 0,
        max_verify: int = 64,
        model_name: str = "synthetic",
    ) -> None:
        if n_vocab < 2 or n_ctx < 2 or max_verify < 1:
            raise ValueError("n_vocab and n_ctx must be >= 2, max_verify >= 1")
        self.n_vocab, self.n_ctx, self.n_batch = n_vocab, n_ctx, max_verify + 1
        self.latency = latency
        self.seed = seed
        self.model_name = model_name
        self.sessions: dict[str, Session] = {}

    def next_token(self, token: int, index: int) -> int:
        """The synthetic model's greedy token after `token` at sequence index `index`."""
        return mix64((self.seed * 1_000_003 + token) * 1_000_033 + index) % self.n_vocab

    def row(self, token: int, index: int) -> NDArray[np.float32]:
        """The logit row after `token` at `index`: seeded noise, peak at next_token."""
        rng = np.random.default_rng([self.seed, token, index])
        logits = rng.standard_normal(self.n_vocab, dtype=np.float32)
        logits[self.next_token(token, index)] = logits.max() + PEAK
        return logits

    def open(self, prompt: list[int], rule: Rule | None = None) -> tuple[str, float]:
        """A new session holding `prompt`; sleeps the profile's prefill time."""
        start = time.perf_counter()
        sid = self._add_session(prompt, rule)
        if self.latency is not None:
            _sleep_until(start + self.latency.prefill_s(len(prompt)))
        return sid, 1e3 * (time.perf_counter() - start)

    def verify_batch(self, sids: list[str]) -> list[VerifyResult]:
        """Verify distinct sessions as one modelled forward; one result each."""
        if len(set(sids)) != len(sids):
            raise ValueError("verify_batch: a session appears twice")
        start = time.perf_counter()
        decisions = [self._decide(self.sessions[sid]) for sid in sids]
        if self.latency is not None:
            _sleep_until(start + self._forward_s([self.sessions[sid] for sid in sids]))
        elapsed_ms = 1e3 * (time.perf_counter() - start)
        results = []
        for sid, (accepted, token) in zip(sids, decisions, strict=True):
            self.sessions[sid].commit(accepted, token)
            results.append(VerifyResult(accepted, token, elapsed_ms, len(sids)))
        return results

    def _decide(self, session: Session) -> tuple[int, int]:
        """(accepted, token) of the session's verification under its rule."""
        inputs = [session.pending, *session.uploaded]
        base = len(session.committed)

        def argmax(j: int) -> int:
            return self.next_token(inputs[j], base + j)

        def rows(j: int) -> NDArray[np.float32]:
            return self.row(inputs[j], base + j)

        return decide(
            session.rule, rows, session.uploaded, session.generated, session.dists, argmax
        )

    def _forward_s(self, sessions: list[Session]) -> float:
        """The profile's time of one forward over these sessions' verifications."""
        assert self.latency is not None
        positions = [len(s.uploaded) + 1 for s in sessions]
        contexts = [len(s.committed) for s in sessions]
        return self.latency.forward_s(
            sum(positions),
            sum(contexts),
            batch=len(sessions),
            position_context=float(sum(p * c for p, c in zip(positions, contexts, strict=True))),
        )

    def drop(self, sid: str) -> None:
        """Forget a session."""
        self.sessions.pop(sid)

    def close(self) -> None:
        """Nothing to release but the sessions."""
        self.sessions.clear()


def _sleep_until(deadline: float) -> None:
    left = deadline - time.perf_counter()
    if left > 0:
        time.sleep(left)


__all__ = ["SyntheticTarget", "mix64"]
