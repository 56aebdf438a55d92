"""The real-time edge executor (realrun/edge/executor.py) on SmolLM2-135M, CPU, over loopback HTTP.

Target: the verification server (create_app + LlamaTarget) in a uvicorn thread on 127.0.0.1.
Draft: SmolLM2 truncated to 28 of its 30 layers (models.truncate), flash attention on.
Every speculative policy (the oracle aside: it needs the future) must reproduce the target's
own greedy output (calibrate.acceptance.target_greedy, same prompt formatting), and the
record's token accounting must balance.
"""

from __future__ import annotations

import csv
import json
import time

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
pytest.importorskip("httpx", reason="httpx is not installed (extra 'realrun')")
pytest.importorskip("msgpack", reason="msgpack is not installed (extra 'realrun')")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (extra 'realrun')")
pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")

from edge_support import THREADS, model_or_skip, open_draft, shared_draft, thread_server
from model_marks import needs_smollm2

from calibrate.acceptance import target_greedy
from models.prompts import default_prompts, format_prompt
from policies.base import Decision, Policy
from policies.checker import check_policy
from policies.registry import make_policy, params_model
from realrun.edge.client import CloudClient
from realrun.edge.executor import run_edge
from realrun.edge.startup_probes import startup_probes
from realrun.testbed import run_testbed
from realrun.testbed_rules import acceptance_model
from simulator.engine import simulate
from simulator.scenario import expand_sweep

pytestmark = needs_smollm2

N_NEW = 24
POLICIES = {
    "vanilla": {},
    "hsl": {},
    "edgellm": {},
    "pipesd": {"autotune": False},
    "pmin": {},
    "hf_heuristic": {},
}
TIMING_FREE = ["vanilla", "hsl", "pmin"]
"""Stop-and-wait policies whose decisions depend on confidences and answers only (a fixed
length, a confidence threshold, and p_min, which drops its last token)."""


@pytest.fixture(scope="module")
def model_path():
    return model_or_skip()


@pytest.fixture(scope="module")
def prompt_text():
    return default_prompts(1)[0]


@pytest.fixture(scope="module")
def reference(model_path, prompt_text):
    return target_greedy(model_path, prompt_text, N_NEW, THREADS, stop_at_eos=False)


@pytest.fixture(scope="module")
def draft_path(model_path, tmp_path_factory):
    return shared_draft(model_path, tmp_path_factory)


@pytest.fixture(scope="module")
def draft(draft_path):
    llama = open_draft(draft_path)
    yield llama
    llama.close()


@pytest.fixture(scope="module")
def prompt(draft, prompt_text):
    return format_prompt(draft, prompt_text)


@pytest.fixture(scope="module")
def url(model_path):
    with thread_server(model_path) as address:
        yield address


