"""A short speed reference taken by the testbed right before each session.

Why: this machine's speed drifts by tens of percent within minutes (docs/validation.md), so a
profile measured even one minute before a run mispredicts it. Before each (policy, seed)
session the testbed times a fixed workload through the very objects the session then uses:
`steps` greedy draft steps with the edge's draft (realrun.edge.drafts' `GreedyDraft`), and
`verifies` verifications of `tokens` drafts each on a throwaway session of the cloud server (the
server's reported target time). Each speed is the profile's predicted time for that workload
over the measured time (> 1: faster than the profile). `pipesd validate` simulates every
session with its own two factors as a second prediction beside the profile's own: it uses no
timing of the validated session itself, only this reference taken before it.

Beside it, every request's own draft steps and verifications are set against the profile
(`request_speed`, from the request's timeline: nothing more is timed), and the testbed writes
them as compute traces of each session (real/compute_edge.csv, real/compute_cloud.csv) that
`pipesd validate` replays in the simulator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from realrun.edge.client import CloudClient
from realrun.edge.drafts import GreedyDraft
from simulator.profile import DraftLatency, TargetLatency
from simulator.records import RequestRecord, Span

STEPS = 16
"""Draft steps timed (about 0.1 s of a small draft)."""

VERIFIES = 4
"""Verifications timed (about 0.25 s of a small CPU target)."""

TOKENS = 4
"""Draft tokens per verification."""


@dataclass(frozen=True)
class SpeedProbe:
    """Measured and predicted seconds of the reference workload, and their ratios."""

    draft_s: float
    draft_predicted_s: float
    verify_s: float
    verify_predicted_s: float

    @property
    def edge_speed(self) -> float:
        return self.draft_predicted_s / self.draft_s

    @property
    def cloud_speed(self) -> float:
        return self.verify_predicted_s / self.verify_s

    @classmethod
    def columns(cls) -> list[str]:
        """The columns of `row`."""
        return [*cls.__dataclass_fields__, "edge_speed", "cloud_speed"]

    def row(self) -> dict[str, float]:
        """The CSV row (times and both speeds)."""
        return {**asdict(self), "edge_speed": self.edge_speed, "cloud_speed": self.cloud_speed}


def probe_speeds(
    draft_llama: Any,
    cloud: CloudClient,
    prompt: Sequence[int],
    draft_latency: DraftLatency,
    target_latency: TargetLatency,
    steps: int = STEPS,
    verifies: int = VERIFIES,
    tokens: int = TOKENS,
) -> SpeedProbe:
    """Time the reference workload (module docstring) after `prompt`."""
    prompt = [int(t) for t in prompt]
    draft = GreedyDraft(draft_llama)
    draft.prefill(prompt)
    drafted: list[int] = []
    measured = predicted = 0.0
    for i in range(steps):
        start = time.perf_counter()
        token, _ = draft.next(prompt + drafted)
        measured += time.perf_counter() - start
        predicted += draft_latency.decode_s(len(prompt) + i)
        drafted.append(token)
    session = str(cloud.open(prompt)["session"])
    verify_s = verify_predicted_s = 0.0
    generated = 0
    try:
        for _ in range(verifies):
            answer = cloud.verify(session, tokens, drafted[:tokens], [0.5] * tokens)
            verify_s += float(answer["target_ms"]) / 1e3
            verify_predicted_s += target_latency.forward_s(tokens + 1, len(prompt) + generated)
            generated += int(answer["accepted"]) + 1
    finally:
        cloud.close(session)
    return SpeedProbe(measured, predicted, verify_s, verify_predicted_s)


@dataclass(frozen=True)
class RequestSpeed:
    """How fast one real request's own draft steps and verifications ran against the profile:
    measured and predicted seconds of the same work (draft prefill and every draft step with
    its context; every NAV's forward over its positions and context, the server's reported
    target time). No extra work is timed: it is read from the request's record and timeline.

    `edge_s` is the whole draft lane (its tuner steps too, predicted as draft steps: the
    factor the first compute traces recorded); `prefill_*` and `decode_*` are the prompt's
    prefill and the draft steps apart (tuner steps in neither): on a shared CPU the two drift
    apart (docs/validation.md, run 23)."""

    start_s: float
    edge_s: float
    edge_predicted_s: float
    cloud_s: float
    cloud_predicted_s: float
    prefill_s: float = 0.0
    prefill_predicted_s: float = 0.0
    decode_s: float = 0.0
    decode_predicted_s: float = 0.0

    @property
    def edge_factor(self) -> float:
        """Predicted over measured draft time (> 1: faster than the profile; NaN: none)."""
        return self.edge_predicted_s / self.edge_s if self.edge_s > 0 else math.nan

    @property
    def cloud_factor(self) -> float:
        """Predicted over measured target time (NaN where the request verified nothing)."""
        return self.cloud_predicted_s / self.cloud_s if self.cloud_s > 0 else math.nan

    @property
    def prefill_factor(self) -> float:
        """Predicted over measured draft prefill time (NaN: none)."""
        return self.prefill_predicted_s / self.prefill_s if self.prefill_s > 0 else math.nan

    @property
    def decode_factor(self) -> float:
        """Predicted over measured time of the draft steps (NaN: none)."""
        return self.decode_predicted_s / self.decode_s if self.decode_s > 0 else math.nan


def request_speed(
    record: RequestRecord,
    spans: Sequence[Span],
    draft_latency: DraftLatency,
    target_latency: TargetLatency,
) -> RequestSpeed:
    """`RequestSpeed` of a request from its record and its timeline (realrun.edge.executor)."""
    prompt_len = record.prompt_len
    cloud_predicted_s = 0.0
    # measured, predicted seconds: the prefill, the draft steps (offline ones too), the tuner
    work = {"prefill": [0.0, 0.0], "draft": [0.0, 0.0], "tuner": [0.0, 0.0]}
    for span in spans:
        if span.lane == "draft":
            sums = work.get(span.label, work["draft"])
            sums[0] += span.end_s - span.start_s
            sums[1] += (
                draft_latency.prefill_s(prompt_len)
                if span.label == "prefill"
                else draft_latency.decode_s(prompt_len + span.first)
            )
        elif span.lane == "cloud" and span.label == "NAV":
            positions = span.last - span.first + 1  # the drafts and the last committed token
            cloud_predicted_s += target_latency.forward_s(positions, prompt_len + span.first)
    return RequestSpeed(
        record.start_s,
        sum(sums[0] for sums in work.values()),
        sum(sums[1] for sums in work.values()),
        record.cloud_busy_s,
        cloud_predicted_s,
        *work["prefill"],
        *work["draft"],
    )


__all__ = ["RequestSpeed", "SpeedProbe", "probe_speeds", "request_speed"]
