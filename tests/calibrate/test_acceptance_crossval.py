"""The check's prompt-sampling reference and the K-fold check (calibrate.acceptance_crossval)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_acceptance_check import POLICIES, S1, TRUE  # its synthetic truth and policies

from calibrate.acceptance_check import FIGURES, TOLERANCE, medians, table_lines
from calibrate.acceptance_crossval import cross_validate, prompt_bootstrap, write_replay_csv
from pipesd.cli import main
from simulator.acceptance import HmmSampler, ReplayTraces


def sequences(count: int, seed: int = 5, length: int = 128) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    sampler = HmmSampler.of(TRUE)
    return [sampler.sample(rng, length) for _ in range(count)]


def test_replay_csv_round_trips_exactly(tmp_path: Path) -> None:
    written = sequences(3, length=17)
    loaded = ReplayTraces.load(write_replay_csv(written, tmp_path / "t.csv")).sequences
    for (c, a), (c2, a2) in zip(written, loaded, strict=True):
        assert np.array_equal(c, c2) and np.array_equal(a, a2)


def test_prompt_bootstrap_is_zero_for_identical_prompts_and_not_otherwise(tmp_path: Path) -> None:
    """Resampling prompts that are all the same changes nothing; resampling different prompts
    moves the replay, the more so the fewer prompts there are."""
    one = sequences(1)
    same = prompt_bootstrap(S1, one * 6, draws=2, prompts=6, seeds=[1], policies=POLICIES)
    assert len(same) == 2 and all(d[f] == 0 for d in same for f in FIGURES)
    few = prompt_bootstrap(S1, sequences(6), draws=3, prompts=12, seeds=[1], policies=POLICIES)
    assert max(max(d.values()) for d in few) > 0
    again = prompt_bootstrap(S1, sequences(6), draws=3, prompts=12, seeds=[1], policies=POLICIES)
    assert few == again  # seeded


def test_cross_validation_of_a_true_hmm_passes_and_one_without_runs_does_not() -> None:
    """Prompts drawn from one regime-switching truth: each fold's refitted model matches its
    fold's replay, averaged over the folds, within the check's tolerance (twice, for so few
    requests); forced to one regime (no runs) the model misses TPT or NAV count by far more."""
    args = {"bins": 6, "prompts": 40, "seeds": [1, 2, 3], "policies": POLICIES}
    rows, noise, chosen = cross_validate(S1, sequences(90), folds=3, states=[1, 2], **args)
    assert [r.label for r in rows] == [r.label for r in noise] == POLICIES
    assert 0 < max(medians(noise).values()) <= 2 * TOLERANCE  # other seeds: small, not zero
    assert chosen == [(0, 2)] * 3  # the truth has runs: two regimes win on held-out likelihood
    good = medians(rows)
    assert all(v <= 2 * TOLERANCE for v in good.values()), table_lines(rows)
    flat, _, _ = cross_validate(S1, sequences(90), folds=3, states=[1], **args)
    timing = ("tpt_ms", "nav_count")
    bad = medians(flat)
    assert max(bad[f] for f in timing) > 3 * max(good[f] for f in timing), table_lines(flat)
    with pytest.raises(ValueError, match="folds"):
        cross_validate(S1, sequences(3), folds=4, states=[1], bins=3)


def test_crossval_cli_bad_folds_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trace = write_replay_csv(sequences(3, length=9), tmp_path / "t.csv")
    assert main(["calibrate", "acceptance-crossval", "--traces", str(trace), "--folds", "9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pipesd: error: --folds: folds must be in [2, 3] (got 9)"]
    argv = ["calibrate", "acceptance-crossval", "--traces", str(trace), "--folds", "2"]
    assert main([*argv, "--prompts", "0"]) == 2  # refused before any fold is fitted
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prompts.count" in err[0]
