"""Speculative sampling through LlamaTarget is distribution-preserving (statistical test).

Target: SmolLM2-135M; draft: its first 6 layers (models.truncate), which agree with it
poorly (acceptance ~0.24 at the one-token prompt "I"), so the residual resampling path is
exercised on most samples. Reference: the target's own softmax at temperature T, computed from
a separate `llama_cpp.Llama` evaluating the prompt (the plain decode path). Each sample is a
fresh sampling session (its own seed) whose one draft token d ~ q is verified through
`LlamaTarget.verify_batch` (32 sessions per batch); the first generated token is d when
accepted, else the server's resampled correction. A chi-square goodness-of-fit test against
the reference must not reject (fixed seeds: deterministic), while the same test with the same
number of samples rejects two wrong verifiers: always-accept (output ~ q) and resampling from
p instead of the residual max(0, p - q).
"""

from __future__ import annotations

import numpy as np
import pytest

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python (extra 'models') is not installed"
)
stats = pytest.importorskip("scipy.stats", reason="scipy is not installed")

from chi_square import chi2_pvalue  # noqa: E402
from model_marks import needs_smollm2, smollm2_path  # noqa: E402

from models.truncate import truncate_gguf  # noqa: E402
from realrun.cloud.llama_target import LlamaTarget  # noqa: E402
from realrun.cloud.verifier import Sampling, SparseDist, softmax  # noqa: E402

pytestmark = needs_smollm2

N = 640
BATCH = 32
TEMPERATURE = 0.8
KEEP_LAYERS = 6
TOP_K = 64


@pytest.fixture(scope="module")
def model_path():
    return smollm2_path()


def _logits(path, tokens: list[int]) -> np.ndarray:
    llama = llama_cpp.Llama(
        model_path=str(path), n_threads=1, n_ctx=64, flash_attn=True, verbose=False
    )
    try:
        llama.eval(tokens)
        return np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(llama.n_vocab(),)).copy()
    finally:
        llama.close()


@pytest.fixture(scope="module")
def setup(model_path, tmp_path_factory):
    """(target, prompt, reference p at TEMPERATURE, draft q at temperature 1)."""
    draft = truncate_gguf(model_path, tmp_path_factory.mktemp("d") / "d.gguf", KEEP_LAYERS)
    target = LlamaTarget(model_path, threads=1, n_ctx=8, kv_slots=BATCH)
    prompt = list(target.llama.tokenize(b"I", add_bos=False, special=False))
    p = softmax(_logits(model_path, prompt), TEMPERATURE)
    q = softmax(_logits(draft, prompt), 1.0)
    yield target, prompt, p, q
    target.close()


def _speculative(setup, dist: SparseDist, seed: int) -> np.ndarray:
    """N first generated tokens through the target API, each draft d ~ dist."""
    target, prompt, _, q = setup
    rng = np.random.default_rng(seed)
    q_dense = dist.dense(q.size)
    firsts, accepted = [], 0
    for b in range(N // BATCH):
        sids = [target.open(prompt, Sampling(TEMPERATURE, seed * 10**6 + b * BATCH + i))[0]
                for i in range(BATCH)]  # fmt: skip
        proposals = rng.choice(q.size, size=BATCH, p=q_dense)
        for sid, d in zip(sids, proposals, strict=True):
            target.upload(sid, [int(d)], None, [dist])
        results = target.verify_batch(sids)
        for d, r in zip(proposals, results, strict=True):
            assert r.accepted in (0, 1) and r.batch_size == BATCH
            firsts.append(int(d) if r.accepted else r.token)
            accepted += r.accepted
        for sid in sids:
            target.drop(sid)
    assert 0.05 < accepted / N < 0.6  # both paths exercised
    return np.array(firsts)


def test_full_draft_distribution_is_lossless_and_wrong_verifiers_are_caught(setup):
    _, _, p, q = setup
    firsts = _speculative(setup, SparseDist(np.arange(q.size), q), seed=1)
    assert chi2_pvalue(firsts, p) > 1e-3

    rng = np.random.default_rng(2)  # negative controls, same N and statistic
    proposals = rng.choice(q.size, size=N, p=q)
    assert chi2_pvalue(proposals, p) < 1e-6  # always accept: the output is q
    accept = rng.random(N) * q[proposals] < p[proposals]
    from_p = rng.choice(q.size, size=N, p=p)
    wrong = np.where(accept, proposals, from_p)  # rejected: resample p, not the residual
    assert chi2_pvalue(wrong, p) < 1e-3


def test_topk_draft_distribution_sampled_from_is_lossless(setup):
    """The edge samples from its top-K renormalised q and uploads that: still exact."""
    _, _, p, q = setup
    ids = np.argsort(-q, kind="stable")[:TOP_K]
    dist = SparseDist(ids, q[ids] / q[ids].sum())
    firsts = _speculative(setup, dist, seed=3)
    assert chi2_pvalue(firsts, p) > 1e-3
