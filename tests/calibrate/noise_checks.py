"""What the profiler tests check about repeated runs on a machine that may be busy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def runs_expected(rows: Sequence[Mapping[str, Any]], repetitions: int) -> int:
    """Runs a profiler took: `repetitions` per pass of every configuration (an unstable one,
    on a busy machine, takes more passes: calibrate.noise)."""
    return sum(repetitions * int(row["passes"]) for row in rows)


def assert_runs_accounted(
    kept: Sequence[Any],
    rejected: Sequence[Any],
    rows: Sequence[Mapping[str, Any]],
    repetitions: int,
) -> None:
    """Every run is kept or rejected, each configuration's at least once kept, and the counts
    agree with the noise rows."""
    assert len(kept) + len(rejected) == runs_expected(rows, repetitions)
    assert sum(int(row["n_kept"]) for row in rows) == len(kept)
    assert sum(int(row["n_rejected"]) for row in rows) == len(rejected)
    assert all(int(row["n_kept"]) >= 1 and int(row["passes"]) >= 1 for row in rows)
