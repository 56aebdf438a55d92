"""Speculative sampling at the edge (realrun/edge/executor.py, "Sampling") on SmolLM2-135M, CPU.

The key test is end to end: N requests of the one-token prompt "I" (as test_sampling.py),
each `run_edge` with its own seed through the real server (uvicorn thread, loopback HTTP),
two new tokens each: the edge draws d ~ q (the draft's top-K at temperature T) and uploads
q, the server accepts or resamples, and the first generated token must follow the target's
own softmax(logits / T), computed by a separate llama_cpp.Llama (chi-square goodness of fit,
rare tokens merged into one bin; fixed seeds, so deterministic). The draft is SmolLM2's first
6 layers: it agrees with the target poorly (acceptance ~0.2), so most first tokens come from
the server's residual resampling and the edge's q matters. With the same N and statistic, an
edge uploading a distribution other than the one its token was drawn from is rejected.

Also: the draft's own draws follow the q it uploads; reproducibility; PipeSD's proactive
(conditional) and token-batch uploads with the server agreeing on every answer; the wire
size bound of top-K distributions; the command-line checks.
"""

from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
pytest.importorskip("httpx", reason="httpx is not installed (extra 'realrun')")
pytest.importorskip("msgpack", reason="msgpack is not installed (extra 'realrun')")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (extra 'realrun')")
llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python (extra 'models') is not installed"
)
stats = pytest.importorskip("scipy.stats", reason="scipy is not installed")

from chi_square import chi2_pvalue  # noqa: E402
from edge_support import THREADS, open_draft, shared_draft, thread_server  # noqa: E402
from model_marks import needs_smollm2, smollm2_path  # noqa: E402

from models.prompts import default_prompts, format_prompt  # noqa: E402
from policies.registry import make_policy, params_model  # noqa: E402
from realrun.cloud.verifier import SparseDist, softmax  # noqa: E402
from realrun.edge.client import CloudClient  # noqa: E402
from realrun.edge.drafts import (  # noqa: E402
    EdgeSampling,
    SamplingDraft,
    max_sampling_top_k,
    top_k_distribution,
)
from realrun.edge.executor import run_edge  # noqa: E402
from realrun.protocol import Limits, encode  # noqa: E402
from realrun.testbed import run_testbed  # noqa: E402
from realrun.testbed_rules import SamplingSpec, acceptance_model, sampling_top_k  # noqa: E402
from simulator.scenario import expand_sweep  # noqa: E402

N = 300
TEMPERATURE = 0.8
TOP_K = 32
FAR_LAYERS = 6
ALPHA = 1e-3
N_NEW = 24


# -- pure pieces (no model) --------------------------------------------------------------------


def test_top_k_distribution_is_the_renormalised_top_k():
    row = np.array([1.0, 3.0, 2.0, 3.0, -1.0, 2.0])
    q = top_k_distribution(row, 0.5, 3)
    assert q.ids.tolist() == [1, 2, 3]  # the tie at 2.0 goes to the lower id
    expected = softmax(row[[1, 2, 3]], 0.5)
    assert np.allclose(q.probs, expected) and math.isclose(q.probs.sum(), 1.0)
    full = top_k_distribution(row, 2.0, 99)
    assert full.ids.tolist() == list(range(6)) and np.allclose(full.probs, softmax(row, 2.0))


def test_edge_sampling_refuses_what_the_server_would():
    for bad in (
        {"temperature": 0.0},
        {"temperature": -1.0},
        {"temperature": 101.0},
        {"temperature": math.nan},
        {"top_k": 0},
        {"seed": -1},
        {"seed": 2**63},
    ):
        with pytest.raises(ValueError, match="EdgeSampling"):
            EdgeSampling(**({"temperature": 1.0, "top_k": 8, "seed": 0} | bad))
    s = EdgeSampling(0.8, 8, 3)
    seeds = {s.server_seed(r) for r in range(50)} | {EdgeSampling(0.8, 8, 4).server_seed(0)}
    assert len(seeds) == 51 and all(0 <= x < 2**63 for x in seeds)
    assert s.rng(1).random() == EdgeSampling(0.5, 2, 3).rng(1).random() != s.rng(2).random()


@pytest.mark.parametrize("tokens", [1, 8, 32, 64])
def test_max_top_k_fits_the_servers_body_limit(tokens):
    """A worst-case body (5-byte ids and seq/at/after, 64-character session) of `tokens`
    drafts with top-`max_sampling_top_k` distributions fits; the bound is not wasteful."""
    k = max_sampling_top_k(tokens)
    limit = Limits(n_vocab=1).max_body_bytes
    big = 2**32 - 1 - 2 * k
    dist = [[big + i for i in range(k)], [1.0 / 3] * k]
    body = {"session": "s" * 64, "n": 64, "tokens": [big] * tokens, "dists": [dist] * tokens,
            "seq": 2**31 - 1, "at": 2**31 - 1, "after": 2**31 - 1}  # fmt: skip
    size = len(encode(body))
    assert size <= limit and size > 0.8 * limit
    assert max_sampling_top_k(64) >= 64  # K = 64 goes through even with 64-token NAVs


