"""The real-time edge executor (realrun/edge.py) on SmolLM2-135M, CPU, over loopback HTTP.

Target: the verification server (create_app + LlamaTarget) in a uvicorn thread on 127.0.0.1.
Draft: SmolLM2 truncated to 28 of its 30 layers (calibrate.truncate), flash attention on.
Every speculative policy (the oracle aside: it needs the future) must reproduce the target's
own greedy output (calibrate.acceptance.target_greedy, same prompt formatting), and the
record's token accounting must balance.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
pytest.importorskip("httpx", reason="httpx is not installed (extra 'realrun')")
pytest.importorskip("msgpack", reason="msgpack is not installed (extra 'realrun')")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (extra 'realrun')")
llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python (extra 'models') is not installed"
)

from calibrate.acceptance import default_prompts, format_prompt, target_greedy  # noqa: E402
from calibrate.models import resolve_model  # noqa: E402
from calibrate.truncate import truncate_gguf  # noqa: E402
from policies.base import Decision, Policy  # noqa: E402
from policies.checker import check_policy  # noqa: E402
from policies.registry import make_policy, params_model  # noqa: E402
from realrun.client import CloudClient  # noqa: E402
from realrun.edge import run_edge, startup_probes  # noqa: E402
from realrun.server import create_app  # noqa: E402
from realrun.target import LlamaTarget  # noqa: E402
from simulator.errors import ConfigError  # noqa: E402

THREADS = 1
N_NEW = 24
KEEP_LAYERS = 28
POLICIES = {
    "vanilla": {},
    "hsl": {},
    "edgellm": {},
    "pipesd": {"autotune": False},
    "pmin": {},
    "hf_heuristic": {},
}


@pytest.fixture(scope="module")
def model_path():
    try:
        return resolve_model("smollm2-135m")
    except ConfigError as exc:
        pytest.skip(f"SmolLM2 GGUF not available: {exc}")


@pytest.fixture(scope="module")
def prompt_text():
    return default_prompts(1)[0]


@pytest.fixture(scope="module")
def reference(model_path, prompt_text):
    return target_greedy(model_path, prompt_text, N_NEW, THREADS, stop_at_eos=False)


@pytest.fixture(scope="module")
def draft_path(model_path, tmp_path_factory):
    return truncate_gguf(model_path, tmp_path_factory.mktemp("draft") / "draft.gguf", KEEP_LAYERS)


@pytest.fixture(scope="module")
def draft(draft_path):
    path = draft_path
    llama = llama_cpp.Llama(
        model_path=str(path),
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_ctx=512,
        logits_all=False,
        flash_attn=True,
        verbose=False,
        seed=0,
    )
    yield llama
    llama.close()


@pytest.fixture(scope="module")
def prompt(draft, prompt_text):
    return format_prompt(draft, prompt_text)


@pytest.fixture(scope="module")
def url(model_path):
    import uvicorn

    target = LlamaTarget(model_path, threads=THREADS, n_ctx=512)
    app = create_app(model_path, target=target, rate_limit_per_s=None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        target.close()


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
        self.log.append(("draft", pending, decision))
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
    results = [e for e in policy.log if e[0] == "result"]
    assert len(results) >= 2


def test_unsupported_modes(draft, prompt):
    for name in ("cloud_ar", "split"):
        policy = make_policy(name, params_model(name)(), 0)
        with pytest.raises(ValueError, match="speculative policies only"):
            run_edge(policy, draft, None, prompt, 4)  # type: ignore[arg-type]


def test_realrun_edge_writes_the_simulators_schema(url, draft_path, tmp_path, write_scenario):
    import csv
    import json

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
