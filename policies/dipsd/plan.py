"""A DiP-SD plan (batches and draft lengths) evaluated by the cost model: the common result
of the optimiser, brute force and the autoregressive baselines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.dipsd.cost_model import DipsdSystem, round_timing, throughput

IMPROVEMENT_TOLERANCE = 1e-12
"""A step must improve R by more than this fraction to replace the incumbent."""


@dataclass(frozen=True)
class HistoryEntry:
    """One step of the alternation: which N, round and step, and where it left the plan."""

    n_batches: int
    round: int
    step: str
    assignment: tuple[int, ...]
    lengths: tuple[int, ...]
    throughput_tokens_per_s: float


@dataclass(frozen=True)
class Plan:
    """A schedule: batch index per user (0-based), draft length per user, and its throughput."""

    n_batches: int
    assignment: tuple[int, ...]
    lengths: tuple[int, ...]
    throughput_tokens_per_s: float
    span_s: float
    history: tuple[HistoryEntry, ...] = ()


def make_plan(
    system: DipsdSystem,
    assignment: Sequence[int],
    lengths: Sequence[int],
    history: tuple[HistoryEntry, ...],
) -> Plan:
    """The plan of an assignment and lengths, with its span and throughput."""
    assignment, lengths = tuple(assignment), tuple(lengths)
    timing = round_timing(system, assignment, lengths)
    return Plan(
        n_batches=max(assignment) + 1,
        assignment=assignment,
        lengths=lengths,
        throughput_tokens_per_s=throughput(system, assignment, lengths),
        span_s=timing.span_s,
        history=history,
    )


def canonical(assignment: Sequence[int]) -> tuple[int, ...]:
    """Relabel batches in order of their first user (S does not depend on the labels)."""
    labels: dict[int, int] = {}
    for batch in assignment:
        labels.setdefault(batch, len(labels))
    return tuple(labels[batch] for batch in assignment)
