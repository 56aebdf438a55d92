"""Acceptance recorder on a real pair: SmolLM2-135M and a layer-truncated copy (llama.cpp, CPU)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from model_marks import needs_smollm2, smollm2_path

from calibrate.acceptance import first_mismatch, record_acceptance, target_greedy
from calibrate.acceptance_recording import (
    AcceptanceRecording,
    samples,
    write_rounds,
    write_trace,
)
from calibrate.fit import fit_acceptance
from models.prompts import default_prompts
from models.truncate import truncate_gguf
from simulator.acceptance import AcceptanceModel, ReplayTraces
from simulator.acceptance_spec import CalibratedAcceptance, ReplayAcceptance

pytestmark = needs_smollm2

PROMPTS = default_prompts(2)
MAX_NEW = 24
DRAFT_LEN = 4
THREADS = 2
KEEP = 15


def _needs() -> Path:
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[models]')"
    )
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")
    return smollm2_path()


@pytest.fixture(scope="module")
def target() -> Path:
    return _needs()


@pytest.fixture(scope="module")
def draft(target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return truncate_gguf(target, tmp_path_factory.mktemp("draft") / "draft.gguf", KEEP)


@pytest.fixture(scope="module")
def recording(draft: Path, target: Path) -> AcceptanceRecording:
    lines: list[str] = []
    rec = record_acceptance(
        draft, target, PROMPTS, MAX_NEW, DRAFT_LEN, threads=THREADS, progress=lines.append
    )
    assert len(lines) == len(PROMPTS)
    return rec


# --- recording ----------------------------------------------------------------------------------


def test_speculative_output_is_the_targets_greedy_output(
    recording: AcceptanceRecording, target: Path
) -> None:
    for prompt, output in zip(PROMPTS, recording.outputs, strict=True):
        reference = target_greedy(target, prompt, MAX_NEW, threads=THREADS)
        assert first_mismatch(reference, output) is None
        assert list(output) == reference


def test_positions_and_rounds_are_consistent(recording: AcceptanceRecording) -> None:
    rec = recording
    assert len(rec.outputs) == len(PROMPTS)
    assert all(1 <= len(o) <= MAX_NEW for o in rec.outputs)
    assert rec.positions and rec.rounds
    for p in rec.positions:
        assert 0.0 < p.confidence <= 1.0 and math.isfinite(p.confidence)
        # the target's top-32, most probable first: greedy acceptance is agreement with its top-1
        assert len(p.top_ids) == len(p.top_probs) == 32
        assert list(p.top_probs) == sorted(p.top_probs, reverse=True)
        assert p.accepted == (p.token == p.top_ids[0])
        assert 0.0 <= p.accept_prob <= 1.0
        assert 0 <= p.sequence < len(PROMPTS)
        assert 0 <= p.position < len(rec.outputs[p.sequence])
    for s in range(len(PROMPTS)):
        seq = [p.position for p in rec.positions if p.sequence == s]
        assert seq == sorted(set(seq))  # strictly increasing, no duplicates
    for r in rec.rounds:
        assert 1 <= r.drafted <= DRAFT_LEN and 0 <= r.accepted <= r.drafted
        on_path = [
            p for p in rec.positions if p.sequence == r.sequence and r.position <= p.position
        ]
        on_path = [p for p in on_path if p.position < r.position + r.accepted + 1]
        # the accepted prefix, then the first rejection (unless the whole draft was accepted)
        assert [p.accepted for p in on_path[: r.accepted]] == [True] * r.accepted
        if r.accepted < r.drafted:
            assert on_path[r.accepted].accepted is False
            assert on_path[r.accepted].position == r.position + r.accepted
    n_accepted = sum(p.accepted for p in rec.positions)
    rejected_rounds = sum(r.accepted < r.drafted for r in rec.rounds)
    assert n_accepted == rec.accepted == sum(r.accepted for r in rec.rounds)
    assert len(rec.positions) - n_accepted == rejected_rounds
    # each round adds its accepted tokens plus one target token (unless it filled the output)
    for s, output in enumerate(rec.outputs):
        rounds = [r for r in rec.rounds if r.sequence == s]
        assert sum(r.accepted for r in rounds) + len(rounds) >= len(output)
    assert 0.0 <= rec.acceptance_rate <= rec.position_acceptance_rate <= 1.0
    assert rec.mean_accepted_per_round == pytest.approx(rec.accepted / len(rec.rounds))
    assert len(rec.lines()) == 3


def test_trace_replays_in_the_simulator(recording: AcceptanceRecording, tmp_path: Path) -> None:
    path = write_trace(recording, tmp_path / "trace.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(recording.positions)
    traces = ReplayTraces.load(path)
    assert len(traces.sequences) == len(PROMPTS)
    confidence = np.concatenate([c for c, _ in traces.sequences])
    accepted = np.concatenate([a for _, a in traces.sequences])
    assert np.array_equal(confidence, [p.confidence for p in recording.positions])
    assert np.array_equal(accepted, [p.accepted for p in recording.positions])
    model = AcceptanceModel(ReplayAcceptance(kind="replay", trace="trace.csv"), tmp_path)
    stream = model.stream(seed=1, edge=0, request=0, n_positions=100)
    assert len(stream.confidence) == 100 and len(stream.accepted) == 100
    assert write_rounds(recording, tmp_path / "rounds.csv").is_file()


def test_samples_fit_a_calibrated_acceptance(recording: AcceptanceRecording) -> None:
    items = samples(recording)
    assert len(items) == len(recording.positions)
    model, report = fit_acceptance(items)
    assert isinstance(model, CalibratedAcceptance)
    assert report.n_samples == len(items)
    CalibratedAcceptance.model_validate(model.model_dump())


def test_the_target_as_its_own_draft_accepts_everything(target: Path) -> None:
    rec = record_acceptance(target, target, PROMPTS[:1], 12, DRAFT_LEN, threads=THREADS)
    assert rec.position_acceptance_rate == 1.0
    assert all(p.accepted for p in rec.positions)
    assert list(rec.outputs[0]) == target_greedy(target, PROMPTS[0], 12, threads=THREADS)


# --- arguments and prompts -----------------------------------------------------------------------


def test_bad_arguments_are_refused(draft: Path, target: Path) -> None:
    with pytest.raises(ValueError, match="draft_len"):
        record_acceptance(draft, target, PROMPTS, 8, 0, threads=1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        record_acceptance(draft, target, PROMPTS, 0, threads=1)
    with pytest.raises(ValueError, match="prompts"):
        record_acceptance(draft, target, [], 8, threads=1)
    with pytest.raises(ValueError, match="threads"):
        record_acceptance(draft, target, PROMPTS, 8, threads=0)
