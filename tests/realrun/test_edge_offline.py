"""The edge's offline fallback (realrun/edge/executor.py, "Cloud lost") on SmolLM2-135M, CPU.

A real server subprocess is SIGKILLed mid-request: the request still ends with max_new_tokens
tokens, the prefix committed before the kill is the target's own greedy output, the rest is
the draft's own greedy continuation of it, and the record counts the tokens made locally.
With the cloud still down the next request runs wholly on the edge; once the server is back,
the next one uses it again (lossless). A silent server (timeout), HTTP 503 and a refused
request (4xx, a bug: it raises) are checked without a model server.
"""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
pytest.importorskip("httpx", reason="httpx is not installed (extra 'realrun')")
pytest.importorskip("msgpack", reason="msgpack is not installed (extra 'realrun')")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (extra 'realrun')")
pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")

import httpx
from edge_support import (
    THREADS,
    ServerProcess,
    free_port,
    model_or_skip,
    open_draft,
    shared_draft,
)
from model_marks import needs_smollm2

from calibrate.acceptance import target_greedy
from models.prompts import default_prompts, format_prompt
from policies.base import Policy
from policies.registry import make_policy, params_model
from realrun.edge.client import CloudClient, CloudError
from realrun.edge.drafts import GreedyDraft
from realrun.edge.executor import run_edge
from realrun.edge.startup_probes import startup_probes
from realrun.protocol import encode

pytestmark = needs_smollm2

N_NEW = 24


@pytest.fixture(scope="module")
def model_path():
    return model_or_skip()


@pytest.fixture(scope="module")
def draft(model_path, tmp_path_factory):
    llama = open_draft(shared_draft(model_path, tmp_path_factory))
    yield llama
    llama.close()


@pytest.fixture(scope="module")
def prompt(draft):
    return format_prompt(draft, default_prompts(1)[0])


@pytest.fixture(scope="module")
def reference(model_path):
    return target_greedy(model_path, default_prompts(1)[0], N_NEW, THREADS, stop_at_eos=False)


@pytest.fixture(scope="module")
def server(model_path):
    process = ServerProcess(model_path, free_port())
    try:
        yield process
    finally:
        process.kill()


def greedy(draft, context: list[int], n: int) -> list[int]:
    """The draft's own greedy continuation of `context`, one token at a time."""
    runner, out = GreedyDraft(draft), []
    for _ in range(n):
        out.append(runner.next(context + out)[0])
    return out


class KillAfter(Policy):
    """Wraps a policy; kills the cloud inside the `after`-th answer and notes what was
    committed by then (every answer commits its accepted drafts plus one token)."""

    def __init__(self, inner: Policy, after: int, kill) -> None:
        self.inner, self.after, self.kill = inner, after, kill
        self.mode, self.is_oracle = inner.mode, inner.is_oracle
        self.drafts_while_pending = inner.drafts_while_pending
        self.answers = self.committed = 0

    def start_request(self, event):
        self.inner.start_request(event)

    def on_draft(self, confidence, draft_time_s, pending):
        return self.inner.on_draft(confidence, draft_time_s, pending)

    def on_upload(self, n_tokens, duration_s):
        self.inner.on_upload(n_tokens, duration_s)

    def on_result(self, outcome):
        self.answers += 1
        self.committed += outcome.accepted + 1
        if self.answers == self.after:
            self.kill()
        return self.inner.on_result(outcome)


def _make(name: str) -> Policy:
    return make_policy(name, params_model(name)(), 0)


def _balanced(record) -> bool:
    local = record.local_tokens
    return record.drafted == record.verified + record.discarded + record.bonus_matches + local


@pytest.mark.parametrize("name", ["vanilla", "edgellm"])
def test_cloud_killed_mid_request(name, server, draft, prompt, reference):
    server.start()
    with CloudClient(server.url, timeout=10.0) as cloud:
        policy = KillAfter(_make(name), 2, server.kill)
        record, output, timeline = run_edge(policy, draft, cloud, prompt, N_NEW)
        committed = min(policy.committed, N_NEW)
        assert policy.answers == record.navs == 2 and 0 < committed < N_NEW
        assert len(output) == N_NEW and record.new_tokens == N_NEW
        assert output[:committed] == reference[:committed]  # the cloud's work is kept
        assert output[committed:] == greedy(draft, prompt + output[:committed], N_NEW - committed)
        assert record.local_tokens == N_NEW - committed and _balanced(record)
        offline = [s for s in timeline if s.lane == "offline"]
        assert len(offline) == 1 and offline[0].first == committed and offline[0].last == N_NEW
        assert record.first_token_s <= offline[0].start_s <= record.end_s

        # the cloud is still down: this request is the draft's alone
        record, output, _ = run_edge(_make(name), draft, cloud, prompt, N_NEW)
        assert record.local_tokens == N_NEW and record.navs == 0 and _balanced(record)
        assert output == greedy(draft, list(prompt), N_NEW)

        # the cloud is back: the next request uses it again
        server.start()
        record, output, _ = run_edge(_make(name), draft, cloud, prompt, N_NEW)
        assert record.local_tokens == 0 and record.navs >= 1 and output == reference


def test_a_silent_cloud_times_out(draft, prompt):
    """A peer that accepts connections but never answers (a dropped link): the client's
    timeout ends the wait and the draft finishes the request."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen(8)
        url = f"http://127.0.0.1:{sink.getsockname()[1]}"
        with CloudClient(url, timeout=0.5) as cloud:
            start = time.perf_counter()
            record, output, timeline = run_edge(_make("vanilla"), draft, cloud, prompt, 8)
            elapsed = time.perf_counter() - start
    assert elapsed >= 0.5 and record.local_tokens == 8 and record.navs == 0
    assert output == greedy(draft, list(prompt), 8)
    labels = [s.label for s in timeline if s.lane == "offline"]
    assert len(labels) == 1 and labels[0].startswith("local: ReadTimeout")


def _answering(status: int):
    body = encode({"error": "test"})
    return httpx.MockTransport(lambda request: httpx.Response(status, content=body))


def test_server_errors_go_local_but_refusals_raise(draft, prompt):
    with CloudClient("http://cloud.test", transport=_answering(503)) as cloud:
        assert startup_probes(_make("pipesd"), cloud) == 0  # probing stops, nothing raises
        record, output, _ = run_edge(_make("vanilla"), draft, cloud, prompt, 6)
    assert record.local_tokens == 6 and output == greedy(draft, list(prompt), 6)
    with (
        CloudClient("http://cloud.test", transport=_answering(422)) as cloud,
        pytest.raises(CloudError, match="HTTP 422"),
    ):
        run_edge(_make("vanilla"), draft, cloud, prompt, 6)
