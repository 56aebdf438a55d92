"""Batched verification measured as served (calibrate/target_batch.py): every sample labelled
with the batch's true positions, context and size; the fit's batch term; the real target."""

from __future__ import annotations

import json

import pytest
from model_marks import needs_smollm2

from calibrate.target_batch import BatchGrid, fit_batches, main, measure_batches
from realrun.cloud.synthetic_target import SyntheticTarget
from simulator.profile import TargetLatency

LATENCY = TargetLatency(
    prefill_base_s=0.001,
    prefill_per_token_s=1e-5,
    forward_base_s=0.004,
    forward_per_token_s=0.002,
    forward_per_context_token_s=1e-5,
    forward_per_extra_sequence_s=0.003,
)
GRID = BatchGrid(batch_sizes=(1, 2, 3), token_counts=(1, 3), contexts=(8, 40), repetitions=1,
                 warmup=0)  # fmt: skip


def test_samples_carry_the_features_the_target_was_timed_on():
    target = SyntheticTarget(n_vocab=64, latency=LATENCY)
    prefill, forward = measure_batches(target, GRID, seed=3)
    assert len(prefill) == 3 * len(GRID.contexts)
    assert len(forward) == 3 * 2 * len(GRID.contexts)
    assert {(s.batch, s.new_positions // s.batch) for s in forward} == {
        (b, k) for b in (1, 2, 3) for k in (1, 3)
    }
    for s in forward:  # the synthetic target sleeps exactly its model's time (or a bit more)
        modelled = LATENCY.forward_s(s.new_positions, s.context_len, s.batch)
        assert modelled - 1e-4 <= s.seconds <= modelled + 0.05


def test_the_fit_finds_the_extra_sequences_cost():
    target = SyntheticTarget(n_vocab=64, latency=LATENCY)
    prefill, forward = measure_batches(target, GRID, seed=4)
    latency, report = fit_batches(prefill, forward)
    assert report.n_samples == len(forward)
    # sleeps overshoot on a busy machine: the 3 ms term within 1.5 ms
    assert latency.forward_per_extra_sequence_s == pytest.approx(0.003, abs=0.0015)


@pytest.mark.parametrize("flag, value", [("--tokens", "1,x"), ("--batch-sizes", "0,2")])
def test_bad_grid_is_one_line(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([flag, value, "--out", str(tmp_path / "batch.json")])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err.strip().splitlines()[-1]


@needs_smollm2
def test_llama_target_batches_through_its_server_call(tmp_path):
    out = tmp_path / "batch.json"
    argv = ["--batch-sizes", "1,2,3", "--tokens", "1,2", "--contexts", "16,48",
            "--repetitions", "1", "--warmup", "0", "--clock", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert len(result["samples"]) == 12
    assert result["forward"]["forward_base_s"] > 0
    with pytest.raises(SystemExit):  # never overwrites
        main(argv)


@needs_smollm2
def test_calibrate_target_with_batch_sizes_fits_the_batched_forward(tmp_path):
    from pipesd.cli import main as pipesd_main

    out = tmp_path / "target.json"
    argv = ["calibrate", "target", "--backend", "llama", "--model", "smollm2-135m", "--threads",
            "1", "--batch-sizes", "1,2,3", "--token-counts", "1,2,3", "--context-lengths", "16,32",
            "--prompt-lengths", "8,16,32", "--repetitions", "1", "--warmup", "0",
            "--out", str(out)]  # fmt: skip
    assert pipesd_main(argv) == 0
    part = json.loads(out.read_text())
    assert "batched verification" in part["notes"]["target_latency"]
