"""Per-request acceptance models: the `by_request` kind and the K-fold models behind it
(calibrate.acceptance_folds, `pipesd calibrate acceptance-folds`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from test_acceptance_check import TRUE  # the checks' synthetic truth

from calibrate.acceptance_crossval import write_replay_csv
from calibrate.acceptance_folds import family_sequences, fit_folds
from calibrate.acceptance_hmm import fit_hmm
from calibrate.acceptance_recording import PositionRecord
from calibrate.acceptance_trace import write_trace_gz
from models.prompts import family_prompts
from pipesd.cli import main
from simulator.acceptance import AcceptanceModel, HmmSampler
from simulator.acceptance_spec import ByRequestAcceptance, HmmAcceptance


def constant_model(accepts: bool) -> HmmAcceptance:
    """One regime, one confidence bin: every position accepted, or none."""
    verdict = [0.0, 1.0] if accepts else [1.0, 0.0]
    return HmmAcceptance(
        kind="hmm",
        edges=[0.0, 1.0],
        within=[[0.4, 0.9]],
        initial=[1.0],
        transition=[[1.0]],
        emission=[[verdict]],
    )


def test_each_request_is_simulated_by_its_assigned_model(tmp_path: Path) -> None:
    spec = ByRequestAcceptance(
        kind="by_request",
        models=[constant_model(True), constant_model(False)],
        assignment=[0, 1, 1],
    )
    model = AcceptanceModel(spec, tmp_path)
    accepted = [model.stream(seed=3, edge=0, request=r, n_positions=20).accepted for r in range(5)]
    assert [bool(a.all()) for a in accepted] == [True, False, False, True, False]  # cycling
    assert not any(a.any() for a in accepted[1:3])
    again = AcceptanceModel(spec, tmp_path).stream(seed=3, edge=0, request=0, n_positions=20)
    assert again.confidence == model.stream(seed=3, edge=0, request=0, n_positions=20).confidence


def test_by_request_refuses_assignments_outside_its_models() -> None:
    with pytest.raises(ValidationError, match="assignment must index models"):
        ByRequestAcceptance(kind="by_request", models=[constant_model(True)], assignment=[0, 1])
    with pytest.raises(ValidationError, match="one prompt per assignment"):
        ByRequestAcceptance(
            kind="by_request", models=[constant_model(True)], assignment=[0, 0], prompt_ids=["a"]
        )


def sequences(count: int, seed: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` sequences of 30-36 positions from the checks' regime-switching truth."""
    rng = np.random.default_rng(seed)
    return [HmmSampler.of(TRUE).sequence(rng, 30 + i % 7) for i in range(count)]


def write_traces(path: Path, ids: list[str], pairs: list, family: str = "humaneval") -> Path:
    """A `calibrate traces` file holding `pairs` as the traces of prompts `ids`."""
    positions = [
        PositionRecord(s, p, float(c), bool(a))
        for s, (conf, acc) in enumerate(pairs)
        for p, (c, a) in enumerate(zip(conf, acc, strict=True))
    ]
    return write_trace_gz(positions, path, {"family": family, "prompt_ids": ids})


def test_traces_are_put_in_the_runs_prompt_order_whatever_their_files(tmp_path: Path) -> None:
    """The held-out split's prompts recorded in two files, each in reverse order: the
    sequences come back in the split's order (request r, prompt r); a missing prompt or
    another family's traces are refused in one line."""
    ids = [p.id for p in family_prompts("humaneval", "heldout")]
    pairs = sequences(len(ids))
    half = len(ids) // 2
    first = write_traces(tmp_path / "a.csv.gz", ids[:half][::-1], pairs[:half][::-1])
    second = write_traces(tmp_path / "b.csv.gz", ids[half:][::-1], pairs[half:][::-1])
    got_ids, got = family_sequences([second, first], "humaneval", "heldout")
    assert got_ids == ids
    for (c, a), (c2, a2) in zip(got, pairs, strict=True):
        assert np.allclose(c, c2) and np.array_equal(a, a2)
    with pytest.raises(Exception, match=f"no trace of {len(ids) - half} of the {len(ids)}"):
        family_sequences([first], "humaneval", "heldout")
    other = write_traces(tmp_path / "c.csv.gz", ids, pairs, family="reference")
    with pytest.raises(Exception, match="not the run's 'humaneval'"):
        family_sequences([other], "humaneval", "heldout")
    plain = write_replay_csv(pairs, tmp_path / "plain.csv.gz")  # no provenance line
    with pytest.raises(Exception, match="expected the trace header"):
        family_sequences([plain], "humaneval", "heldout")


def test_fold_k_is_fitted_without_the_prompts_it_predicts() -> None:
    """Request r gets fold r % K, and fold k's model is exactly the fit of every other
    fold's sequences."""
    pairs = sequences(30)
    ids = [f"p{r}" for r in range(30)]
    fitted = fit_folds(ids, pairs, folds=3, states=[1, 2], bins=3, seed=1)
    assert fitted.acceptance.assignment == [r % 3 for r in range(30)]
    assert fitted.acceptance.prompt_ids == ids and len(fitted.chosen) == 3
    for k, model in enumerate(fitted.acceptance.models):
        alone = fit_hmm([s for r, s in enumerate(pairs) if r % 3 != k], [1, 2], 3, 1)
        assert model.transition == alone.model.transition
        assert model.emission == alone.model.emission
    with pytest.raises(ValueError, match="folds must be in"):
        fit_folds(ids, pairs, folds=31, states=[1], bins=3)


def test_folds_cli_writes_a_model_once_and_checks_refuse_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ids = [p.id for p in family_prompts("humaneval", "heldout")]
    trace = write_traces(tmp_path / "t.csv.gz", ids, sequences(len(ids)))
    out = tmp_path / "folds.json"
    argv = ["calibrate", "acceptance-folds", "--traces", str(trace), "--split", "heldout",
            "--folds", "2", "--states", "1", "--start-states", "0", "--bins", "2",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "42 prompts of humaneval/heldout in 2 folds" in capsys.readouterr().out
    record = json.loads(out.read_text())
    acceptance = ByRequestAcceptance.model_validate(record["acceptance"])
    assert acceptance.prompt_ids == ids and len(acceptance.models) == 2
    assert record["provenance"]["split"] == "heldout" and record["fit"]["folds"] == 2
    assert main(argv) == 2  # never overwritten
    assert (
        capsys.readouterr().err.strip() == f"pipesd: error: --out: {out} exists (never overwritten)"
    )
    held = str(trace)
    assert main(["calibrate", "acceptance-check", "--model", str(out), "--heldout", held]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "acceptance.kind" in err[0] and "by_request" in err[0]
    assert main([*argv[:-1], str(tmp_path / "all.json"), "--split", "all"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trace of 122 of the 164 prompts" in err[0]
