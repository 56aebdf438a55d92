"""The fixed-rule baselines: cloud-only autoregressive, Vanilla, HSL and EdgeLLM.

Rules and defaults follow `shared/design/papers.md` (PipeSD's baselines): Vanilla drafts a fixed
length; HSL stops at a low-confidence token; EdgeLLM adapts a sequence-confidence threshold and
keeps drafting while a verification is pending.
"""

from __future__ import annotations

from abc import abstractmethod

from pydantic import Field

from policies.base import Decision, Mode, Policy, RequestStart, VerifyOutcome
from policies.params import PolicyParams


def product(values: list[float]) -> float:
    """The product of a list of confidences (1 for an empty list)."""
    result = 1.0
    for value in values:
        result *= value
    return result


class StopAndWait(Policy):
    """Drafts until `decide` says verify, then waits for the answer (no proactive drafting).

    Counts the tokens of the current draft; subclasses only say when a draft ends.
    """

    def __init__(self) -> None:
        self._drafted = 0

    def start_request(self, event: RequestStart) -> None:
        self._drafted = 0

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        self._drafted += 1
        return self.decide(confidence, self._drafted)

    @abstractmethod
    def decide(self, confidence: float, drafted: int) -> Decision:
        """What to do after the `drafted`-th token of this draft, of top-1 prob `confidence`."""

    def on_result(self, outcome: VerifyOutcome) -> Decision:
        self._drafted = 0
        return Decision.CONTINUE


class CloudARParams(PolicyParams):
    """Cloud-only autoregressive decoding has no parameters."""


class CloudAutoregressive(Policy):
    """The cloud generates every token and streams it down; the edge only shows them."""

    mode = Mode.CLOUD_AUTOREGRESSIVE

    def __init__(self, params: CloudARParams, seed: int) -> None:
        self.params = params

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        """Never called in cloud-only mode; verifying at once is the safe answer."""
        return Decision.VERIFY


class SplitParams(PolicyParams):
    """Split inference; the split point comes from the profile's `split` section."""

    edge_fraction: float | None = Field(
        None, gt=0.0, lt=1.0, description="override the profile's share of layers on the edge"
    )


class SplitInference(Policy):
    """PicoSpec's split-inference baseline: no drafting, every token crosses the link once."""

    mode = Mode.SPLIT_INFERENCE

    def __init__(self, params: SplitParams, seed: int) -> None:
        self.params = params

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        """Never called in split mode; verifying at once is the safe answer."""
        return Decision.VERIFY

    def split_edge_fraction(self, profiled: float) -> float:
        """The configured `edge_fraction`, else the profile's."""
        return self.params.edge_fraction or profiled


class VanillaParams(PolicyParams):
    """Vanilla (BiLD-style) stop-and-wait speculative decoding."""

    draft_len: int = Field(4, ge=1, le=256, description="draft tokens per NAV (6 code, 4 math)")


class Vanilla(StopAndWait):
    """Draft a fixed number of tokens, upload them in one message, wait for the answer."""

    def __init__(self, params: VanillaParams, seed: int) -> None:
        super().__init__()
        self.params = params

    def decide(self, confidence: float, drafted: int) -> Decision:
        return Decision.VERIFY if drafted >= self.params.draft_len else Decision.CONTINUE

    def state(self) -> dict[str, float]:
        return {"draft_len": float(self.params.draft_len)}


class HSLParams(PolicyParams):
    """HSL: a token-confidence threshold ends the draft."""

    r2: float = Field(0.7, gt=0.0, le=1.0, description="token threshold (0.99 code, 0.7 math)")
    max_draft_len: int = Field(16, ge=1, le=256, description="hard cap on draft length")


class HSL(StopAndWait):
    """Stop drafting after a token whose confidence is below R2, upload the draft, wait."""

    def __init__(self, params: HSLParams, seed: int) -> None:
        super().__init__()
        self.params = params

    def decide(self, confidence: float, drafted: int) -> Decision:
        if confidence < self.params.r2 or drafted >= self.params.max_draft_len:
            return Decision.VERIFY
        return Decision.CONTINUE


class EdgeLLMParams(PolicyParams):
    """EdgeLLM's adaptive sequence-confidence threshold."""

    threshold: float = Field(0.5, gt=0.0, le=1.99, description="initial a (0.92 code, 0.5 math)")
    shrink: float = Field(0.8, gt=0.0, le=1.0, description="m: a <- a*m after full acceptance")
    cap: float = Field(1.99, gt=0.0, le=1.99, description="upper bound on a")
    max_draft_len: int = Field(16, ge=1, le=256, description="hard cap on draft length")


class EdgeLLM(Policy):
    """Verify when the product of confidences since the last NAV falls below an adaptive a.

    After a fully accepted draft a <- a*m (longer drafts); otherwise a <- a / C1^((n-n_acc)/n),
    capped (shorter drafts). Drafting goes on while a verification is pending; those tokens are
    kept only if the pending draft is fully accepted.
    """

    drafts_while_pending = True

    def __init__(self, params: EdgeLLMParams, seed: int) -> None:
        self.params = params
        self.threshold = params.threshold
        self._confidences: list[float] = []
        self._c1 = 1.0
        self._submitted_c1 = 1.0
        self._deferred_verify = False

    def start_request(self, event: RequestStart) -> None:
        self._confidences = []
        self._c1 = 1.0
        self._deferred_verify = False

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        self._confidences.append(confidence)
        self._c1 *= confidence
        if self._c1 < self.threshold or len(self._confidences) >= self.params.max_draft_len:
            if pending:
                self._deferred_verify = True
            else:
                self._submit()
            return Decision.VERIFY
        return Decision.CONTINUE

    def _submit(self) -> None:
        self._submitted_c1 = self._c1
        self._confidences = []
        self._c1 = 1.0

    def on_result(self, outcome: VerifyOutcome) -> Decision:
        n, n_acc = outcome.verified, outcome.accepted
        if n > 0 and n_acc == n:
            self.threshold *= self.params.shrink
        elif n > 0:
            c1 = max(self._submitted_c1, 1e-12)
            self.threshold = min(self.params.cap, self.threshold / c1 ** ((n - n_acc) / n))
        if not outcome.surviving:  # the common case: nothing drafted past the verified tokens
            self._confidences = []
            self._c1 = 1.0
            self._deferred_verify = False
            return Decision.CONTINUE
        self._confidences = self._confidences[-outcome.surviving :]
        self._c1 = product(self._confidences)
        deferred, self._deferred_verify = self._deferred_verify, False
        if deferred:
            self._submit()
            return Decision.VERIFY
        return Decision.CONTINUE

    def state(self) -> dict[str, float]:
        return {"threshold": self.threshold}
