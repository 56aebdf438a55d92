"""The acceptance part of a profile (or a scenario's [acceptance]): how draft confidence and
target acceptance are drawn, from an assumed distribution, a fitted model or recorded traces.
`simulator.acceptance` turns a validated spec into per-request streams."""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import Field, model_validator

from simulator.schema_types import Finite, NonNeg, Positive, Strict


class BetaConfidence(Strict):
    """Draft top-1 probability ~ Beta(a, b)."""

    kind: Literal["beta"]
    a: Positive
    b: Positive


def _check_bins(edges: list[float], per_bin: list[float], name: str) -> None:
    """Bins on [0, 1]: one `name` entry per bin, edges strictly increasing (ValueError)."""
    if len(per_bin) != len(edges) - 1:
        raise ValueError(f"{name} must have one entry fewer than edges")
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError("edges must increase strictly")
    if edges[0] < 0.0 or edges[-1] > 1.0:
        raise ValueError("edges must lie in [0, 1]")


class HistogramConfidence(Strict):
    """Draft top-1 probability drawn from a histogram on [0, 1] (uniform within a bin)."""

    kind: Literal["histogram"]
    edges: list[Finite] = Field(min_length=2)
    weights: list[NonNeg] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> HistogramConfidence:
        _check_bins(self.edges, self.weights, "weights")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        return self


class ConstantConfidence(Strict):
    """Every draft token has the same top-1 probability (uninformative confidence)."""

    kind: Literal["constant"]
    value: Annotated[float, Field(gt=0.0, le=1.0)]


Confidence = Annotated[
    BetaConfidence | HistogramConfidence | ConstantConfidence, Field(discriminator="kind")
]


class PowerCurve(Strict):
    """P(accept | c) = c ** exponent (exponent 1: a perfectly calibrated draft)."""

    kind: Literal["power"]
    exponent: Positive


class TableCurve(Strict):
    """P(accept | c) piecewise constant over confidence bins."""

    kind: Literal["table"]
    edges: list[Finite] = Field(min_length=2)
    values: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> TableCurve:
        _check_bins(self.edges, self.values, "values")
        return self


AcceptCurve = Annotated[PowerCurve | TableCurve, Field(discriminator="kind")]


class IIDAcceptance(Strict):
    """Each draft token is accepted with probability `rate`, independently of its confidence."""

    kind: Literal["iid"]
    rate: Annotated[float, Field(ge=0.0, lt=1.0)]
    confidence: Confidence = ConstantConfidence(kind="constant", value=0.9)


class CalibratedAcceptance(Strict):
    """Confidence drawn from a fitted distribution, acceptance from P(accept | confidence)."""

    kind: Literal["calibrated"]
    confidence: Confidence
    p_accept: AcceptCurve


class ReplayAcceptance(Strict):
    """Replay recorded (confidence, accepted) sequences from a CSV file, or a CSV.gz trace
    (path relative to the file that names it): columns sequence, position, confidence,
    accepted; with `block` > 0, a moving-block bootstrap of them."""

    kind: Literal["replay"]
    trace: str
    block: int = Field(
        0,
        ge=0,
        description="0: replay whole sequences; L > 0: moving-block bootstrap of L positions",
    )
    order: Literal["random", "request"] = Field(
        "random",
        description="whole sequences: from a random one per request, or request r from sequence "
        "r (cycling), e.g. the trace of the very prompts a testbed run used, in its order",
    )

    @model_validator(mode="after")
    def _whole_sequences_in_order(self) -> ReplayAcceptance:
        if self.order == "request" and self.block:
            raise ValueError("order = 'request' replays whole sequences (block must be 0)")
        return self


class HmmAcceptance(Strict):
    """A hidden Markov (regime-switching) model fitted to real traces by EM
    (`calibrate.acceptance_hmm`): K regimes follow a Markov chain (`initial` at a request's
    first position, `transition` K x K); in regime k a position falls in confidence bin b and
    is accepted or not with probability `emission[k][b]` = [P(b, rejected), P(b, accepted)];
    its confidence is drawn from the bin's quantiles `within[b]` (increasing, inside the bin).
    `sequence_lengths`: the fitting sequences' lengths (their outputs ended there); a request
    runs on past a length drawn from them as a new sequence from `initial`, as a replay
    continues into the next trace (None: one sequence per request). `source` says where it
    was fitted from."""

    kind: Literal["hmm"]
    edges: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(min_length=2)
    within: list[list[Annotated[float, Field(ge=0.0, le=1.0)]]] = Field(min_length=1)
    initial: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(min_length=1)
    transition: list[list[Annotated[float, Field(ge=0.0, le=1.0)]]]
    emission: list[list[list[Annotated[float, Field(ge=0.0, le=1.0)]]]]
    sequence_lengths: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=1)
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> HmmAcceptance:
        bins, states = len(self.edges) - 1, len(self.initial)
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must increase strictly")
        if len(self.within) != bins or any(
            len(row) < 2 or sorted(row) != row for row in self.within
        ):
            raise ValueError("within must hold, per bin, at least 2 non-decreasing quantiles")
        if len(self.transition) != states or any(len(r) != states for r in self.transition):
            raise ValueError(f"transition must be {states} x {states} (one row per state)")
        if len(self.emission) != states or any(
            len(r) != bins or any(len(c) != 2 for c in r) for r in self.emission
        ):
            raise ValueError(f"emission must be {states} x {bins} x 2 (state, bin, verdict)")
        sums = [sum(self.initial)] + [sum(r) for r in self.transition]
        sums += [sum(sum(c) for c in r) for r in self.emission]
        if any(abs(total - 1.0) > 1e-6 for total in sums):
            raise ValueError("initial, each transition row and each state's emission must sum to 1")
        return self


class ByRequestAcceptance(Strict):
    """Request r simulated by `models[assignment[r]]` (cycling through `assignment`): e.g. the
    K-fold models of `calibrate.acceptance_folds`, each predicting the prompts it was not
    fitted on, for a testbed run whose request r ran prompt r. `prompt_ids[r]` names that
    prompt and `source` says how the models were made."""

    kind: Literal["by_request"]
    models: list[HmmAcceptance] = Field(min_length=1)
    assignment: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    prompt_ids: list[str] | None = None
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ByRequestAcceptance:
        if max(self.assignment) >= len(self.models):
            raise ValueError(f"assignment must index models (0 to {len(self.models) - 1})")
        if self.prompt_ids is not None and len(self.prompt_ids) != len(self.assignment):
            raise ValueError("prompt_ids must name one prompt per assignment entry")
        return self


Acceptance = Annotated[
    IIDAcceptance | CalibratedAcceptance | ReplayAcceptance | HmmAcceptance | ByRequestAcceptance,
    Field(discriminator="kind"),
]