class Recorder(Policy):
    """Wraps a policy: checks every answer is a valid Decision and logs the callbacks."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.mode = inner.mode
        self.drafts_while_pending = inner.drafts_while_pending
        self.is_oracle = inner.is_oracle
        self.log: list[tuple] = []
        self.last_now = -1.0

    def start_request(self, event):
        self.log.append(("start", event))
        self.inner.start_request(event)

    def on_draft(self, confidence, draft_time_s, pending):
        assert 0.0 <= confidence <= 1.0 + 1e-9 and draft_time_s >= 0.0
        decision = self.inner.on_draft(confidence, draft_time_s, pending)
        assert isinstance(decision, Decision)
        self.log.append(("draft", pending, decision, confidence))
        return decision

    def on_upload(self, n_tokens, duration_s):
        assert n_tokens >= 1 and duration_s >= 0.0
        self.log.append(("upload", n_tokens))
        self.inner.on_upload(n_tokens, duration_s)

    def startup_probe_sizes(self):
        return self.inner.startup_probe_sizes()

    def on_result(self, outcome):
        assert 0 <= outcome.accepted <= outcome.verified
        assert 0 <= outcome.surviving_sent <= outcome.surviving
        assert outcome.now_s >= self.last_now
        self.last_now = outcome.now_s
        decision = self.inner.on_result(outcome)
        assert isinstance(decision, Decision) and decision != Decision.VERIFY_DROP_LAST
        self.log.append(("result", outcome, decision))
        return decision

    def state(self):
        return self.inner.state()


def _make(name: str, seed: int = 0) -> Policy:
    return make_policy(name, params_model(name)(**POLICIES[name]), seed)


def test_reference_is_not_trivial(reference, draft, prompt):
    assert len(reference) == N_NEW
    assert len(prompt) > 5


@pytest.mark.parametrize("name", list(POLICIES))
def test_policy_lossless_and_accounting(name, url, draft, prompt, reference):
    check_policy(lambda: _make(name), seed=1, requests=2, tokens=24)
    policy = Recorder(_make(name))
    with CloudClient(url) as cloud:
        startup_probes(policy, cloud)
        origin = time.perf_counter()  # one clock for the edge session, as in the simulator
        for request in range(2):  # the second request reuses the draft's prompt cache
            record, output, timeline = run_edge(
                policy, draft, cloud, prompt, N_NEW, request, clock_origin=origin
            )
            assert output == reference, (name, request)
            assert record.new_tokens == N_NEW
            assert record.drafted == record.verified + record.discarded + record.bonus_matches
            assert record.accepted <= record.verified
            assert record.navs >= 1 and record.accepted + record.navs >= N_NEW
            assert record.start_s <= record.first_token_s <= record.end_s
            assert 0.0 < record.edge_busy_s <= record.end_s - record.start_s
            assert record.uplink_messages >= 1 + record.navs and record.uplink_bytes > 0
            assert record.downlink_bytes > 0 and record.cloud_busy_s > 0.0
            assert sum(1 for s in timeline if s.lane == "result") == record.navs
            assert sum(1 for s in timeline if s.lane == "draft") == record.drafted + 1
            # a NAV is one HTTP request (its unsent tokens ride on the verify)
            navs = [s for s in timeline if s.lane == "cloud" and s.label == "NAV"]
            batches = [s for s in timeline if s.lane == "uplink" and s.label.endswith("batch")]
            assert len(navs) == record.navs
            assert record.uplink_messages == 1 + record.navs + len(batches)
            assert record.local_tokens == 0 and not any(s.lane == "offline" for s in timeline)
    results = [e for e in policy.log if e[0] == "result"]
    assert len(results) >= 2


def test_unsupported_modes(draft, prompt):
    for name in ("cloud_ar", "split"):
        policy = make_policy(name, params_model(name)(), 0)
        with pytest.raises(ValueError, match="speculative policies only"):
            run_edge(policy, draft, None, prompt, 4)  # type: ignore[arg-type]


def test_realrun_edge_writes_the_simulators_schema(url, draft_path, tmp_path, write_scenario):
    from pipesd.cli import main

    scenario = write_scenario(
        policies=[{"name": "vanilla"}, {"name": "pipesd", "autotune": False}, {"name": "oracle"}],
        prompts={"count": 1, "prompt_len": 16, "max_new_tokens": 12},
    )
    out = tmp_path / "testbed"
    argv = ["realrun", "edge", str(scenario), "--server", url, "--draft", str(draft_path),
            "--threads", str(THREADS), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["policy"] for r in summary] == ["vanilla", "pipesd"]
    assert all(float(r["tpt_ms"]) > 0 for r in summary)
    results = list(csv.DictReader((out / "results.csv").open()))
    assert len(results) == 2 and all(r["new_tokens"] == "12" for r in results)
    testbed = json.loads((out / "manifest.json").read_text())["testbed"]
    assert testbed["skipped"] == {"oracle": "needs future acceptance outcomes"}
    assert len(list((out / "timelines").glob("*.csv"))) == 2


def _result_labels(spans) -> dict[int, list[str]]:
    """Per request, the "a/m accepted" label of every NAV answer, in time order."""
    out: dict[int, list[str]] = {}
    for span in sorted(spans, key=lambda s: float(s["start_s"])):
        if span["lane"] == "result":
            out.setdefault(int(span["request"]), []).append(span["label"])
    return out


def test_synthetic_acceptance_replays_the_simulators_outcomes(
    url, draft_path, tmp_path, write_scenario
):
    """Same seed, same acceptance stream: every timing-free policy makes the very same NAVs
    (accepted / verified, in order) on the testbed as in the simulator, and the testbed's
    run_testbed plumbing (on_start, link_info, acceptance) reaches the manifest."""
    seed, count = 3, 2
    scenario = write_scenario(
        policies=[{"name": name} for name in TIMING_FREE],
        prompts={"count": count, "prompt_len": 16, "max_new_tokens": N_NEW},
        seeds=[seed],
    )
    point = expand_sweep(scenario)[0]
    out = tmp_path / "synthetic"
    starts: list[float] = []
    link = {"kind": "loopback", "note": "test"}
    run_testbed(scenario, point, url, draft_path, THREADS, out, ["test"], link_info=link,
                acceptance="synthetic", on_start=lambda: starts.append(1.0))  # fmt: skip
    assert len(starts) == len(TIMING_FREE)  # one edge session per (policy, seed)
    testbed = json.loads((out / "manifest.json").read_text())["testbed"]
    assert testbed["acceptance"] == "synthetic" and testbed["link"] == link
    results = list(csv.DictReader((out / "results.csv").open()))
    counts = ("navs", "verified", "accepted", "drafted", "discarded")
    rejections = 0
    for index, entry in enumerate(point.scenario.policies):
        sim = simulate(point.scenario, entry, seed, record_timeline=True)
        expected = _result_labels(s._asdict() for s in sim.timeline)
        name = f"timeline_p0_{index}_{entry.label}_s{seed}.csv"
        real = _result_labels(csv.DictReader((out / "timelines" / name).open()))
        assert real == expected, entry.label
        rows = [r for r in results if r["policy"] == entry.label]
        for record, row in zip(sim.records, rows, strict=True):
            assert [int(row[c]) for c in counts] == [getattr(record, c) for c in counts]
            assert row["local_tokens"] == "0" and row["new_tokens"] == str(N_NEW)
        rejections += sum(r.verified - r.accepted for r in sim.records)
    assert rejections > 0  # the stream rejects some drafts: the comparison is not trivial


def test_synthetic_confidences_come_from_the_stream(url, draft, prompt, write_scenario):
    scenario = expand_sweep(write_scenario())[0].scenario
    stream = acceptance_model(scenario).stream(5, 0, 0, N_NEW)
    allowed = set(stream.confidence) | set(stream.off_path_confidence)
    policy = Recorder(_make("edgellm"))  # drafts while pending: on- and off-path positions
    with CloudClient(url) as cloud:
        record, output, _ = run_edge(policy, draft, cloud, prompt, N_NEW, acceptance_stream=stream)
    assert len(output) == N_NEW and record.local_tokens == 0
    confidences = [e[3] for e in policy.log if e[0] == "draft"]
    assert len(confidences) == record.drafted and set(confidences) <= allowed
    assert confidences[0] == stream.confidence[0]
    with pytest.raises(ValueError, match="fewer than"):
        run_edge(_make("vanilla"), draft, None, prompt, N_NEW + 1, acceptance_stream=stream)  # type: ignore[arg-type]