def test_top_k_defaults_from_the_scenario(write_scenario):
    def point(**payload):
        return expand_sweep(write_scenario(payload=payload))[0].scenario

    assert sampling_top_k(point(kind="topk", top_k=16), None) == (16, "payload.top_k")
    k, source = sampling_top_k(point(kind="full"), None)
    assert k == max_sampling_top_k(64) and "body limit" in source
    assert sampling_top_k(point(kind="full"), 5) == (5, "--top-k")


# -- the models --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path():
    return smollm2_path()


@pytest.fixture(scope="module")
def url(model_path):
    with thread_server(model_path) as address:
        yield address


@pytest.fixture(scope="module")
def far_draft(model_path, tmp_path_factory):
    llama = open_draft(shared_draft(model_path, tmp_path_factory, FAR_LAYERS))
    yield llama
    llama.close()


@pytest.fixture(scope="module")
def close_draft_path(model_path, tmp_path_factory):
    return shared_draft(model_path, tmp_path_factory)


@pytest.fixture(scope="module")
def close_draft(close_draft_path):
    llama = open_draft(close_draft_path)
    yield llama
    llama.close()


@pytest.fixture(scope="module")
def prompt_i(far_draft):
    return list(far_draft.tokenize(b"I", add_bos=False, special=False))


@pytest.fixture(scope="module")
def target_p(model_path, prompt_i):
    """The target's own softmax(logits / T) after "I" (the plain decode path)."""
    llama = llama_cpp.Llama(
        model_path=str(model_path), n_threads=THREADS, n_ctx=64, flash_attn=True, verbose=False
    )
    try:
        llama.eval(prompt_i)
        row = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(llama.n_vocab(),))
        return softmax(row.copy(), TEMPERATURE)
    finally:
        llama.close()


def _vanilla():
    return make_policy("vanilla", params_model("vanilla")(), 0)


def _first_tokens(url, draft, prompt, seed0: int) -> tuple[np.ndarray, float]:
    """First generated token of N requests (seeds seed0, seed0 + 1, ...), and the fraction of
    first drafts the server accepted."""
    firsts, accepted = [], 0
    with CloudClient(url) as cloud:
        for i in range(N):
            sampling = EdgeSampling(TEMPERATURE, TOP_K, seed0 + i)
            record, output, _ = run_edge(_vanilla(), draft, cloud, prompt, 2, sampling=sampling)
            assert len(output) == 2 and record.local_tokens == 0 and record.navs in (1, 2)
            firsts.append(output[0])
            accepted += record.accepted  # the first draft was kept
    return np.array(firsts), accepted / N


@needs_smollm2
def test_draft_draws_follow_the_distribution_it_uploads(far_draft, prompt_i):
    runner = SamplingDraft(far_draft, EdgeSampling(TEMPERATURE, TOP_K, 7), request=0)
    draws, dists, confidences = [], [], set()
    for _ in range(2000):  # same context: one evaluation, then draws only
        token, confidence, q = runner.next(prompt_i)
        draws.append(token)
        dists.append(q)
        confidences.add(confidence)
    q = dists[0]
    assert q.ids.size == TOP_K and math.isclose(q.probs.sum(), 1.0)
    assert all(np.array_equal(d.ids, q.ids) and np.array_equal(d.probs, q.probs) for d in dists)
    assert confidences == {float(q.probs.max())}  # max q, whatever was drawn
    assert len(set(draws)) > 3 and chi2_pvalue(np.array(draws), q.dense(runner.n_vocab)) > ALPHA
    again = SamplingDraft(far_draft, EdgeSampling(TEMPERATURE, TOP_K, 7), request=0)
    assert [again.next(prompt_i)[0] for _ in range(20)] == draws[:20]


@needs_smollm2
def test_first_token_distribution_is_the_targets(url, far_draft, prompt_i, target_p):
    firsts, accepted = _first_tokens(url, far_draft, prompt_i, seed0=10_000)
    assert 0.05 < accepted < 0.6  # both the acceptance and the residual path are exercised
    pvalue = chi2_pvalue(firsts, target_p)
    print(f"correct edge: chi-square p = {pvalue:.3g}, first drafts accepted {accepted:.2f}")
    assert pvalue > ALPHA


