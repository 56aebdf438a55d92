"""PicoSpec's edge-side verification on the testbed: top-K verify answers, edge decisions.

All on realrun.cloud.synthetic_target.SyntheticTarget (seeded logits, no model). The round
trip goes through the server's routes (TestClient); the statistical tests drive the backend
and the session rule directly (no HTTP per sample) and decide with
realrun.edge.topk_verify.decide_topk, the function the edge runs.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
pytest.importorskip("msgpack", reason="msgpack is not installed (extra 'realrun')")

import msgpack
from chi_square import chi2_pvalue
from fastapi.testclient import TestClient
from model_marks import needs_smollm2, smollm2_path

from realrun.cloud.handlers import Cloud, settle
from realrun.cloud.server import create_app
from realrun.cloud.settings import ServerSettings
from realrun.cloud.synthetic_target import SyntheticTarget
from realrun.cloud.verifier import SparseDist, TopK, softmax
from realrun.edge.topk_verify import decide_topk, rows_of
from realrun.protocol import CONTENT_TYPE, Limits, check_verify_result, encode

PROMPT = [5, 17, 3]
VOCAB = 40
TEMPERATURE = 4.0  # spreads the synthetic target's peak over many tokens
N = 3000


def post(client: TestClient, name: str, body: dict) -> tuple[int, dict]:
    r = client.post(f"/v1/{name}", content=encode(body), headers={"Content-Type": CONTENT_TYPE})
    return r.status_code, msgpack.unpackb(r.content)


@pytest.fixture
def served():
    target = SyntheticTarget(n_vocab=VOCAB, seed=3)
    app = create_app("", target=target, rate_limit_per_s=None)
    with TestClient(app) as client:
        yield target, client


def test_round_trip_outcome_rolls_the_session_back(served):
    target, client = served
    sampling = {"temperature": TEMPERATURE, "seed": 1, "top_k": 5}
    status, body = post(client, "open", {"prompt": PROMPT, "sampling": sampling})
    assert status == 200
    sid = body["session"]
    drafts = [7, 8, 9]
    status, answer = post(client, "verify", {"session": sid, "n": 3, "tokens": drafts})
    assert status == 200, answer
    check_verify_result(answer)
    assert "accepted" not in answer and len(answer["topk"]) == len(drafts) + 1
    rows = rows_of(answer)
    inputs = [PROMPT[-1], *drafts]
    for j, (ids, probs) in enumerate(rows):  # row j: the target's top-5 after input j
        p = softmax(target.row(inputs[j], len(PROMPT) - 1 + j), TEMPERATURE)
        assert list(ids) == list(np.argsort(-p, kind="stable")[:5])
        assert np.allclose(probs, p[ids])
    # an outcome is due: a request without one, or a wrong one, is refused
    status, body = post(client, "verify", {"session": sid, "n": 0})
    assert status == 422 and "outcome" in body["error"]
    outside = next(t for t in range(VOCAB) if t not in rows[1][0])
    for bad in ([4, 0], [1, outside], [1]):
        status, body = post(client, "verify", {"session": sid, "n": 0, "outcome": bad})
        assert status == 422 and "outcome" in body["error"], bad
    # keep one draft, correct the second: the next row is the one after that correction
    token = int(rows[1][0][2])
    status, answer = post(client, "verify", {"session": sid, "n": 0, "outcome": [1, token]})
    assert status == 200, answer
    session = target.sessions[sid]
    assert session.committed[len(PROMPT) - 1 :] == [PROMPT[-1], 7, token]
    assert session.pending == int(answer["topk"][0][0][0])  # placeholder: the bonus argmax
    assert answer["topk"][0][0][0] == target.next_token(token, len(PROMPT) + 1)
    outside = next(t for t in range(VOCAB) if t not in answer["topk"][0][0])
    body = {"session": sid, "tokens": [1], "outcome": [0, outside]}
    assert post(client, "upload", body)[0] == 422
    best = int(answer["topk"][0][0][0])
    status, body = post(client, "upload", {"session": sid, "tokens": [1], "outcome": [0, best]})
    assert status == 200 and body["pending"] == 1
    status, body = post(client, "verify", {"session": sid, "n": 1, "outcome": [0, best]})
    assert status == 422 and "no top-K verify" in body["error"]
    status, body = post(client, "open", {"prompt": PROMPT, "sampling": sampling | {"top_k": -1}})
    assert status == 422 and "top_k" in body["error"]


def test_greedy_and_sampling_sessions_refuse_outcomes(served):
    _, client = served
    sid = post(client, "open", {"prompt": PROMPT})[1]["session"]
    status, answer = post(client, "verify", {"session": sid, "n": 0})
    assert status == 200 and "topk" not in answer and "token" in answer
    status, body = post(client, "verify", {"session": sid, "n": 0, "outcome": [0, 1]})
    assert status == 422 and "no top-K verify" in body["error"]


def _first_tokens(k: int, seed: int, always_accept: bool = False) -> tuple[np.ndarray, ...]:
    """N first generated tokens, each from one fresh TopK session verifying one draft d ~ q
    at the edge; (tokens, target p at the position, q)."""
    target = SyntheticTarget(n_vocab=VOCAB, seed=3)
    p = softmax(target.row(PROMPT[-1], len(PROMPT) - 1), TEMPERATURE)
    rng = np.random.default_rng(seed)
    q_dense = softmax(rng.standard_normal(VOCAB), 1.0)  # a draft unlike the target
    q = SparseDist(np.arange(VOCAB, dtype=np.int64), q_dense)
    out = np.empty(N, dtype=np.int64)
    for i in range(N):
        sid, _ = target.open(PROMPT, TopK(TEMPERATURE, k))
        d = int(rng.choice(VOCAB, p=q_dense))
        target.upload(sid, [d], None)
        target.verify_batch([sid])
        rule = target.sessions[sid].rule
        assert isinstance(rule, TopK)
        accepted, token = decide_topk(rule.rows, [d], [q], rng)
        out[i] = d if always_accept else (d if accepted else token)
        target.drop(sid)
    return out, p, q_dense


def test_full_top_k_reproduces_the_target_distribution():
    tokens, p, _ = _first_tokens(VOCAB, seed=11)
    assert chi2_pvalue(tokens, p) > 1e-3
    wrong, _, _ = _first_tokens(VOCAB, seed=12, always_accept=True)  # output ~ q: caught
    assert chi2_pvalue(wrong, p) < 1e-6


def test_small_top_k_emits_only_the_renormalised_top_k():
    k = 4
    tokens, p, _ = _first_tokens(k, seed=13)
    top = np.argsort(-p, kind="stable")[:k]
    assert set(tokens.tolist()) <= set(top.tolist())
    truncated = np.zeros_like(p)
    truncated[top] = p[top] / p[top].sum()
    assert chi2_pvalue(tokens, truncated) > 1e-3


@needs_smollm2
def test_llama_target_rolls_its_kv_cache_back_to_the_outcome():
    """After an outcome keeping 1 of 3 drafts, the next rows are those of a fresh session
    opened on the kept tokens (the rejected drafts' KV entries are gone)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    from realrun.cloud.llama_target import LlamaTarget  # llama_cpp: optional, skip without it

    target = LlamaTarget(smollm2_path(), threads=1, n_ctx=64, kv_slots=2)
    try:
        prompt = list(target.llama.tokenize(b"The capital of France", add_bos=False))
        sid, _ = target.open(prompt, TopK(0.8, 8))
        target.upload(sid, [11, 12, 13], None)
        target.verify_batch([sid])
        rule = target.sessions[sid].rule
        assert isinstance(rule, TopK) and len(rule.rows) == 4
        token = int(rule.rows[1][0][0])
        cloud = Cloud(target, ServerSettings(), Limits(n_vocab=target.n_vocab))
        cloud.table.add(sid, "edge")
        settle(cloud, sid, target.sessions[sid], (1, token))
        assert target.sessions[sid].committed[len(prompt) - 1 :] == [prompt[-1], 11]
        target.verify_batch([sid])
        fresh, _ = target.open([*prompt, 11, token], TopK(0.8, 8))
        target.verify_batch([fresh])
        rolled, reference = rule.rows[0], target.sessions[fresh].rule.rows[0]
        assert rolled[0].tolist() == reference[0].tolist()
        assert np.allclose(rolled[1], reference[1], atol=1e-3)
    finally:
        target.close()


def _policy(name: str):
    from policies.registry import make_policy, params_model

    params = params_model(name)(**({"autotune": False} if name == "pipesd" else {}))
    return make_policy(name, params, 0)


@needs_smollm2
def test_run_edge_emits_only_the_targets_top_k():
    """run_edge with `downlink_top_k`: the server (synthetic target, SmolLM2's vocabulary)
    sends top-K rows, the edge decides and reports outcomes (a missing or wrong one is a 422,
    which would raise); every output token lies in the synthetic target's top-K there."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    from edge_support import open_draft
    from test_server_limits import served

    from realrun.edge.client import CloudClient
    from realrun.edge.drafts import EdgeSampling
    from realrun.edge.executor import run_edge

    draft = open_draft(smollm2_path())
    k, n_new = 4, 24
    try:
        target = SyntheticTarget(n_vocab=int(draft.n_vocab()), seed=5)
        prompt = list(draft.tokenize(b"Once upon a time", add_bos=False, special=False))
        app = create_app("", target=target, rate_limit_per_s=None)
        with served(app) as url, CloudClient(url) as cloud:
            sampling = EdgeSampling(1.0, 8, seed=9, downlink_top_k=k)
            record, output, _ = run_edge(
                _policy("vanilla"), draft, cloud, prompt, n_new, sampling=sampling
            )
        assert len(output) == n_new and record.local_tokens == 0 and record.navs >= 1
        sequence = [*prompt, *output]
        for i in range(len(prompt), len(sequence)):
            p = softmax(target.row(sequence[i - 1], i - 1), 1.0)
            assert sequence[i] in np.argsort(-p, kind="stable")[:k], i
    finally:
        draft.close()


@needs_smollm2
def test_run_edge_holds_proactive_uploads_for_the_outcome():
    """PipeSD (proactive, conditional uploads) with edge-side verification against SmolLM2
    itself (draft = target: most drafts are accepted): uploads drafted during a NAV wait for
    its outcome and carry it; the run ends with every token verified by the cloud."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    from edge_support import open_draft, thread_server

    from realrun.edge.client import CloudClient
    from realrun.edge.drafts import EdgeSampling
    from realrun.edge.executor import run_edge

    draft = open_draft(smollm2_path())
    try:
        prompt = list(draft.tokenize(b"Once upon a time", add_bos=False, special=False))
        with thread_server(smollm2_path()) as url, CloudClient(url) as cloud:
            sampling = EdgeSampling(0.8, 16, seed=4, downlink_top_k=16)
            record, output, _ = run_edge(
                _policy("pipesd"), draft, cloud, prompt, 32, sampling=sampling
            )
        assert len(output) == 32 and record.local_tokens == 0 and record.accepted > 0
    finally:
        draft.close()
