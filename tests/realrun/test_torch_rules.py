"""Verification rules (realrun.cloud.verifier) on TorchTarget, and `decide`'s precomputed argmax.

- `decide(..., argmax=...)`: the same decisions as reading the rows (hypothesis), without
  reading a row for Greedy and Synthetic.
- Synthetic sessions on the tiny random llama of tests/realrun/test_torch_target.py (eager,
  static, static compiled with the 'eager' backend): each verification accepts exactly the
  leading drafts whose output positions are marked True, and its token is the target's greedy
  token after the kept prefix (reference: a full forward of the model, no cache).
- Sampling sessions: distribution preserving (statistical test). For the one-token prompt
  [5], N fresh sessions each verify one draft d ~ q, q a fixed top-K `SparseDist` unlike the
  target's p = softmax(row / T); the first output token (d if accepted, else the correction)
  must pass a chi-square goodness-of-fit test against p (fixed seeds: deterministic), while the
  same test with the same N rejects always-accept (output ~ q) and resampling from p instead of
  the residual max(0, p - q).
- The fast path: greedy and synthetic verifications copy no logit row to the host; sampling
  ones only the rows `decide` gets to.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from chi_square import chi2_pvalue
from hypothesis import given, settings
from hypothesis import strategies as st

from realrun.cloud.verifier import Greedy, Sampling, SparseDist, Synthetic, decide, softmax

VOCAB = 1000
PROMPT = [5]
"""The sampling test's prompt (its p at TEMPERATURE: ~28 chi-square bins at N samples)."""
N = 800
TEMPERATURE = 0.7
TOP_K = 32


# ---------------------------------------------------------------- decide with an argmax


def _first_max(row: np.ndarray) -> int:
    return int(np.flatnonzero(row == row.max())[0])


@st.composite
def verifications(draw: st.DrawFn) -> tuple:
    """(logit rows with frequent ties, drafts that often match the greedy path, position)."""
    vocab = draw(st.integers(1, 6))
    k = draw(st.integers(0, 5))
    values = st.integers(-2, 2).map(float)
    logits = np.array(
        [[draw(values) for _ in range(vocab)] for _ in range(k + 1)], dtype=np.float32
    )
    drafts = [
        _first_max(logits[j]) if draw(st.booleans()) else draw(st.integers(0, vocab - 1))
        for j in range(k)
    ]
    return logits, drafts, draw(st.integers(0, 4))


@settings(max_examples=300, deadline=None)
@given(verifications(), st.lists(st.booleans(), max_size=10))
def test_supplied_argmax_gives_the_same_decisions(case, verdicts):
    logits, drafts, position = case

    def rows(j: int) -> np.ndarray:
        return logits[j]

    def no_rows(j: int) -> np.ndarray:
        raise AssertionError(f"row {j} read although the argmax was supplied")

    def argmax(j: int) -> int:
        return _first_max(logits[j])

    for rule in (Greedy(), Synthetic(tuple(verdicts))):
        expected = decide(rule, rows, drafts, position)
        assert decide(rule, no_rows, drafts, position, argmax=argmax) == expected
        accepted, token = expected
        assert 0 <= accepted <= len(drafts) and token == argmax(accepted)
    dists = [SparseDist(np.array([d]), np.array([1.0])) for d in drafts]
    plain = decide(Sampling(0.9, 7), rows, drafts, position, dists)
    given_argmax = decide(Sampling(0.9, 7), rows, drafts, position, dists, argmax=argmax)
    assert given_argmax == plain  # sampling reads the rows; the argmax changes nothing


# ---------------------------------------------------------------- TorchTarget

MAX_VERIFY = 4
VARIANTS = {
    "eager": {"mode": "eager"},
    "static": {"mode": "static"},
    "compiled": {"mode": "static", "compile_mode": "default", "compile_backend": "eager"},
    "cuda": {
        "mode": "static",
        "device": "cuda",
        "dtype": "float32",
        "compile_backend": "cudagraphs",
    },
}
"""TorchTarget settings by name; "cuda": CUDA graphs (cudagraph trees), GPU only."""


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


ON_GPU = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU")],
)


@pytest.fixture(scope="module")
def torch_mod():
    return pytest.importorskip("torch", reason="torch (extra 'models') is not installed")


@pytest.fixture(scope="module")
def tiny_dir(torch_mod, tmp_path_factory):
    pytest.importorskip("transformers", reason="transformers (extra 'models') is not installed")
    from test_torch_target import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def tiny_model(torch_mod, tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch_mod.float32).eval()


def last_row(torch_mod, model, tokens: list[int]) -> np.ndarray:
    """The logits after `tokens`: one forward of the whole sequence, no cache."""
    with torch_mod.no_grad():
        return model(input_ids=torch_mod.tensor([tokens])).logits[0, -1].numpy()