@needs_smollm2
@pytest.mark.parametrize("bug", ["uniform", "greedy"])
def test_an_edge_uploading_another_distribution_is_caught(
    bug, url, far_draft, prompt_i, target_p, monkeypatch
):
    """uniform: draws d ~ q but uploads the uniform distribution over q's ids; greedy: sends
    the draft's argmax with q (a sampler that forgot to sample)."""
    honest = SamplingDraft.next

    def broken(self, context):
        token, confidence, q = honest(self, context)
        if bug == "uniform":
            return token, confidence, SparseDist(q.ids, np.full(q.ids.size, 1.0 / q.ids.size))
        return int(q.ids[np.argmax(q.probs)]), confidence, q

    monkeypatch.setattr(SamplingDraft, "next", broken)
    firsts, _ = _first_tokens(url, far_draft, prompt_i, seed0=10_000)
    pvalue = chi2_pvalue(firsts, target_p)
    print(f"broken edge ({bug}): chi-square p = {pvalue:.3g}")
    assert pvalue < ALPHA


# -- whole requests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt(close_draft):
    return format_prompt(close_draft, default_prompts(1)[0])


def _run(url, draft, prompt, name, seed, request=0, **params):
    policy = make_policy(name, params_model(name)(**params), 0)
    with CloudClient(url) as cloud:
        return run_edge(
            policy,
            draft,
            cloud,
            prompt,
            N_NEW,
            request,
            sampling=EdgeSampling(TEMPERATURE, TOP_K, seed),
        )


@needs_smollm2
@pytest.mark.parametrize("name", ["vanilla", "pmin"])
def test_same_seeds_same_output(name, url, close_draft, prompt):
    first = _run(url, close_draft, prompt, name, seed=5)[1]
    assert len(first) == N_NEW
    assert _run(url, close_draft, prompt, name, seed=5)[1] == first
    assert _run(url, close_draft, prompt, name, seed=6)[1] != first
    assert _run(url, close_draft, prompt, name, seed=5, request=1)[1] != first


def _overlaps(spans: list[dict[str, str]]) -> int:
    """Uploads sent while a NAV of the same request was in flight (proactive uploads)."""
    navs = [s for s in spans if s["lane"] == "cloud" and s["label"] == "NAV"]
    count = 0
    for s in spans:
        if s["lane"] == "uplink":
            start, request = float(s["start_s"]), s["request"]
            count += any(
                n["request"] == request and float(n["start_s"]) < start < float(n["end_s"])
                for n in navs
            )
    return count


@needs_smollm2
def test_proactive_and_batch_uploads_agree_with_the_server(
    url, close_draft_path, tmp_path, write_scenario
):
    """PipeSD drafts while its NAV is pending and uploads conditionally (`at`, `after`), and
    the fixed-batch ablation uploads token batches: every upload and NAV is answered (a 409
    or 422 would raise; so would a NAV whose `n` disagrees with what the server kept of the
    conditional uploads, i.e. the edge's mirror of the server's rule), every request ends
    with its tokens, the manifest says how."""
    scenario = write_scenario(
        policies=[
            {"name": "pipesd", "autotune": False},
            {"name": "pipesd", "label": "pipesd-batch", "autotune": False, "fixed_batch": 2},
        ],
        prompts={"count": 2, "prompt_len": 16, "max_new_tokens": N_NEW},
        payload={"kind": "topk", "top_k": TOP_K},
        seeds=[3],
    )
    point = expand_sweep(scenario)[0]
    out = tmp_path / "sampling"
    start = time.perf_counter()
    run_testbed(scenario, point, url, close_draft_path, THREADS, out, ["test"],
                sampling=SamplingSpec(TEMPERATURE))  # fmt: skip
    print(f"testbed run: {time.perf_counter() - start:.1f} s")
    results = list(csv.DictReader((out / "results.csv").open()))
    assert [r["policy"] for r in results] == ["pipesd"] * 2 + ["pipesd-batch"] * 2
    for row in results:
        assert row["new_tokens"] == str(N_NEW) and row["local_tokens"] == "0"
        drafted = int(row["drafted"])
        assert drafted == int(row["verified"]) + int(row["discarded"]) + int(row["bonus_matches"])
    testbed = json.loads((out / "manifest.json").read_text())["testbed"]
    assert testbed["sampling"]["temperature"] == TEMPERATURE
    assert (testbed["sampling"]["top_k"], testbed["sampling"]["top_k_from"]) == (
        TOP_K,
        "payload.top_k",
    )
    spans = {
        label: list(csv.DictReader((out / "timelines" / name).open()))
        for label, name in (
            ("pipesd", "timeline_p0_0_pipesd_s3.csv"),
            ("pipesd-batch", "timeline_p0_1_pipesd-batch_s3.csv"),
        )
    }
    assert _overlaps(spans["pipesd"]) > 0  # proactive uploads went out during NAVs
    assert sum(s["lane"] == "uplink" for s in spans["pipesd-batch"]) > 0  # token batches


