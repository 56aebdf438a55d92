"""Aggregate per-request records into the summary metrics defined in docs/results.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from simulator.records import RequestRecord

SUMMARY_METRICS = (
    "tpt_ms",
    "ttft_ms",
    "tokens_per_s",
    "speedup",
    "acceptance_rate",
    "mean_accepted_len",
    "mean_draft_len",
    "nav_count",
    "uplink_bytes",
    "downlink_bytes",
    "cloud_energy_j",
    "edge_energy_j",
    "radio_energy_j",
    "energy_per_token_j",
    "requests",
    "new_tokens",
    "drafted_tokens",
    "discarded_tokens",
    "promoted_tokens",
    "rollbacks",
    "local_tokens",
    "edges",
    "throughput_tokens_per_s",
    "tpt_p50_ms",
    "tpt_p90_ms",
    "tpt_p99_ms",
    "cloud_utilisation",
    "mean_batch_size",
    "plan_tokens_per_s",
)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


class RunFigures(Protocol):
    """What whole-system metrics read from a finished run (a SimResult or a saved outcome)."""

    records: list[RequestRecord]
    cloud_busy_s: float
    cloud_jobs: int
    cloud_batches: int
    edges: int
    plan_throughput_tokens_per_s: float


def fleet_metrics(runs: Sequence[RunFigures]) -> dict[str, float]:
    """Whole-system metrics, averaged over runs: aggregate throughput over the span from the
    first request's start to the last token, per-request TPT percentiles, cloud utilisation
    (busy time over that span) and the mean number of jobs per cloud service."""
    throughput, utilisation, batch = [], [], []
    tpts: list[float] = []
    for run in runs:
        if not run.records:
            continue
        span = max(r.end_s for r in run.records) - min(r.start_s for r in run.records)
        tokens = sum(r.new_tokens for r in run.records)
        throughput.append(_ratio(tokens, span))
        utilisation.append(_ratio(run.cloud_busy_s, span))
        batch.append(_ratio(run.cloud_jobs, run.cloud_batches))
        tpts.extend(r.tpt_s for r in run.records)
    p50, p90, p99 = (
        np.percentile(tpts, [50, 90, 99]) * 1e3 if tpts else (math.nan, math.nan, math.nan)
    )
    mean = lambda values: float(np.mean(values)) if values else math.nan  # noqa: E731
    return {
        "edges": float(runs[0].edges) if runs else math.nan,
        "throughput_tokens_per_s": mean(throughput),
        "tpt_p50_ms": float(p50),
        "tpt_p90_ms": float(p90),
        "tpt_p99_ms": float(p99),
        "cloud_utilisation": mean(utilisation),
        "mean_batch_size": mean(batch),
        "plan_tokens_per_s": mean(
            [
                r.plan_throughput_tokens_per_s
                for r in runs
                if not math.isnan(r.plan_throughput_tokens_per_s)
            ]
        ),
    }


def summarise(records: Sequence[RequestRecord], runs: int) -> dict[str, float]:
    """Per-request metrics over all requests of `runs` seeds (totals are per seed).

    TPT is token-weighted: total decode time / total tokens after the first of each request.
    `speedup` is filled in later, relative to the reference policy.
    """
    decode_s = sum(r.decode_s for r in records)
    decode_tokens = sum(r.new_tokens - 1 for r in records)
    new_tokens = sum(r.new_tokens for r in records)
    wall_s = sum(r.end_s - r.start_s for r in records)
    navs = sum(r.navs for r in records)
    verified = sum(r.verified for r in records)
    accepted = sum(r.accepted for r in records)
    energy = sum(r.cloud_energy_j + r.edge_energy_j + r.radio_energy_j for r in records)
    return {
        "tpt_ms": 1e3 * _ratio(decode_s, decode_tokens),
        "ttft_ms": 1e3 * _ratio(sum(r.ttft_s for r in records), len(records)),
        "tokens_per_s": _ratio(new_tokens, wall_s),
        "speedup": math.nan,
        "acceptance_rate": _ratio(accepted, verified),
        "mean_accepted_len": _ratio(accepted, navs),
        "mean_draft_len": _ratio(verified, navs),
        "nav_count": navs / runs,
        "uplink_bytes": sum(r.uplink_bytes for r in records) / runs,
        "downlink_bytes": sum(r.downlink_bytes for r in records) / runs,
        "cloud_energy_j": sum(r.cloud_energy_j for r in records) / runs,
        "edge_energy_j": sum(r.edge_energy_j for r in records) / runs,
        "radio_energy_j": sum(r.radio_energy_j for r in records) / runs,
        "energy_per_token_j": _ratio(energy, new_tokens),
        "requests": len(records) / runs,
        "new_tokens": new_tokens / runs,
        "drafted_tokens": sum(r.drafted for r in records) / runs,
        "discarded_tokens": sum(r.discarded for r in records) / runs,
        "promoted_tokens": sum(r.promoted for r in records) / runs,
        "rollbacks": sum(r.rollbacks for r in records) / runs,
        "local_tokens": sum(r.local_tokens for r in records) / runs,
    }