def target(tiny_dir, variant: str, max_verify: int = MAX_VERIFY):
    from realrun.cloud.torch_target import TorchTarget

    return TorchTarget(tiny_dir, n_ctx=128, max_verify=max_verify, **VARIANTS[variant])


@pytest.mark.parametrize("variant", ["eager", "static", "compiled"])
def test_synthetic_accepts_by_verdict_with_greedy_tokens(torch_mod, tiny_dir, tiny_model, variant):
    rng = random.Random(4)
    verdicts = (False, *(rng.random() < 0.7 for _ in range(35)))
    most = 2 if variant == "compiled" else MAX_VERIFY  # compiled: 3 buckets, ~1 s each
    tt = target(tiny_dir, variant, max_verify=most)
    assert tt.supports_rules
    seq = [400, 12, 12, 901]
    sid, _ = tt.open(seq, Synthetic(verdicts))
    greedy = _first_max(last_row(torch_mod, tiny_model, seq))
    tt.upload(sid, [greedy], None)  # the target's own choice, but position 0 is rejected
    result = tt.verify(sid)
    assert (result.accepted, result.token) == (0, greedy)
    seq.append(greedy)
    generated, accepted_any = 1, False
    while generated < len(verdicts) + 6:  # past the verdicts' end: rejections
        drafts = [rng.randrange(VOCAB) for _ in range(rng.randint(0, most))]
        assert tt.upload(sid, drafts, None) == len(drafts)
        result = tt.verify(sid)
        expected = 0
        while (
            expected < len(drafts)
            and generated + expected < len(verdicts)
            and verdicts[generated + expected]
        ):
            expected += 1
        assert result.accepted == expected
        accepted_any |= expected > 0
        seq.extend(drafts[:expected])
        assert result.token == _first_max(last_row(torch_mod, tiny_model, seq))
        seq.append(result.token)
        generated += expected + 1
        session = tt.sessions[sid]
        assert session.generated == generated and session.committed == seq[:-1]
        assert (session.uploaded, session.probs, session.dists) == ([], [], [])
    assert accepted_any
    tt.close()


@pytest.fixture(scope="module")
def sampling_setup(torch_mod, tiny_dir, tiny_model):
    """(target, p = softmax(row / TEMPERATURE) at PROMPT, the draft distribution q)."""
    p = softmax(last_row(torch_mod, tiny_model, PROMPT), TEMPERATURE)
    # q: top-K of a mixture of a flatter p and another prompt's distribution (acceptance ~0.5)
    base = 0.5 * softmax(last_row(torch_mod, tiny_model, PROMPT), 1.0)
    base += 0.5 * softmax(last_row(torch_mod, tiny_model, [17]), TEMPERATURE)
    ids = np.argsort(-base, kind="stable")[:TOP_K]
    dist = SparseDist(ids, base[ids] / base[ids].sum())
    tt = target(tiny_dir, "static", max_verify=1)
    yield tt, p, dist
    tt.close()


def test_sampling_is_distribution_preserving(sampling_setup):
    pytest.importorskip("scipy.stats", reason="scipy is not installed")
    tt, p, dist = sampling_setup
    q = dist.dense(VOCAB)
    rng = np.random.default_rng(1)
    proposals = rng.choice(VOCAB, size=N, p=q)
    firsts, accepted = [], 0
    for i, d in enumerate(proposals):
        sid, _ = tt.open(PROMPT, Sampling(TEMPERATURE, 1000 + i))
        tt.upload(sid, [int(d)], None, [dist])
        result = tt.verify(sid)
        assert result.accepted in (0, 1)
        firsts.append(int(d) if result.accepted else result.token)
        accepted += result.accepted
        tt.drop(sid)
    assert 0.3 < accepted / N < 0.7  # both paths exercised
    assert chi2_pvalue(np.array(firsts), p) > 1e-3

    # negative controls, same N and statistic
    assert chi2_pvalue(proposals, p) < 1e-6  # always accept: the output is q
    accept = rng.random(N) * q[proposals] < p[proposals]
    wrong = np.where(accept, proposals, rng.choice(VOCAB, size=N, p=p))  # p, not the residual
    assert chi2_pvalue(wrong, p) < 1e-3


