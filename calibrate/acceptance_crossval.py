"""How much of the policy-level check is the held-out prompts' luck, and what is the model's.

The check (`calibrate.acceptance_check`) compares a model fitted on one set of prompts with a
replay of another, small set. Its result mixes two things: the model's own error, and how
far the held-out prompts happen to sit from the prompts the model was fitted on (42 HumanEval
prompts differ from another 42 by several percent in how long threshold policies draft).

`prompt_bootstrap`: the held-out prompts resampled with replacement, each resample replayed
against the held-out replay itself: the error a perfect model of the prompt population would
show against this held-out set (the bootstrap's estimate of the set's sampling spread).

`cross_validate`: every trace's prompts split into K folds; for each fold a model is fitted on
the other folds (`fit_hmm`, the same settings as `acceptance-fit`) and simulated against the
fold's replay; the figures are averaged over the folds, so every prompt is held out once and
the prompt sets' differences cancel in the mean (each prompt is on the fitting side in K - 1
folds and the held-out side in one).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from calibrate.acceptance_check import (
    FIGURES,
    PolicyRow,
    check_scenario,
    medians,
    policy_figures,
    replay_of,
    with_shifted_seeds,
)
from calibrate.acceptance_hmm import Pair, fit_hmm
from calibrate.acceptance_recording import write_replay_rows
from simulator.scenario import validate_scenario

Say = Callable[[str], None]


def write_replay_csv(sequences: Sequence[Pair], path: Path) -> Path:
    """`sequences` as a replay trace (sequence, position, confidence, accepted), exact floats."""
    rows = (
        (s, p, c, a)
        for s, (conf, acc) in enumerate(sequences)
        for p, (c, a) in enumerate(zip(conf, acc, strict=True))
    )
    return write_replay_rows(rows, path)


def _averaged(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per policy and figure, the mean over runs (folds simulate the same requests each)."""
    return {
        label: {f: statistics.fmean(run[label][f] for run in runs) for f in FIGURES}
        for label in runs[0]
    }


def prompt_bootstrap(
    scenario: Path,
    heldout: Sequence[Pair],
    draws: int,
    seed: int = 0,
    prompts: int | None = None,
    seeds: list[int] | None = None,
    policies: list[str] | None = None,
) -> list[dict[str, float]]:
    """Per draw, the check's medians for a replay of the held-out prompts resampled with
    replacement (as many as there are) against the replay of the held-out prompts."""
    raw = check_scenario(scenario, prompts, seeds, policies)
    path = Path(scenario)
    rng = np.random.default_rng([seed, 0xB007])
    with tempfile.TemporaryDirectory(prefix="pipesd-bootstrap-") as folder:
        base = policy_figures(
            raw, path, replay_of(write_replay_csv(heldout, Path(folder) / "held.csv"))
        )
        out = []
        for draw in range(draws):
            chosen = [heldout[i] for i in rng.integers(len(heldout), size=len(heldout))]
            trace = write_replay_csv(chosen, Path(folder) / f"draw{draw}.csv")
            figures = policy_figures(raw, path, replay_of(trace))
            out.append(medians([PolicyRow(k, figures[k], base[k]) for k in base]))
    return out


def cross_validate(
    scenario: Path,
    sequences: Sequence[Pair],
    folds: int,
    states: Sequence[int],
    bins: int,
    seed: int = 0,
    prompts: int | None = None,
    seeds: list[int] | None = None,
    policies: list[str] | None = None,
    say: Say | None = None,
    start_states: Sequence[int] = (0,),
) -> tuple[list[PolicyRow], list[PolicyRow], list[tuple[int, int]]]:
    """(rows of fold-averaged model figures against fold-averaged replays; the same replays
    under other seeds against them, the simulation's own noise; the (start states, regimes)
    chosen in each fold). Sequence i goes to fold i % `folds`. ValueError if a fold would be
    empty or its fitting side too small for `fit_hmm`."""
    if not 2 <= folds <= len(sequences):
        raise ValueError(f"folds must be in [2, {len(sequences)}] (got {folds})")
    raw = check_scenario(scenario, prompts, seeds, policies)
    validate_scenario(copy.deepcopy(raw), Path(scenario))  # bad settings: before any fit
    shifted = with_shifted_seeds(raw)
    path = Path(scenario)
    fitted_runs, replay_runs, noise_runs, chosen = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="pipesd-crossval-") as folder:
        for k in range(folds):
            held = [s for i, s in enumerate(sequences) if i % folds == k]
            fitting = [s for i, s in enumerate(sequences) if i % folds != k]
            source = f"fold {k + 1} of {folds}"
            fit = fit_hmm(fitting, states, bins, seed, source=source, start_states=start_states)
            chosen.append((fit.start_states, fit.states))
            fitted_runs.append(policy_figures(raw, path, fit.model.model_dump(mode="json")))
            trace = write_replay_csv(held, Path(folder) / f"fold{k}.csv")
            replay_runs.append(policy_figures(raw, path, replay_of(trace)))
            noise_runs.append(policy_figures(shifted, path, replay_of(trace)))
            if say is not None:
                med = medians(
                    [PolicyRow(x, fitted_runs[-1][x], replay_runs[-1][x]) for x in fitted_runs[-1]]
                )
                say(
                    f"fold {k + 1}/{folds}: {len(fitting)} fitting, {len(held)} held-out prompts, "
                    f"{fit.start_states} start states + {fit.states} regimes; "
                    + ", ".join(f"{f} {100 * v:.1f}%" for f, v in med.items())
                )
    fitted, replay, noise = _averaged(fitted_runs), _averaged(replay_runs), _averaged(noise_runs)
    rows = [PolicyRow(label, fitted[label], replay[label]) for label in fitted]
    return rows, [PolicyRow(label, noise[label], replay[label]) for label in noise], chosen


__all__ = ["cross_validate", "prompt_bootstrap", "write_replay_csv"]
