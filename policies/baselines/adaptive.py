"""Adaptive draft-length rules from open-source engines: llama.cpp's p_min and Hugging Face's
heuristic schedule (see `shared/design/papers.md`, "Common adaptive draft-length rules")."""

from __future__ import annotations

from pydantic import Field

from policies.base import Decision, VerifyOutcome
from policies.baselines.fixed import StopAndWait
from policies.params import PolicyParams


class PMinParams(PolicyParams):
    """llama.cpp speculative decoding (`--draft-p-min`, `--draft-max`)."""

    p_min: float = Field(0.75, ge=0.0, le=1.0, description="stop below this top-1 probability")
    draft_max: int = Field(16, ge=1, le=256, description="most tokens per draft")


class PMin(StopAndWait):
    """llama.cpp: stop drafting when the draft's top-1 probability falls below p_min.

    As in llama.cpp, the low-confidence token itself is not kept (VERIFY_DROP_LAST).
    """

    def __init__(self, params: PMinParams, seed: int) -> None:
        super().__init__()
        self.params = params

    def decide(self, confidence: float, drafted: int) -> Decision:
        if confidence < self.params.p_min:
            return Decision.VERIFY_DROP_LAST
        if drafted >= self.params.draft_max:
            return Decision.VERIFY
        return Decision.CONTINUE


class HFHeuristicParams(PolicyParams):
    """Hugging Face assisted generation, `num_assistant_tokens_schedule="heuristic"`."""

    num_assistant_tokens: int = Field(20, ge=1, le=256, description="initial draft length")
    confidence_threshold: float = Field(
        0.4, ge=0.0, le=1.0, description="assistant_confidence_threshold: stop below it"
    )
    max_draft_len: int = Field(64, ge=1, le=256, description="cap on the adaptive length")


class HFHeuristic(StopAndWait):
    """Draft length +2 when all scheduled tokens were accepted, -1 (not below 1) otherwise.

    Drafting also stops after a token whose probability is below the confidence threshold
    (that token is kept, as with transformers' ConfidenceCriteria). The threshold stays fixed:
    transformers re-fits it only with the constant schedule.
    """

    def __init__(self, params: HFHeuristicParams, seed: int) -> None:
        super().__init__()
        self.params = params
        self.num_assistant_tokens = params.num_assistant_tokens

    def decide(self, confidence: float, drafted: int) -> Decision:
        if confidence < self.params.confidence_threshold or drafted >= self.num_assistant_tokens:
            return Decision.VERIFY
        return Decision.CONTINUE

    def on_result(self, outcome: VerifyOutcome) -> Decision:
        if outcome.accepted >= self.num_assistant_tokens:
            self.num_assistant_tokens = min(
                self.params.max_draft_len, self.num_assistant_tokens + 2
            )
        else:
            self.num_assistant_tokens = max(1, self.num_assistant_tokens - 1)
        return super().on_result(outcome)

    def state(self) -> dict[str, float]:
        return {"num_assistant_tokens": float(self.num_assistant_tokens)}
