"""The compute traces of a many-edge session: each edge's draft speed, the shared cloud's speed.

Each edge writes its requests' draft speed against the profile (compute_edge.csv) and the cloud
batch of each of its NAVs (batches.csv: size, target time at full precision, start, positions,
context; realrun.request_costs). Here a session's NAVs from all edges are regrouped into the
server's batches (one batch: one size and one target-time float, which every NAV of it was
given; NAVs sharing both are split in time order), and each batch's speed against the profile
is its predicted forward over its NAVs (the simulator's batch cost, simulator/cloud.py) over its
measured target time: the cloud's compute trace (compute_cloud.csv, one row per batch).
`prefill_row` adds the cloud's other job, each request's prompt prefill, which those rows miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from simulator.profile import TargetLatency

CLOUD_COLUMNS = ("batch", "batch_size", "navs", "t_s", "measured_s", "predicted_s", "factor")
"""A fleet's compute_cloud.csv columns after the session's (point, axes, policy, seed)."""


def group_batches(navs: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A session's NAV rows (all its edges') as the server's batches, in start order; each NAV
    row gets the index of its batch (`batch`)."""
    by_key: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for nav in navs:
        by_key.setdefault((int(nav["batch_size"]), float(nav["target_ms"])), []).append(nav)
    batches = []
    for (size, _), members in by_key.items():
        members.sort(key=lambda nav: float(nav["t_s"]))
        batches += [members[i : i + size] for i in range(0, len(members), size)]
    batches.sort(key=lambda batch: min(float(nav["t_s"]) for nav in batch))
    for index, batch in enumerate(batches):
        for nav in batch:
            nav["batch"] = index
    return batches


def batch_predicted_s(batch: Sequence[dict[str, Any]], target: TargetLatency) -> float:
    """The profile's time for a batch: one forward over its NAVs' positions and contexts, as
    the simulator's cloud serves a batch (a batch some of whose NAVs were not recorded, e.g. an
    edge's failed request: its recorded NAVs scaled to the batch's size)."""
    size = int(batch[0]["batch_size"])
    scale = size / len(batch)
    positions = sum(int(nav["positions"]) for nav in batch)
    context = sum(int(nav["context"]) for nav in batch)
    both = sum(int(nav["positions"]) * int(nav["context"]) for nav in batch)
    return target.forward_s(round(positions * scale), round(context * scale), size, both * scale)


def cloud_rows(
    session: dict[str, Any], navs: Sequence[dict[str, Any]], target: TargetLatency
) -> list[dict[str, Any]]:
    """The session's cloud compute trace (CLOUD_COLUMNS after `session`'s columns), one row
    per batch in start order; labels the NAV rows with their batch (`group_batches`)."""
    rows = []
    for index, batch in enumerate(group_batches(navs)):
        measured = float(batch[0]["target_ms"]) / 1e3
        predicted = batch_predicted_s(batch, target)
        start = min(float(nav["t_s"]) for nav in batch)
        factor = predicted / measured if measured > 0 else float("nan")
        rows.append(session | {"batch": index, "batch_size": int(batch[0]["batch_size"]),
                               "navs": len(batch), "t_s": start, "measured_s": measured,
                               "predicted_s": predicted, "factor": factor})  # fmt: skip
    return rows


def prefill_row(
    prompt_len: int,
    cloud_busy_s: float,
    navs: Sequence[dict[str, Any]],
    sent_s: float,
    target: TargetLatency,
) -> dict[str, Any] | None:
    """A request's cloud prefill as a compute row (t_s, measured_s, predicted_s, factor), or
    None where it has none: its measured time is the request's cloud share less its NAVs'
    (`cloud_busy_s` is the share realrun.request_costs.cloud_share_s counts: each batch's target
    time over its size, plus the prefill), and it ends when the request's first message after
    the open was sent (`sent_s`: the edge sends nothing before the open's answer). Without it
    the simulator serves a prefill at the speed of the batch before it, though under the same
    contention a 40-token prefill runs far nearer the profile than a small batch does."""
    measured = cloud_busy_s - sum(float(n["target_ms"]) / int(n["batch_size"]) for n in navs) / 1e3
    if measured <= 0:
        return None
    predicted = target.prefill_s(prompt_len)
    return {"t_s": sent_s - measured, "measured_s": measured, "predicted_s": predicted,
            "factor": predicted / measured}  # fmt: skip


__all__ = ["CLOUD_COLUMNS", "batch_predicted_s", "cloud_rows", "group_batches", "prefill_row"]
