"""The policy-level held-out check on a small trace set (S1's scenario, few requests)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from calibrate.acceptance_check import (
    TOLERANCE,
    medians,
    policy_check,
    reference_rows,
    table_lines,
)
from simulator.acceptance import HmmSampler
from simulator.acceptance_spec import HmmAcceptance

S1 = Path(__file__).resolve().parents[2] / "scenarios" / "pipesd_s1.toml"
POLICIES = ["cloud_ar", "vanilla", "edgellm", "pipesd"]

TRUE = HmmAcceptance(
    kind="hmm",
    edges=[0.0, 0.6, 0.9, 1.0],
    within=[[0.1, 0.4, 0.6], [0.6, 0.8, 0.9], [0.9, 0.97, 1.0]],
    initial=[0.5, 0.5],
    transition=[[0.85, 0.15], [0.05, 0.95]],
    emission=[
        [[0.45, 0.05], [0.2, 0.1], [0.1, 0.1]],
        [[0.02, 0.03], [0.05, 0.2], [0.05, 0.65]],
    ],
)
"""A regime-switching truth: hard stretches, long easy ones."""

WRONG = TRUE.model_copy(update={"transition": [[0.0, 1.0], [1.0, 0.0]]})
"""The same regimes alternating at every position: the right marginals, no runs."""


def held_out(path: Path, truth: HmmAcceptance = TRUE, seed: int = 11) -> Path:
    rng = np.random.default_rng(seed)
    sampler = HmmSampler.of(truth)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sequence", "position", "confidence", "accepted"])
        for s in range(300):
            conf, acc = sampler.sample(rng, 128)
            writer.writerows(
                [s, p, repr(float(c)), int(a)]
                for p, (c, a) in enumerate(zip(conf, acc, strict=True))
            )
    return path


def test_true_model_passes_and_a_model_without_runs_does_not(tmp_path: Path) -> None:
    trace = held_out(tmp_path / "held.csv")
    rows = policy_check(S1, TRUE, trace, prompts=12, seeds=[1, 2], policies=POLICIES)
    assert [r.label for r in rows] == POLICIES
    assert not rows[0].drafts  # cloud_ar never drafts: shown, not counted
    good = medians(rows)
    assert all(v <= 2 * TOLERANCE for v in good.values()), table_lines(rows)
    bad_rows = policy_check(S1, WRONG, trace, prompts=12, seeds=[1, 2], policies=POLICIES)
    bad = medians(bad_rows)
    assert max(bad.values()) > 3 * max(good.values()), table_lines(bad_rows)
    assert "median over drafting policies" in table_lines(rows)[-1]
    noise = reference_rows(S1, trace, None, 12, [1, 2], POLICIES)["noise"]
    with_noise = table_lines(rows, noise)
    assert "noise:" in with_noise[0] and with_noise[-1] == table_lines(rows)[-1]
    assert with_noise[1] == table_lines(rows)[1]  # cloud_ar drafts nothing: no noise shown
    assert with_noise[2].count("%") == table_lines(rows)[2].count("%") + 3


def test_kendall_tau_of_rankings() -> None:
    from calibrate.acceptance_check import kendall_tau

    a = {"x": {"tpt_ms": 1.0}, "y": {"tpt_ms": 2.0}, "z": {"tpt_ms": 3.0}}
    b = {"x": {"tpt_ms": 1.0}, "y": {"tpt_ms": 3.0}, "z": {"tpt_ms": 2.0}}
    reverse = {k: {"tpt_ms": -v["tpt_ms"]} for k, v in a.items()}
    assert kendall_tau(a, a) == 1.0 and kendall_tau(a, reverse) == -1.0
    assert kendall_tau(a, b) == pytest.approx(1 / 3)


def test_reference_rows_separate_noise_and_prompt_sets_from_the_model(tmp_path: Path) -> None:
    """The check's references: the held-out replay under other seeds (noise, small but not
    zero), and a fitting trace's replay: none at all when it is the held-out trace itself,
    small when drawn from the same truth, large when drawn from a truth without runs."""
    trace = held_out(tmp_path / "held.csv")
    same = reference_rows(S1, trace, trace, 12, [1, 2], POLICIES)
    assert set(same) == {"noise", "fitting traces"}
    assert all(v == 0 for v in medians(same["fitting traces"]).values())
    noise = medians(same["noise"])
    assert 0 < max(noise.values()) <= 2 * TOLERANCE
    sibling = held_out(tmp_path / "sibling.csv", seed=12)
    near = medians(reference_rows(S1, trace, sibling, 12, [1, 2], POLICIES)["fitting traces"])
    other = held_out(tmp_path / "other.csv", truth=WRONG)
    far = medians(reference_rows(S1, trace, other, 12, [1, 2], POLICIES)["fitting traces"])
    assert max(far.values()) > 3 * max(near.values())
    assert set(reference_rows(S1, trace, None, 12, [1], POLICIES)) == {"noise"}
