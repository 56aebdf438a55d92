"""Draft profiler on the real SmolLM2-135M GGUF (llama-cpp-python, CPU)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from model_marks import needs_smollm2, smollm2_path

from calibrate.draft import DraftMeasurements, fit_measurements, profile_draft
from calibrate.fit_report import FitReport
from calibrate.samples import DecodeSample, PrefillSample
from simulator.profile import DraftLatency

pytestmark = needs_smollm2

PROMPTS = (16, 64)
CONTEXTS = (16, 48)
REPETITIONS = 2
WARMUP = 1


def _smollm2_or_skip() -> Path:
    return smollm2_path()


@pytest.fixture(scope="module")
def measured() -> DraftMeasurements:
    """One short, single-thread profile of the real model, shared by the tests below."""
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[models]')"
    )
    lines: list[str] = []
    m = profile_draft(
        _smollm2_or_skip(),
        threads=1,
        prompt_lengths=PROMPTS,
        context_lengths=CONTEXTS,
        repetitions=REPETITIONS,
        warmup=WARMUP,
        progress=lines.append,
    )
    assert lines, "progress callback was never called"
    return m


def test_samples_are_positive_and_complete(measured: DraftMeasurements) -> None:
    assert measured.threads == 1
    assert measured.n_vocab > 1000
    assert measured.n_ctx >= max(max(PROMPTS), max(CONTEXTS) + WARMUP + REPETITIONS)
    assert measured.llama_cpp_version
    # every run is kept or rejected (calibrate.noise); an unstable configuration (a busy
    # machine) took more passes of REPETITIONS runs each
    passes = {row["prompt_len"]: row["passes"] for row in measured.noise["prefill"]}
    assert set(passes) == set(PROMPTS)
    prefill = [*measured.prefill, *measured.prefill_rejected]
    assert sorted(s.prompt_len for s in prefill) == sorted(
        n for n in PROMPTS for _ in range(REPETITIONS * passes[n])
    )
    assert all(isinstance(s, PrefillSample) and s.seconds > 0 for s in measured.prefill)
    assert all(isinstance(s, DecodeSample) and s.seconds > 0 for s in measured.decode)
    assert {s.prompt_len for s in measured.prefill} == set(PROMPTS)
    # Decode samples sit at the context actually in the cache: C + warm-up steps + step index.
    passes = {row["context"]: row["passes"] for row in measured.noise["decode"]}
    expected = [c + WARMUP + i for c in CONTEXTS for i in range(REPETITIONS * passes[c])]
    decode = [*measured.decode, *(s for s, _ in measured.decode_rejected)]
    assert sorted(s.context_len for s in decode) == sorted(expected)
    assert [s.context_len for s in measured.decode] == sorted(
        s.context_len for s in measured.decode
    )
    rows = measured.sample_rows()
    assert len(rows["decode"]) == len(rows["confidence"]) == len(measured.decode)
    assert all(
        (row["cv"] or 0) >= 0 and row["statistic"] == "median" for row in rows["noise_decode"]
    )


def test_prefill_grows_with_prompt_length(measured: DraftMeasurements) -> None:
    stats = {s.length: s for s in measured.prefill_stats}
    assert set(stats) == set(PROMPTS)
    assert stats[64].median_s > stats[16].median_s
    for s in (*measured.prefill_stats, *measured.decode_stats):
        assert s.n + s.n_rejected == REPETITIONS * s.passes and s.n >= 1
        assert 0 < s.min_s <= s.median_s <= s.max_s
        assert s.iqr_s >= 0
    assert [s.length for s in measured.decode_stats] == list(CONTEXTS)
    assert any("prefill" in line for line in measured.lines())


def test_confidences_are_probabilities(measured: DraftMeasurements) -> None:
    assert len(measured.confidences) == len(measured.decode)
    assert all(0.0 < c <= 1.0 + 1e-12 for c in measured.confidences)
    verdicts = [i % 2 == 0 for i in range(len(measured.confidences))]
    samples = measured.acceptance_samples(verdicts)
    assert [s.accepted for s in samples] == verdicts
    with pytest.raises(ValueError, match="one verdict per decoded token"):
        measured.acceptance_samples([True])


def test_fit_gives_a_valid_draft_latency(measured: DraftMeasurements) -> None:
    latency, reports = fit_measurements(measured)
    assert isinstance(latency, DraftLatency)
    DraftLatency.model_validate(latency.model_dump())
    assert latency.decode_base_s > 0
    assert latency.prefill_per_token_s > 0
    assert set(reports) == {"prefill", "decode"}
    for report in reports.values():
        assert isinstance(report, FitReport)
        assert math.isfinite(report.mape_holdout) and report.mape_holdout >= 0
    assert reports["prefill"].n_samples == len(measured.prefill)
    assert reports["decode"].n_samples == len(measured.decode)
    # The fitted model reproduces the measured medians roughly (loose: shared CI machines).
    for s in measured.prefill_stats:
        assert latency.prefill_s(s.length) == pytest.approx(s.median_s, rel=0.5)
    assert np.isfinite(latency.decode_s(64))


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("threads", 0, "threads must be an integer >= 1"),
        ("threads", True, "threads must be an integer >= 1"),
        ("prompt_lengths", [], "at least one length"),
        ("prompt_lengths", [16, 0], "prompt_lengths must be an integer >= 1"),
        ("context_lengths", [8, 8], "must be distinct"),
        ("repetitions", 0, "repetitions must be an integer >= 1"),
        ("warmup", -1, "warmup must be an integer >= 0"),
        ("burst", -1, "burst must be an integer >= 0"),
        ("pause_s", -0.1, "pause_s must be a number >= 0"),
        ("pause_s", float("nan"), "pause_s must be a number >= 0"),
    ],
)
def test_profile_draft_rejects_bad_arguments(name: str, value: object, match: str) -> None:
    args: dict[str, object] = {
        "model_path": Path("unused.gguf"),
        "threads": 1,
        "prompt_lengths": [16, 32],
        "context_lengths": [16],
        "repetitions": 1,
        "warmup": 0,
    }
    args[name] = value
    with pytest.raises(ValueError, match=match):
        profile_draft(**args)  # type: ignore[arg-type]


def test_burst_mode_pauses_between_bursts_and_records_it(monkeypatch) -> None:
    """Decode steps timed in bursts: the run lasts at least the pauses, which stay out of the
    samples (each step is still one eval and the token choice). The pauses are virtual: each
    moves the clock on by PAUSE_S without sleeping, so a sample that held one would take longer
    than PAUSE_S however busy the machine is."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from calibrate import draft

    pause_s, real = 10.0, time.perf_counter
    offset = {"s": 0.0}

    def sleep(seconds: float) -> None:
        offset["s"] += seconds

    monkeypatch.setattr(draft.time, "perf_counter", lambda: real() + offset["s"])
    monkeypatch.setattr(draft.time, "sleep", sleep)
    m = profile_draft(
        _smollm2_or_skip(), threads=1, prompt_lengths=[8], context_lengths=[16, 24],
        repetitions=4, warmup=0, burst=2, pause_s=pause_s,
    )  # fmt: skip
    assert (m.burst, m.pause_s) == (2, pause_s)
    runs = sum(4 * row["passes"] for row in m.noise["decode"])  # re-measured if unstable
    assert len(m.decode) + len(m.decode_rejected) == runs >= 8
    assert offset["s"] == pause_s * runs / 2  # a pause before each burst of two steps
    assert all(s.seconds < pause_s for s in (*m.decode, *(s for s, _ in m.decode_rejected)))


