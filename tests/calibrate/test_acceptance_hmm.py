"""The HMM acceptance model: EM recovers a known model; the simulator samples it faithfully."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from calibrate.acceptance_hmm import Batch, as_hmm, baum_welch, encode, fit_hmm, log_likelihood
from calibrate.acceptance_report import compare_lines, model_sequences, run_lengths, stats
from simulator.acceptance import HmmSampler
from simulator.acceptance_spec import HmmAcceptance

KNOWN = HmmAcceptance(
    kind="hmm",
    edges=[0.0, 0.5, 1.0],
    within=[[0.1, 0.3, 0.45], [0.6, 0.9, 0.99]],
    initial=[0.3, 0.7],
    transition=[[0.9, 0.1], [0.05, 0.95]],
    emission=[[[0.5, 0.1], [0.2, 0.2]], [[0.05, 0.05], [0.1, 0.8]]],
)
"""Two regimes: a hard one (accepts 30%) and an easy one (accepts 85%), both persistent."""


def sequences(model: HmmAcceptance, n: int, length: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    sampler = HmmSampler.of(model)
    return [sampler.sample(rng, length) for _ in range(n)]


def test_fit_recovers_a_known_hmm() -> None:
    data = sequences(KNOWN, 120, 100, seed=1)
    fit = fit_hmm(data, states=(1, 2), edges=KNOWN.edges, seed=0, restarts=2, iterations=150)
    assert fit.states == 2
    assert fit.selection[(0, 2)] > fit.selection[(0, 1)]
    model = fit.model
    assert model.sequence_lengths == [len(c) for c, _ in data]  # kept for the sampler
    assert np.allclose(model.transition, KNOWN.transition, atol=0.04)
    assert np.allclose(model.emission, KNOWN.emission, atol=0.05)
    assert np.allclose(model.initial, KNOWN.initial, atol=0.15)
    # the fitted model explains held-out data about as well as the true one
    held = Batch.of(encode(sequences(KNOWN, 40, 100, seed=2), np.asarray(KNOWN.edges)))
    truth = log_likelihood(as_hmm(KNOWN), held)
    assert log_likelihood(as_hmm(model), held) > truth - 0.01 * held.positions


def test_independent_data_selects_one_state() -> None:
    rng = np.random.default_rng(3)
    data = []
    for _ in range(60):
        conf = rng.random(80)
        data.append((conf, rng.random(80) < conf))
    fit = fit_hmm(data, states=(1, 2), bins=4, seed=0, restarts=1, iterations=60)
    assert fit.states == 1
    assert np.array(fit.model.emission).shape == (1, 4, 2)


def test_sampler_is_deterministic_and_reproduces_runs() -> None:
    a = sequences(KNOWN, 3, 50, seed=7)
    b = sequences(KNOWN, 3, 50, seed=7)
    for (c1, a1), (c2, a2) in zip(a, b, strict=True):
        assert np.array_equal(c1, c2) and np.array_equal(a1, a2)
    measured = stats(sequences(KNOWN, 400, 100, seed=8))
    # stationary distribution of the known chain: (1/3, 2/3)
    assert measured.rate == pytest.approx(0.3 / 3 + 0.85 * 2 / 3, abs=0.02)
    assert measured.after_accept > measured.after_reject + 0.2  # runs, not independence
    for label, (p, n) in measured.calibration.items():
        if n and label.startswith("0.00"):
            assert p < 0.5


def test_report_compares_model_and_traces() -> None:
    held = sequences(KNOWN, 50, 100, seed=9)
    fitted = stats(model_sequences(KNOWN, [len(c) for c, _ in held], seed=1))
    lines = compare_lines(fitted, stats(held))
    assert lines[1].startswith("acceptance rate")
    assert abs(fitted.rate - stats(held).rate) < 0.05
    assert list(run_lengths(np.array([1, 1, 0, 1, 0, 0, 1, 1, 1], dtype=bool))) == [2, 1, 3]


def test_fit_refuses_too_few_sequences() -> None:
    with pytest.raises(ValueError, match="at least 4 sequences"):
        fit_hmm(sequences(KNOWN, 2, 10, seed=0))
    with pytest.raises(ValueError, match="positive integers"):
        fit_hmm(sequences(KNOWN, 8, 10, seed=0), states=(0,))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"initial": [0.5, 0.6]}, "sum to 1"),
        ({"transition": [[1.0]]}, "transition must be 2 x 2"),
        ({"emission": [[[0.5, 0.5]], [[0.5, 0.5]]]}, "emission must be 2 x 2 x 2"),
        ({"within": [[0.3, 0.1], [0.6, 0.9]]}, "non-decreasing"),
        ({"edges": [0.0, 1.0, 0.5]}, "increase strictly"),
    ],
)
def test_schema_refuses_inconsistent_models(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HmmAcceptance.model_validate({**KNOWN.model_dump(), **change})


STARTED = HmmAcceptance(
    kind="hmm",
    edges=[0.0, 0.5, 1.0],
    within=[[0.1, 0.3, 0.45], [0.6, 0.9, 0.99]],
    initial=[1.0, 0.0, 0.0, 0.0],
    transition=[
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.2, 0.8],
        [0.0, 0.0, 0.9, 0.1],
        [0.0, 0.0, 0.05, 0.95],
    ],
    emission=[
        [[0.7, 0.2], [0.05, 0.05]],
        [[0.0, 0.02], [0.0, 0.98]],
        [[0.5, 0.1], [0.2, 0.2]],
        [[0.05, 0.05], [0.1, 0.8]],
    ],
)
"""KNOWN after a start phase of two positions: an unsure one, then a near-certain one."""


def test_fit_recovers_a_start_phase_and_em_never_decreases() -> None:
    data = sequences(STARTED, 200, 60, seed=13)
    fit = fit_hmm(data, states=(2,), edges=STARTED.edges, seed=0, restarts=2, start_states=(2,))
    model = fit.model
    assert (fit.start_states, fit.states) == (2, 2) and len(model.initial) == 4
    assert model.initial == [1.0, 0.0, 0.0, 0.0]
    a = np.asarray(model.transition)
    assert a[0, 1] == 1.0 and a[1, :2].sum() == 0.0 and a[2:, :2].sum() == 0.0
    assert np.allclose(model.emission[:2], STARTED.emission[:2], atol=0.07)
    assert np.allclose(a[2:, 2:], np.asarray(STARTED.transition)[2:, 2:], atol=0.05)
    plain = fit_hmm(data, states=(2,), edges=STARTED.edges, seed=0, restarts=2)
    held = Batch.of(encode(sequences(STARTED, 60, 60, seed=14), np.asarray(STARTED.edges)))
    assert log_likelihood(as_hmm(model), held) > log_likelihood(as_hmm(plain.model), held)
    chosen = fit_hmm(data, states=(2,), edges=STARTED.edges, seed=0, restarts=2,
                     start_states=(0, 2))  # fmt: skip
    assert chosen.start_states == 2 and set(chosen.selection) == {(0, 2), (2, 2)}
    history: list[list[float]] = []
    batch = Batch.of(encode(data, np.asarray(STARTED.edges)))
    baum_welch(batch, 4, 4, seed=0, restarts=2, iterations=80, start_states=2, history=history)
    for trace in history:
        assert np.all(np.diff(trace) >= -1e-9 * abs(trace[0]))


def test_fit_command_with_a_start_phase(tmp_path, capsys) -> None:
    from pipesd.cli import main

    paths = []
    for name, seed in (("fit", 17), ("held", 18)):
        path = tmp_path / f"{name}.csv"
        rows = ["sequence,position,confidence,accepted"]
        for i, (conf, acc) in enumerate(sequences(STARTED, 8, 30 + seed, seed=seed)):
            cells = enumerate(zip(conf, acc, strict=True))
            rows += [f"{i},{p},{c:.6f},{int(a)}" for p, (c, a) in cells]
        path.write_text("\n".join(rows) + "\n")
        paths.append(str(path))
    out = tmp_path / "model.json"
    argv = ["calibrate", "acceptance-fit", "--traces", paths[0], "--heldout", paths[1]]
    argv += ["--states", "1,2", "--bins", "2", "--start-states", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "chosen: 2 start states" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["fit"]["start_states"] == 2
    assert set(data["fit"]["selection_heldout_loglik_per_position"]) == {"2+1", "2+2"}
    assert math.isfinite(data["fit"]["heldout_traces_loglik_per_position"])
    model = HmmAcceptance.model_validate(data["acceptance"])
    assert model.sequence_lengths == [47] * 8 and model.initial[0] == 1.0
    with pytest.raises(SystemExit) as exc:
        main([*argv[:-1], "-1", "--out", str(tmp_path / "bad.json")])
    assert exc.value.code == 2
    assert "--start-states" in capsys.readouterr().err
