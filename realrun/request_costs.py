"""What one testbed request's compute cost, as the rows the testbed writes (realrun.testbed).

`compute_rows`: the request's draft and target speed against the profile (compute_edge.csv,
compute_cloud.csv: the compute traces validation replays; the draft's prefill and its steps
also apart). `nav_rows`: the cloud batch each of
its NAVs was verified in (batches.csv of a many-edge run): its size, its target time at full
precision (every NAV of one batch gets the same float, so realrun.fleet_trace can regroup a
batch from its edges' rows), when it ran on the session's clock, and the NAV's positions and
context (the batch's predicted time is the profile's forward over its NAVs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from realrun.edge.speed_probe import request_speed
from simulator.profile import Profile
from simulator.records import RequestRecord, Span

Answer = tuple[int, float, float]
"""A verification's answer as the testbed's client notes it: (batch size, the batch's target
ms, perf_counter when it arrived)."""


COMPUTE_COLUMNS = ("t_s", "measured_s", "predicted_s", "factor")
"""`compute_rows`' columns after the session's, both sides."""

EDGE_SPLIT_COLUMNS = ("prefill_factor", "decode_factor")
"""The edge row's further columns: the draft's prefill and its steps apart (empty: none)."""


def compute_rows(
    session: dict[str, Any], record: RequestRecord, timeline: Sequence[Span], profile: Profile
) -> dict[str, dict[str, Any]]:
    """Per side ("edge", "cloud") that did work: `session`'s columns with the request's start
    (t_s), measured and predicted seconds and their ratio (realrun.edge.speed_probe); the
    edge's also with its prefill's and its draft steps' own ratios (`EDGE_SPLIT_COLUMNS`)."""
    speed = request_speed(record, timeline, profile.draft_latency, profile.target_latency)
    rows = {}
    for side, measured, predicted in (
        ("edge", speed.edge_s, speed.edge_predicted_s),
        ("cloud", speed.cloud_s, speed.cloud_predicted_s),
    ):
        if measured > 0:
            factor = predicted / measured
            cost = {"measured_s": measured, "predicted_s": predicted, "factor": factor}
            rows[side] = session | {"t_s": speed.start_s} | cost
    if "edge" in rows:  # NaN where it had none: an empty cell
        split = zip(EDGE_SPLIT_COLUMNS, (speed.prefill_factor, speed.decode_factor), strict=True)
        rows["edge"] |= dict(split)
    return rows


def cloud_share_s(answers: Sequence[Answer], prefill_ms: Sequence[float]) -> float:
    """A request's share of the cloud as the simulator counts it: each batch's target time
    split among its NAVs, plus its prefill."""
    return (sum(ms / size for size, ms, _ in answers) + sum(prefill_ms)) / 1e3


def nav_rows(
    answers: Sequence[Answer], timeline: Sequence[Span], origin_s: float, prompt_len: int
) -> list[dict[str, Any]]:
    """One row per answered NAV (see the module docstring): `nav`, `batch_size`, `target_ms`
    (repr: full precision), `t_s` (the batch's start: the answer's arrival less its target
    time), `positions` and `context` (from the NAV's timeline span, the one that ended when
    its answer arrived)."""
    navs = [s for s in timeline if s.lane == "cloud" and s.label == "NAV"]
    rows = []
    for i, (size, ms, arrived) in enumerate(answers):
        at_s = arrived - origin_s
        span = min(navs, key=lambda s: abs(s.end_s - at_s)) if navs else None
        first, last = (span.first, span.last) if span is not None else (0, 0)
        rows.append({"nav": i, "batch_size": size, "target_ms": repr(ms),
                     "t_s": at_s - ms / 1e3, "positions": last - first + 1,
                     "context": prompt_len + first})  # fmt: skip
    return rows


NAV_COLUMNS = ("nav", "batch_size", "target_ms", "t_s", "positions", "context")
"""`nav_rows`' columns."""

__all__ = [
    "COMPUTE_COLUMNS",
    "EDGE_SPLIT_COLUMNS",
    "NAV_COLUMNS",
    "Answer",
    "cloud_share_s",
    "compute_rows",
    "nav_rows",
]