class _FakeLlama:
    """Just what `_time_decode` uses: a token history, state save/load, a logits row."""

    def __init__(self) -> None:
        self.n_tokens = 0
        self.evaluated: list[int] = []  # position of every single-token eval, in time order
        self._ctx = type("Ctx", (), {"kv_cache_clear": lambda _self: None})()

    def n_vocab(self) -> int:
        return 4

    def reset(self) -> None:
        self.n_tokens = 0

    def eval(self, tokens: list[int]) -> None:
        if len(tokens) == 1:
            self.evaluated.append(self.n_tokens)
        self.n_tokens += len(tokens)

    def save_state(self) -> int:
        return self.n_tokens

    def load_state(self, state: int) -> None:
        self.n_tokens = state


def test_decode_visits_every_context_in_turn_and_resumes_where_it_stopped(monkeypatch) -> None:
    from calibrate import draft

    monkeypatch.setattr(draft, "_last_logits", lambda _llama, n: np.arange(n, dtype=float))
    monkeypatch.setattr(draft, "VISIT_STEPS", 2)
    llama = _FakeLlama()
    lines: list[str] = []
    clock = iter(np.arange(0.0, 1e3, 1e-3))  # every step takes 1 ms: nothing to re-measure
    monkeypatch.setattr(draft.time, "perf_counter", lambda: next(clock))
    steps = draft._time_decode(llama, list(range(64)), [10, 30], 1, 4, 0, 0.0, lines.append)
    # visits of 2 steps, contexts in turn, each resuming where it stopped (5 steps each)
    assert llama.evaluated == [10, 11, 30, 31, 12, 13, 32, 33, 14, 34]
    decode = [s for s, _ in steps.kept(grouped=True)]
    assert [s.context_len for s in decode] == [11, 12, 13, 14, 31, 32, 33, 34]  # 1 warm-up
    assert steps.keys == [10, 30] and steps.rejected() == []
    assert sum("round" in line for line in lines) == 3

    llama = _FakeLlama()
    draft._time_decode(llama, list(range(64)), [10, 30], 0, 3, 3, 0.0, print)
    assert llama.evaluated == [10, 11, 12, 30, 31, 32]  # a burst is one visit
