"""Calibration on a busy machine (issue 21): the tiny torch target profiled while CPU hogs
started by the test keep every core busy fits within a stated tolerance of its quiet fit; the
tiny SmolLM2 target by the wall clock still fits and records how noisy it was."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from model_marks import needs_smollm2, smollm2_path

GRID = {
    "token_counts": (1, 2, 4),
    "context_lengths": (8, 24, 40),
    "prompt_lengths": (8, 16, 32),
    "repetitions": 3,
    "warmup": 1,
    "energy_meter": None,
}
TORCH_GRID = {
    "token_counts": (1, 4, 16),
    "context_lengths": (16, 64, 128),
    "prompt_lengths": (8, 32, 64),
    "repetitions": 3,
    "warmup": 1,
}
TOLERANCE = 0.25
"""Busy and quiet fits of the tiny torch target may differ by this much at a measured point
(they differed by 0-14% in verification and 0-11% in prefill here)."""


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M cut to its first 2 layers (shares the real tokenizer and head)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    pytest.importorskip("gguf", reason="gguf is not installed")
    from models.truncate import truncate_gguf

    return truncate_gguf(smollm2_path(), tmp_path_factory.mktemp("busy") / "tiny.gguf", 2)


@contextlib.contextmanager
def _hogs() -> Iterator[list[subprocess.Popen]]:
    """One CPU-bound process per core, stopped (by their ids) however the test ends."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        time.sleep(0.3)  # let them take the cores
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


PROFILE = """
import json, sys
from calibrate.target_served_torch import profile_torch_served_target
grid = json.loads(sys.argv[1])
measured = profile_torch_served_target("tiny", "cpu", "float32", "eager", energy_meter=None,
                                       threads=1, n_ctx=512, clock="auto", **grid)
latency, reports = measured.fit()
print(json.dumps({"clock": measured.clock, "latency": latency.model_dump(),
                  "mape": reports["forward"].mape_holdout}))
"""
"""The tiny torch shape through the server's TorchTarget on one thread, timed by its CPU time,
in a fresh process as the command line runs it (CPU time is one thread's work only when the
process computes on that thread: llama.cpp's verifications here still took 2x the CPU time
under the hogs, cause not established, so they are checked by the wall clock below)."""


def _profile_in_a_fresh_process() -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROFILE, json.dumps(TORCH_GRID)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cpu_clock_fit_under_cpu_hogs_stays_near_the_quiet_fit() -> None:
    pytest.importorskip("torch", reason="torch (extra 'models') is not installed")
    from simulator.profile import TargetLatency

    before = _profile_in_a_fresh_process()
    with _hogs() as hogs:
        busy = _profile_in_a_fresh_process()
        assert all(hog.poll() is None for hog in hogs)  # they were busy all along
    after = _profile_in_a_fresh_process()  # a second quiet fit: the quiet side is noisy too
    assert before["clock"] == busy["clock"] == after["clock"] == "cpu"
    quiet = [TargetLatency(**fit["latency"]) for fit in (before, after)]
    busy_latency = TargetLatency(**busy["latency"])

    def near_a_quiet_fit(time_of) -> bool:
        """The busy fit within TOLERANCE of the band the two quiet fits span."""
        low, high = sorted(time_of(latency) for latency in quiet)
        return low * (1 - TOLERANCE) <= time_of(busy_latency) <= high * (1 + TOLERANCE)

    for n in TORCH_GRID["token_counts"]:
        for c in TORCH_GRID["context_lengths"]:
            assert near_a_quiet_fit(lambda lat: lat.forward_s(n, c)), (n, c)  # noqa: B023
    for length in TORCH_GRID["prompt_lengths"]:
        assert near_a_quiet_fit(lambda lat: lat.prefill_s(length)), length  # noqa: B023


@needs_smollm2
def test_wall_clock_under_cpu_hogs_still_fits_and_records_the_noise(tiny_gguf: Path) -> None:
    """By the wall clock a busy machine's times are what they are: the profile still fits a
    valid model (bounded where the samples extrapolate to 0), and its part says how noisy it
    was, configuration by configuration."""
    from calibrate.target_llama import profile_llama_target

    lines: list[str] = []
    small = {**GRID, "token_counts": (1, 3), "repetitions": 2}
    with _hogs():
        busy = profile_llama_target(tiny_gguf, 1, **small, clock="wall", progress=lines.append)
    latency, _ = busy.fit()
    assert latency.forward_base_s > 0 and latency.forward_s(3, 30) > latency.forward_s(1, 30)
    rows = busy.sample_rows()["noise_forward"]
    assert len(rows) == 2 * 3 and all(row["clock"] == "wall" for row in rows)
    unstable = [row for row in rows if row["unstable"]]
    warnings = [line for line in lines if line.startswith("warning: target forward")]
    assert bool(unstable) == bool(warnings)  # unstable configurations are named
    for row in unstable[:6]:  # the warning names six, then counts the rest
        assert f"tokens {row['tokens']}, context {row['context']}" in warnings[0]