@needs_smollm2
def test_realrun_edge_samples_with_the_flags(url, close_draft_path, tmp_path, write_scenario):
    from pipesd.cli import main

    scenario = write_scenario(prompts={"count": 1, "prompt_len": 16, "max_new_tokens": 8})
    out = tmp_path / "edge"
    argv = ["realrun", "edge", str(scenario), "--server", url, "--draft", str(close_draft_path),
            "--threads", str(THREADS), "--out", str(out), "--temperature", "0.7",
            "--top-k", "16"]  # fmt: skip
    assert main(argv) == 0
    results = list(csv.DictReader((out / "results.csv").open()))
    assert len(results) == 1 and results[0]["new_tokens"] == "8"
    sampling = json.loads((out / "manifest.json").read_text())["testbed"]["sampling"]
    assert (sampling["temperature"], sampling["top_k"], sampling["top_k_from"]) == (
        0.7,
        16,
        "--top-k",
    )


@needs_smollm2
def test_a_lost_cloud_leaves_the_draft_sampling(close_draft, prompt):
    """HTTP 503 from the start: the request is the draft's own sampled continuation, its
    draws the same as a SamplingDraft of the same seed and request drawing alone."""
    import httpx

    body = encode({"error": "test"})
    transport = httpx.MockTransport(lambda request: httpx.Response(503, content=body))
    sampling = EdgeSampling(TEMPERATURE, TOP_K, 11)
    with CloudClient("http://cloud.test", transport=transport) as cloud:
        record, output, _ = run_edge(_vanilla(), close_draft, cloud, prompt, 12, 4,
                                     sampling=sampling)  # fmt: skip
    assert record.local_tokens == 12 and record.navs == 0
    alone, expected = SamplingDraft(close_draft, sampling, 4), []
    for _ in range(12):
        expected.append(alone.next(prompt + expected)[0])
    assert output == expected


@needs_smollm2
def test_sampling_and_synthetic_acceptance_exclude_each_other(close_draft, prompt, write_scenario):
    scenario = expand_sweep(write_scenario())[0].scenario
    stream = acceptance_model(scenario).stream(1, 0, 0, N_NEW)
    with pytest.raises(ValueError, match="cannot be combined"):
        run_edge(_vanilla(), close_draft, None, prompt, N_NEW, acceptance_stream=stream,  # type: ignore[arg-type]
                 sampling=EdgeSampling(1.0, 8, 0))  # fmt: skip
    with pytest.raises(ValueError, match="body limit"):
        run_edge(_vanilla(), close_draft, None, prompt, N_NEW, max_draft_tokens=64,  # type: ignore[arg-type]
                 sampling=EdgeSampling(1.0, 10**6, 0))  # fmt: skip


# -- command line ------------------------------------------------------------------------------


def _one_line_exit_2(argv, capsys, *words):
    from pipesd.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--temperature", "0"], ["--temperature", "(0, 100]"]),
        (["--temperature", "-1"], ["--temperature", "(0, 100]"]),
        (["--temperature", "nan"], ["--temperature", "(0, 100]"]),
        (["--temperature", "hot"], ["--temperature"]),
        (["--top-k", "8"], ["--top-k", "needs --temperature"]),
        (["--temperature", "0.8", "--acceptance", "synthetic"], ["--temperature", "synthetic"]),
    ],
)
def test_bad_sampling_flags_are_one_line_exit_2(extra, words, write_scenario, tmp_path, capsys):
    scenario = write_scenario()
    argv = ["realrun", "local", str(scenario), "--target", "nope", "--draft", "nope",
            "--out", str(tmp_path / "o"), *extra]  # fmt: skip
    _one_line_exit_2(argv, capsys, *words)


@pytest.mark.parametrize("top_k", ["0", "100000", "x"])
def test_bad_top_k_is_one_line_exit_2(top_k, write_scenario, tmp_path, capsys):
    scenario = write_scenario()
    argv = ["realrun", "edge", str(scenario), "--server", "http://127.0.0.1:9", "--draft",
            "nope", "--out", str(tmp_path / "o"), "--temperature", "1",
            "--top-k", top_k]  # fmt: skip
    words = ["--top-k"] if top_k == "x" else ["--top-k", f"[1, {max_sampling_top_k(64)}]"]
    _one_line_exit_2(argv, capsys, *words)


def test_a_scenario_top_k_too_large_is_one_line_exit_2(write_scenario, tmp_path, capsys):
    scenario = write_scenario(payload={"kind": "topk", "top_k": 5000})
    argv = ["realrun", "edge", str(scenario), "--server", "http://127.0.0.1:9", "--draft",
            "nope", "--out", str(tmp_path / "o"), "--temperature", "1"]  # fmt: skip
    _one_line_exit_2(argv, capsys, "payload.top_k = 5000", "--top-k in [1,")