@pytest.mark.parametrize("variant", ["eager", "static", ON_GPU])
def test_only_sampling_reads_rows_and_only_those_it_needs(
    tiny_dir, tiny_model, torch_mod, monkeypatch, variant
):
    """Also: the rows read are the model's own (on CUDA: read from CUDA graph outputs)."""
    import realrun.cloud.torch_target as torch_target

    calls: list[tuple[str, list[int], int, tuple[int, int]]] = []

    def recording(rule, rows, drafts, position, dists, argmax=None):
        read: list[int] = []

        def counted(j: int) -> np.ndarray:
            read.append(j)
            row = rows(j)
            assert row.dtype == np.float32 and row.shape == (VOCAB,)
            session = tt.sessions[tt.resident]
            before = [*session.committed, session.pending, *drafts[:j]]
            np.testing.assert_allclose(row, last_row(torch_mod, tiny_model, before), atol=1e-3)
            return row

        assert argmax is not None
        out = decide(rule, counted, drafts, position, dists, argmax)
        calls.append((type(rule).__name__, read, len(drafts), out))
        return out

    monkeypatch.setattr(torch_target, "decide", recording)
    tt = target(tiny_dir, variant)
    rng = random.Random(9)
    for rule in (Greedy(), Synthetic((True,) * 40), Sampling(1.0, 3)):
        seq = [5, 17, 99]
        sid, _ = tt.open(seq, rule)
        for _ in range(6):
            k = rng.randint(0, MAX_VERIFY)
            drafts = [rng.randrange(VOCAB) for _ in range(k)]
            ids = np.array(sorted(set(drafts) | {0}))
            dist = SparseDist(ids, np.full(ids.size, 1.0 / ids.size))
            tt.upload(sid, drafts, None, [dist] * k if isinstance(rule, Sampling) else None)
            result = tt.verify(sid)
            seq.extend([*drafts[: result.accepted], result.token])
        assert tt.sessions[sid].committed == seq[:-1]
    assert [c[0] for c in calls] == ["Greedy"] * 6 + ["Synthetic"] * 6 + ["Sampling"] * 6
    for name, read, _, (accepted, _) in calls:
        assert read == (list(range(accepted + 1)) if name == "Sampling" else [])
    assert any(k > 0 and accepted < k for name, _, k, (accepted, _) in calls if name == "Sampling")
    tt.close()


@pytest.mark.parametrize("mode", ["eager", "static"])
def test_sampling_without_a_distribution_is_refused_and_rolled_back(tiny_dir, tiny_model, mode):
    tt = target(tiny_dir, mode)
    sid, _ = tt.open([5, 17, 99], Sampling(1.0, 0))
    tt.upload(sid, [3, 4], None)
    with pytest.raises(ValueError, match="distribution"):
        tt.verify(sid)
    assert tt.resident == sid and tt.cache.get_seq_length() == 2
    dist = SparseDist(np.array([3, 4]), np.array([0.5, 0.5]))
    tt.sessions[sid].dists = [dist, dist]
    result = tt.verify(sid)
    assert 0 <= result.accepted <= 2 and tt.cache.get_seq_length() == 3 + result.accepted
    tt.close()


def test_server_serves_synthetic_and_sampling_sessions(tiny_dir, torch_mod, tiny_model):
    """The cloud server opens rule sessions on the torch backend (it checks supports_rules)."""
    pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
    msgpack = pytest.importorskip("msgpack", reason="msgpack is not installed (extra 'realrun')")
    pytest.importorskip("httpx", reason="httpx is not installed (extra 'realrun')")
    from fastapi.testclient import TestClient

    from realrun.cloud.server import create_app
    from realrun.protocol import CONTENT_TYPE, encode

    def call(c, name, obj):
        r = c.post(f"/v1/{name}", content=encode(obj), headers={"Content-Type": CONTENT_TYPE})
        body = msgpack.unpackb(r.content, raw=False)
        assert r.status_code == 200, (name, r.status_code, body)
        return body

    tt = target(tiny_dir, "static")
    app = create_app(tiny_dir, target=tt, max_upload=MAX_VERIFY, rate_limit_per_s=None)
    prompt = [5, 17, 99]
    with TestClient(app, raise_server_exceptions=False) as c:
        opened = {"prompt": prompt, "synthetic": {"accepted": [1, 1, 0]}}
        sid = call(c, "open", opened)["session"]
        r = call(c, "verify", {"session": sid, "n": 3, "tokens": [7, 8, 9]})
        greedy = _first_max(last_row(torch_mod, tiny_model, [*prompt, 7, 8]))
        assert (r["accepted"], r["token"]) == (2, greedy)
        opened = {"prompt": prompt, "sampling": {"temperature": 0.8, "seed": 2}}
        sampled = call(c, "open", opened)["session"]
        dist = [[7, 8], [0.5, 0.5]]
        r = call(c, "verify", {"session": sampled, "n": 1, "tokens": [7], "dists": [dist]})
        assert r["accepted"] in (0, 1) and 0 <= r["token"] < VOCAB
        for s in (sid, sampled):
            call(c, "close", {"session": s})
    tt.close()
