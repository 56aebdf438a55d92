"""Fixtures shared by the testbed's tests."""

from __future__ import annotations

import pytest

SMALL_RECALIBRATION = [
    ("PROMPT_LENGTHS", [8, 16, 24]),
    ("DRAFT_CONTEXTS", [16, 24, 32]),
    ("TARGET_CONTEXTS", [16, 24, 32]),
    ("TARGET_TOKEN_COUNTS", [1, 2, 4]),
    ("REPETITIONS", 2),
    ("WARMUP", 0),
    ("DRAFT_REPETITIONS", 2),
    ("PAUSE_MS", 1.0),
]
"""validation.recalibrate's grids, cut to seconds of work."""


@pytest.fixture
def small_recalibration(monkeypatch: pytest.MonkeyPatch) -> None:
    """`validate --recalibrate` (validation.recalibrate) on small grids for this test."""
    from validation import recalibrate

    for name, value in SMALL_RECALIBRATION:
        monkeypatch.setattr(recalibrate, name, value)
