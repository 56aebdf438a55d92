"""The cloud verification server on SmolLM2-135M (CPU): lossless greedy verification, fuzz.

Reference for "the target's own greedy output": a separate `llama_cpp.Llama` on the same GGUF
file, driven the way calibrate/draft.py drives a model (prompt `eval`, then one `eval([t])`
per token, argmax of `get_logits_ith(-1)`). The server evaluates [pending, drafts...] in one
batch, so equality also shows llama.cpp's batched rows agree with one-token decoding here.
"""

from __future__ import annotations

import random
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

import httpx  # noqa: E402
import msgpack  # noqa: E402
import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from model_marks import needs_smollm2, smollm2_path  # noqa: E402

from realrun.cloud.llama_target import LlamaTarget  # noqa: E402
from realrun.cloud.server import create_app  # noqa: E402
from realrun.edge.client import CloudClient, CloudError  # noqa: E402
from realrun.protocol import CONTENT_TYPE, TOKEN_HEADER, encode  # noqa: E402

pytestmark = needs_smollm2

THREADS = 1  # one thread: llama.cpp spin-waits badly on a loaded 2-core CI machine
N_NEW = 32
PROMPT_TEXT = b"The three most important ideas in computer science are"
HEADERS = {"Content-Type": CONTENT_TYPE}


@pytest.fixture(scope="module")
def model_path():
    return smollm2_path()


@pytest.fixture(scope="module")
def target(model_path):
    t = LlamaTarget(model_path, threads=THREADS, n_ctx=512)
    yield t
    t.close()


@pytest.fixture(scope="module")
def prompt(target):
    return list(target.llama.tokenize(PROMPT_TEXT, add_bos=False, special=False))


@pytest.fixture(scope="module")
def reference(model_path, prompt):
    """N_NEW + 8 greedy tokens after the prompt, one `eval` per token (calibrate's path)."""
    llama = llama_cpp.Llama(
        model_path=str(model_path),
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_ctx=512,
        logits_all=False,
        flash_attn=True,
        verbose=False,
        seed=0,
    )
    try:
        n_vocab = llama.n_vocab()
        llama.eval(prompt)
        out = []
        for _ in range(N_NEW + 8):
            logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(n_vocab,))
            out.append(int(np.argmax(logits)))
            llama.eval([out[-1]])
        return out
    finally:
        llama.close()


def test_llama_target_is_a_backend(target, model_path):
    from realrun.cloud.backend import TargetBackend

    assert isinstance(target, TargetBackend) and target.model_name == model_path.name


@pytest.fixture(scope="module")
def client(model_path, target):
    app = create_app(model_path, target=target, rate_limit_per_s=None)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def call(c, name, obj, headers=HEADERS):
    r = c.post(f"/v1/{name}", content=encode(obj), headers=headers)
    body = msgpack.unpackb(r.content, raw=False)
    assert r.status_code == 200, (name, r.status_code, body)
    return body


def speculative(api, prompt, n_new, seed, corrupt=0.3, max_k=6, n_vocab=49152):
    """Greedy speculative decoding against `api` (open/upload/verify/close callables).

    Each round the "draft" proposes k (seeded, 0..max_k) tokens: the target's true next tokens
    (`api["oracle"](i)`, the reference), each replaced by a random other token with probability
    `corrupt`. Returns the first n_new generated tokens and the number of rounds.
    """
    rng = random.Random(seed)
    sid = api["open"](prompt)["session"]
    generated: list[int] = []
    rounds = 0
    while len(generated) < n_new:
        k = rng.randint(0, max_k)
        proposal = [api["oracle"](len(generated) + i) for i in range(k)]
        proposal = [
            (t + rng.randint(1, n_vocab - 1)) % n_vocab if rng.random() < corrupt else t
            for t in proposal
        ]
        if k:
            probs = [rng.random() for _ in proposal]
            assert api["upload"](sid, proposal, probs)["pending"] == k
        result = api["verify"](sid, k)
        n = result["accepted"]
        assert 0 <= n <= k
        generated += [*proposal[:n], result["token"]]
        rounds += 1
    api["close"](sid)
    return generated[:n_new], rounds


# --------------------------------------------------------------------------------------------
# Lossless greedy verification
# --------------------------------------------------------------------------------------------


def test_correct_drafts_accepted_and_corruption_corrected(client, prompt, reference):
    sid = call(client, "open", {"prompt": prompt})["session"]
    call(client, "upload", {"session": sid, "tokens": reference[:8]})
    r = call(client, "verify", {"session": sid, "n": 8})
    assert (r["accepted"], r["token"]) == (8, reference[8])
    assert r["target_ms"] > 0 and r["energy_j"] is None

    bad = [reference[9], (reference[10] + 1) % 49152, reference[11], reference[12]]
    call(client, "upload", {"session": sid, "tokens": bad[:2]})
    call(client, "upload", {"session": sid, "tokens": bad[2:], "probs": [0.5, 1.0]})
    r = call(client, "verify", {"session": sid, "n": 4})
    assert (r["accepted"], r["token"]) == (1, reference[10])

    # the rejected tokens' KV entries are gone: the next round continues the reference
    call(client, "upload", {"session": sid, "tokens": reference[11:15]})
    r = call(client, "verify", {"session": sid, "n": 4})
    assert (r["accepted"], r["token"]) == (4, reference[15])
    r = call(client, "verify", {"session": sid, "n": 0})  # no drafts: one target step
    assert (r["accepted"], r["token"]) == (0, reference[16])
    call(client, "close", {"session": sid})


def test_speculative_loop_equals_target_greedy(client, prompt, reference):
    api = {
        "open": lambda p: call(client, "open", {"prompt": p}),
        "upload": lambda s, t, p: call(client, "upload", {"session": s, "tokens": t, "probs": p}),
        "verify": lambda s, n: call(client, "verify", {"session": s, "n": n}),
        "close": lambda s: call(client, "close", {"session": s}),
        "oracle": lambda i: reference[i],
    }
    for seed in range(3):
        generated, rounds = speculative(api, prompt, N_NEW, seed)
        assert generated == reference[:N_NEW], f"seed {seed}"
        assert rounds < N_NEW  # some drafts were accepted


def test_interleaved_sessions_keep_their_own_cache(client, prompt, reference):
    other = list(client.app.state.target.llama.tokenize(b"Once upon a time", add_bos=False))
    a = call(client, "open", {"prompt": prompt})["session"]
    b = call(client, "open", {"prompt": other})["session"]
    b_tokens = []
    for i in range(0, 12, 3):
        call(client, "upload", {"session": a, "tokens": reference[i : i + 2]})
        r = call(client, "verify", {"session": a, "n": 2})
        assert (r["accepted"], r["token"]) == (2, reference[i + 2])
        b_tokens.append(call(client, "verify", {"session": b, "n": 0})["token"])
    c = call(client, "open", {"prompt": other})["session"]
    again = [call(client, "verify", {"session": c, "n": 0})["token"] for _ in b_tokens]
    assert again == b_tokens
    for s in (a, b, c):
        call(client, "close", {"session": s})


# --------------------------------------------------------------------------------------------
# Fuzz: only 4xx, and the server still answers correctly afterwards
# --------------------------------------------------------------------------------------------


def _fuzz_requests(rng, sid, vocab, limit, sampling_sid):
    """(path, body bytes, headers) of requests that must all be refused with a 4xx."""
    valid = {"open": {"prompt": [1, 2, 3]}, "upload": {"session": sid, "tokens": [1]}}
    valid |= {"verify": {"session": sid, "n": 0}, "close": {"session": sid}}
    names = ["open", "upload", "verify", "close"]
    bad_values = [
        None, True, -1, 2**63 - 1, -(2**63), 1.5, float("nan"), "x", b"\x00", [], {}, [[1]],
        ["1"], [1.0], [True], [-1], [vocab], [2**64 - 1], [-(2**63)], {"a": 1},
        list(range(10_000)), "s" * 70, [0] * 65, [float("inf")],
    ]  # fmt: skip
    kinds = [
        "bytes", "truncated", "not_map", "wrong_type", "missing", "unknown_session",
        "oversized", "bad_header", "bad_ctype", "bad_n", "bad_probs", "too_many", "ext",
        "bad_synthetic", "bad_sampling", "verify_tokens", "bad_dists", "sampling_dists",
        "bad_order",
    ]  # fmt: skip
    good = {"Content-Type": CONTENT_TYPE, TOKEN_HEADER: "s3cret"}
    for _ in range(1200):
        kind = rng.choice(kinds)
        name = rng.choice(names)
        body_obj = dict(valid[name])
        headers = dict(good)
        if kind == "bytes":
            body = rng.randbytes(rng.randint(0, 300))
        elif kind == "truncated":
            full = encode(body_obj)
            body = full[: rng.randint(0, len(full) - 1)]
        elif kind == "not_map":
            body = encode(rng.choice([1, "open", [1, 2], None, 2.5, [{"prompt": [1]}]]))
        elif kind == "wrong_type":
            field = rng.choice([*body_obj.keys()])
            value = rng.choice(bad_values)
            if field == "n" and value == 0:
                value = -1
            body_obj[field] = value
            body = encode(body_obj)
        elif kind == "missing":
            body_obj.pop(rng.choice([*body_obj.keys()]))
            body = encode(body_obj)
        elif kind == "unknown_session":
            if name == "open":
                name = "verify"
                body_obj = dict(valid[name])
            body_obj["session"] = rng.randbytes(16).hex()
            body = encode(body_obj)
        elif kind == "oversized":
            body_obj["pad"] = rng.randbytes(limit + rng.randint(1, 5000))
            body = encode(body_obj)
            if rng.random() < 0.3:  # no Content-Length: a chunked body
                chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
                body = iter(chunks)
        elif kind == "bad_header":
            body = encode(body_obj)
            if rng.random() < 0.5:
                headers.pop(TOKEN_HEADER)
            else:
                headers[TOKEN_HEADER] = rng.choice(["", "s3cre", "s3cret ", "S3CRET", "x" * 300])
        elif kind == "bad_ctype":
            body = encode(body_obj)
            headers["Content-Type"] = rng.choice(["application/json", "text/plain", ""])
        elif kind == "bad_n":
            name = "verify"
            body = encode({"session": sid, "n": rng.choice([1, 2, *range(4, 65)])})  # 3 pending
        elif kind == "bad_probs":
            name = "upload"
            probs = rng.choice([[2.0], [-0.1], [float("nan")], ["p"], [0.1, 0.2], 0.5, [None]])
            body = encode({"session": sid, "tokens": [1], "probs": probs})
        elif kind == "too_many":
            if name in ("upload", "open"):
                key = "tokens" if name == "upload" else "prompt"
                body_obj[key] = [1] * (65 if name == "upload" else 600)
            else:
                body_obj = {"session": sid, "n": 65}
                name = "verify"
            body = encode(body_obj)
        elif kind == "bad_synthetic":
            name = "open"
            value = rng.choice([[2], [0.5], ["1"], [None], 1, {"x": [1]}, [1] * 600, [[1]]])
            body_obj = {"prompt": [1, 2], "synthetic": {"accepted": value}}
            if rng.random() < 0.2:
                body_obj = {"prompt": [1], "synthetic": [1], "sampling": None}
            if rng.random() < 0.2:
                body_obj = {"prompt": [1], "synthetic": {"accepted": [1]}, "sampling": {}}
            body = encode(body_obj)
        elif kind == "bad_sampling":
            name = "open"
            sampling = rng.choice([
                {"temperature": 0, "seed": 1}, {"temperature": -1.0, "seed": 1},
                {"temperature": float("nan"), "seed": 1}, {"temperature": 1e9, "seed": 1},
                {"temperature": True, "seed": 1}, {"temperature": 1.0, "seed": -1},
                {"temperature": 1.0, "seed": 2**63}, {"temperature": 1.0, "seed": 1.5},
                {"temperature": 1.0}, {"seed": 1}, [1.0, 1], "greedy",
            ])  # fmt: skip
            body = encode({"prompt": [1, 2], "sampling": sampling})
        elif kind == "verify_tokens":
            name = "verify"
            body_obj = {"session": sid, "n": rng.choice([0, 3, 4, 5]), "tokens": [1, 2]}
            if body_obj["n"] == 5:  # the right count, wrong extras
                body_obj |= rng.choice([{"tokens": [vocab]}, {"probs": [0.5]}, {"dists": []},
                                        {"tokens": [1] * 62}, {"probs": [2.0, 0.1]}])  # fmt: skip
            elif rng.random() < 0.3:
                body_obj = {"session": sid, "n": 3, rng.choice(["probs", "dists"]): []}
            body = encode(body_obj)
        elif kind == "bad_dists":
            name = rng.choice(["upload", "verify"])
            dist = [[1, 2], [0.5, 0.5]]
            body_obj = {"session": sid, "tokens": [1], "dists": [dist], "n": 4}
            if rng.random() < 0.5:  # malformed, on the sampling session
                body_obj["session"] = sampling_sid
                body_obj["n"] = 1
                body_obj["dists"] = rng.choice([
                    [[[1, 1], [0.5, 0.5]]], [[[2, 3], [0.5, 0.5]]], [[[1], [0.0]]],
                    [[[1], [1.5]]], [[[1], [0.5, 0.5]]], [[[vocab], [1.0]]], [[1, 2]],
                    [[[1], [1.0]], [[1], [1.0]]], [[[1.0], [1.0]]], [[[1], ["x"]]], [dist, 3],
                ])  # fmt: skip
            body = encode(body_obj)
        elif kind == "bad_order":  # order numbers and conditions (none waits for a turn)
            name = rng.choice(["upload", "verify", "close"])
            extra = rng.choice([
                {"seq": -1}, {"seq": 2**31}, {"seq": 1.5}, {"seq": "0"}, {"seq": True},
                {"seq": rng.randint(65, 10_000)}, {"at": 0}, {"after": 1}, {"at": -1, "after": 1},
                {"at": 0, "after": 0}, {"at": 4096, "after": 1}, {"at": 0, "after": 1},
                {"at": 3, "after": 1, "seq": 2**40},
            ])  # fmt: skip
            if name != "upload":
                extra = {"seq": extra.get("seq", -1)}
            body = encode(body_obj | extra)
        elif kind == "sampling_dists":  # a sampling session needs dists
            name = rng.choice(["upload", "verify"])
            body = encode({"session": sampling_sid, "tokens": [1, 2], "n": 2})
        else:  # ext types and raw bin instead of lists
            body = msgpack.packb(
                {"prompt": msgpack.ExtType(5, b"abc"), "session": b"\x01\x02", "n": b"1"}
            )
        yield f"/v1/{name}", body, headers


def test_fuzz_only_4xx_and_server_keeps_serving(model_path, target, prompt, reference):
    app = create_app(
        model_path, target=target, token="s3cret", max_body_bytes=4096, max_sessions=6,
        rate_limit_per_s=None,
    )  # fmt: skip
    good = {"Content-Type": CONTENT_TYPE, TOKEN_HEADER: "s3cret"}
    rng = random.Random(1234)
    statuses: dict[int, int] = {}
    with TestClient(app, raise_server_exceptions=False) as c:
        sid = call(c, "open", {"prompt": prompt}, good)["session"]
        # a pending upload that the fuzz must not disturb
        call(c, "upload", {"session": sid, "tokens": reference[:3]}, good)
        sampling = {"temperature": 0.7, "seed": 5}
        sampled = call(c, "open", {"prompt": prompt, "sampling": sampling}, good)["session"]
        extra = [call(c, "open", {"prompt": [1, 2]}, good)["session"] for _ in range(4)]
        n = 0
        for path, body, headers in _fuzz_requests(rng, sid, 49152, 4096, sampled):
            r = c.post(path, content=body, headers=headers)
            assert 400 <= r.status_code < 500, (path, r.status_code, r.content[:200])
            assert "error" in msgpack.unpackb(r.content, raw=False)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            n += 1
        for path in ["/v1/nothing", "/v1/open?x=1"]:
            assert 400 <= c.get(path).status_code < 500
            n += 1
        r = c.post("/v1/open", content=encode({"prompt": [1]}), headers=good)
        assert r.status_code == 429  # the session limit
        n += 1
        assert n >= 1000
        assert {400, 401, 404, 409, 413, 415, 422} <= set(statuses)

        # the pending upload survived; the session continues the reference exactly
        r = call(c, "verify", {"session": sid, "n": 3}, good)
        assert (r["accepted"], r["token"]) == (3, reference[3])
        call(c, "upload", {"session": sid, "tokens": reference[4:10]}, good)
        r = call(c, "verify", {"session": sid, "n": 6}, good)
        assert (r["accepted"], r["token"]) == (6, reference[10])
        dist = [[reference[0], 7], [0.75, 0.25]]
        r = call(c, "verify", {"session": sampled, "n": 1, "tokens": [reference[0]],
                               "dists": [dist]}, good)  # fmt: skip
        assert r["accepted"] in (0, 1) and 0 <= r["token"] < 49152
        for s in [sid, sampled, *extra]:
            call(c, "close", {"session": s}, good)
        assert msgpack.unpackb(c.get("/v1/health").content)["sessions"] == 0


def test_rate_limit(model_path, target):
    app = create_app(model_path, target=target, rate_limit_per_s=5.0)
    with TestClient(app, raise_server_exceptions=False) as c:
        codes = [
            c.post("/v1/close", content=encode({"session": "x"}), headers=HEADERS).status_code
            for _ in range(20)
        ]
        assert codes.count(429) >= 10 and set(codes) <= {404, 429}
        time.sleep(0.5)
        r = c.post("/v1/close", content=encode({"session": "x"}), headers=HEADERS)
        assert r.status_code == 404


# --------------------------------------------------------------------------------------------
# The real HTTP path: uvicorn on loopback, CloudClient
# --------------------------------------------------------------------------------------------


def test_uvicorn_and_cloud_client(model_path, target, prompt, reference):
    import uvicorn

    app = create_app(model_path, target=target, token="tok", rate_limit_per_s=None)
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
        url = f"http://127.0.0.1:{port}"
        with CloudClient(url, "tok") as cloud:
            assert cloud.health()["n_vocab"] == 49152
            api = {
                "open": cloud.open,
                "upload": cloud.upload,
                "verify": cloud.verify,
                "close": cloud.close,
                "oracle": lambda i: reference[i],
            }
            generated, _ = speculative(api, prompt, 16, seed=7)
            assert generated == reference[:16]
            with pytest.raises(CloudError) as err:
                cloud.verify("nope", 0)
            assert err.value.status == 404
        with CloudClient(url, "wrong") as cloud, pytest.raises(CloudError) as err:
            cloud.open(prompt)
        assert err.value.status == 401
        r = httpx.post(
            f"{url}/v1/open",
            content=b"\x00" * 100_000,
            headers={**HEADERS, TOKEN_HEADER: "tok"},
        )
        assert r.status_code == 413
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive()


# --------------------------------------------------------------------------------------------
# One request per NAV, synthetic acceptance, batching, energy, command line
# --------------------------------------------------------------------------------------------


def test_verify_carries_the_drafts(client, prompt, reference):
    sid = call(client, "open", {"prompt": prompt})["session"]
    r = call(client, "verify", {"session": sid, "n": 5, "tokens": reference[:5]})
    assert (r["accepted"], r["token"], r["batch_size"]) == (5, reference[5], 1)
    call(client, "upload", {"session": sid, "tokens": reference[6:8]})  # plus 2 carried: n=4
    bad = {"session": sid, "n": 3, "tokens": reference[8:10], "probs": [0.5, 0.5]}
    assert client.post("/v1/verify", content=encode(bad), headers=HEADERS).status_code == 422
    r = call(client, "verify", {**bad, "n": 4})  # the refused request stored nothing
    assert (r["accepted"], r["token"]) == (4, reference[10])
    call(client, "close", {"session": sid})


def test_synthetic_verdicts_decide_acceptance(client, prompt, target):
    verdicts = [1, 1, 0, 1, 1, 1, 1, 0]
    sid = call(client, "open", {"prompt": prompt, "synthetic": {"accepted": verdicts}})["session"]
    generated: list[int] = []

    def greedy_next() -> int:
        """The target's argmax after prompt + generated (a separate greedy session)."""
        other, _ = target.open(prompt + generated)
        token = target.verify(other).token
        target.drop(other)
        return token

    # (draft count, expected accepted): d1 of round 1 is output position 0, and so on
    for k, expected in [(4, 2), (3, 3), (2, 0), (2, 0)]:
        drafts = [(100 + 7 * len(generated) + j) % 49152 for j in range(k)]
        r = call(client, "verify", {"session": sid, "n": k, "tokens": drafts})
        assert r["accepted"] == expected, (len(generated), k)
        generated += drafts[: r["accepted"]]
        assert r["token"] == greedy_next()  # target argmax at row `accepted`
        generated.append(r["token"])
        assert r["target_ms"] > 0
    assert len(generated) == 3 + 4 + 1 + 1  # positions 8+ are past the list: rejected
    call(client, "close", {"session": sid})
    refused = {"prompt": prompt, "synthetic": {"accepted": [1]}, "sampling": {}}
    assert client.post("/v1/open", content=encode(refused), headers=HEADERS).status_code == 422


@pytest.fixture(scope="module")
def prompts(target, prompt):
    texts = [b"Once upon a time", b"def fibonacci(n):"]
    return [prompt] + [list(target.llama.tokenize(t, add_bos=False)) for t in texts]


def test_verify_batch_equals_sequential_with_eviction(model_path, prompts):
    """Three sessions, two KV slots: batched rounds equal one-session-at-a-time rounds."""
    multi = LlamaTarget(model_path, threads=THREADS, n_ctx=256, kv_slots=2)
    try:
        rounds = [[3, 0, 5], [1, 4, 0], [2, 2, 2]]
        outcomes = {}
        for batched in (False, True):
            sids = [multi.open(p)[0] for p in prompts]
            got = []
            for counts in rounds:
                for sid, k in zip(sids, counts, strict=True):
                    multi.upload(sid, [(13 * i + k) % 49152 for i in range(k)], None)
                if batched:
                    results = multi.verify_batch(sids)
                    assert {r.batch_size for r in results} == {2, 1}  # slots bound a batch
                else:
                    results = [multi.verify(sid) for sid in sids]
                got.append([(r.accepted, r.token) for r in results])
            outcomes[batched] = got + [multi.sessions[s].committed for s in sids]
            for sid in sids:
                multi.drop(sid)
        assert outcomes[True] == outcomes[False]
    finally:
        multi.close()


def _serve(app):
    """Run `app` under uvicorn on a free loopback port; returns (url, stop)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)

    def stop():
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def test_concurrent_clients_are_batched_and_lossless(model_path, prompts):
    multi = LlamaTarget(model_path, threads=THREADS, n_ctx=256, kv_slots=3)
    app = create_app(
        model_path, target=multi, rate_limit_per_s=None, batch_window_ms=60, max_batch=3
    )
    url, stop = _serve(app)
    try:
        with CloudClient(url) as cloud:  # the sequential greedy reference, one token a round
            refs = []
            for p in prompts:
                sid = cloud.open(p)["session"]
                refs.append([cloud.verify(sid, 0)["token"] for _ in range(16)])
                cloud.close(sid)
        sizes: list[int] = []
        outputs: list[list[int] | None] = [None] * len(prompts)

        def edge(i: int) -> None:
            with CloudClient(url) as cloud:

                def verify(s, n):
                    answer = cloud.verify(s, n)
                    sizes.append(answer["batch_size"])
                    return answer

                api = {"open": cloud.open, "upload": cloud.upload, "verify": verify,
                       "close": cloud.close, "oracle": lambda j: refs[i][j]}  # fmt: skip
                outputs[i] = speculative(api, prompts[i], 12, seed=i, max_k=3)[0]

        threads = [threading.Thread(target=edge, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert outputs == [r[:12] for r in refs]
        assert max(sizes) > 1 and set(sizes) <= {1, 2, 3}
    finally:
        stop()
        multi.close()


class CountingMeter:
    """An energy counter that advances 0.6 J per reading (stands in for NVML's)."""

    def __init__(self) -> None:
        self.j = 0.0

    def read_j(self) -> float:
        self.j += 0.6
        return self.j


def test_energy_is_the_meter_delta_over_the_batch(model_path, target, prompt):
    app = create_app(model_path, target=target, rate_limit_per_s=None, energy_meter=CountingMeter())
    with TestClient(app, raise_server_exceptions=False) as c:
        sid = call(c, "open", {"prompt": prompt})["session"]
        r = call(c, "verify", {"session": sid, "n": 0})
        assert r["energy_j"] == pytest.approx(0.6)
        call(c, "close", {"session": sid})


def _nvml_available() -> bool:
    try:
        from realrun.cloud.energy import NvmlEnergyMeter, PowerUnavailable

        NvmlEnergyMeter(0).close()
        return True
    except (ImportError, PowerUnavailable):
        return False


@pytest.mark.skipif(not _nvml_available(), reason="no NVIDIA GPU / NVML energy counter here")
def test_nvml_energy_reaches_the_answer(model_path, target, prompt):
    from realrun.cloud.server import gpu_meter

    meter = gpu_meter("cuda:0")
    app = create_app(model_path, target=target, rate_limit_per_s=None, energy_meter=meter)
    with TestClient(app, raise_server_exceptions=False) as c:
        sid = call(c, "open", {"prompt": prompt})["session"]
        energies = [call(c, "verify", {"session": sid, "n": 0})["energy_j"] for _ in range(20)]
        assert all(isinstance(e, float) and e >= 0 for e in energies)
    meter.close()


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--device", "tpu"], "--device"),
        (["--kv-slots", "0"], "--kv-slots"),
        (["--max-batch", "0"], "--max-batch"),
        (["--batch-window-ms", "-1"], "--batch-window-ms"),
        (["--model", "/nonexistent.gguf"], "/nonexistent.gguf"),
    ],
)
def test_bad_server_options_are_one_line(argv, field, capsys):
    from realrun.cloud.server import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert field in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------------------------
# Ordered requests and conditional (proactive) uploads
# --------------------------------------------------------------------------------------------


def test_conditional_uploads_follow_their_verify(client, prompt, reference):
    """Kept after a wholly accepted verify with the right guess (the guess skipped), stale
    otherwise and behind a stale one; the session stays the target's greedy output."""
    ref = reference
    sid = call(client, "open", {"prompt": prompt})["session"]

    def upload(at, tokens, after):
        return call(client, "upload", {"session": sid, "tokens": tokens, "at": at, "after": after})

    def refused(body):
        r = client.post("/v1/upload", content=encode({"session": sid, **body}), headers=HEADERS)
        return r.status_code

    r = call(client, "verify", {"session": sid, "n": 3, "tokens": ref[:3]})  # verify 1
    assert (r["accepted"], r["token"]) == (3, ref[3])
    assert refused({"tokens": ref[3:5], "at": 3, "after": 2}) == 422  # not the latest verify
    assert refused({"tokens": ref[4:5], "at": 5, "after": 1}) == 422  # a gap
    r = upload(3, ref[3:6], 1)  # the guess of position 3 is right: skipped, 2 kept
    assert (r["kept"], r["stale"], r["pending"]) == (2, False, 2)
    r = upload(6, ref[6:7], 1)  # continues the kept ones
    assert (r["kept"], r["stale"], r["pending"]) == (1, False, 3)
    r = call(client, "verify", {"session": sid, "n": 3})  # verify 2: positions 4..6
    assert (r["accepted"], r["token"]) == (3, ref[7])
    wrong = (ref[7] + 1) % 49152
    r = upload(7, [wrong, ref[8]], 2)  # a wrong guess: stale
    assert (r["kept"], r["stale"], r["pending"]) == (0, True, 0)
    r = upload(9, ref[9:10], 2)  # behind a stale upload: stale as well
    assert (r["kept"], r["stale"]) == (0, True)
    r = call(client, "verify", {"session": sid, "n": 2, "tokens": [ref[8], wrong]})  # verify 3
    assert (r["accepted"], r["token"]) == (1, ref[9])
    r = upload(10, ref[10:12], 3)  # verify 3 was not wholly accepted: stale
    assert (r["kept"], r["stale"]) == (0, True)
    r = call(client, "verify", {"session": sid, "n": 2, "tokens": ref[10:12]})
    assert (r["accepted"], r["token"]) == (2, ref[12])
    call(client, "close", {"session": sid})


def test_numbered_requests_apply_in_order_across_connections(client, prompt, reference):
    """An upload numbered after a verify but sent before it waits for it (as the edge's
    proactive uploads do when they overtake their NAV), then applies."""
    ref = reference
    sid = call(client, "open", {"prompt": prompt})["session"]
    early: dict[str, object] = {}

    def send_early() -> None:
        body = {"session": sid, "tokens": ref[3:6], "at": 3, "after": 1, "seq": 1}
        early["answer"] = call(client, "upload", body)

    thread = threading.Thread(target=send_early)
    thread.start()
    time.sleep(0.3)  # the upload is in and waiting for seq 0
    assert thread.is_alive()
    r = call(client, "verify", {"session": sid, "n": 3, "tokens": ref[:3], "seq": 0})
    assert (r["accepted"], r["token"]) == (3, ref[3]) and r["queued_ms"] >= 0
    thread.join(timeout=30)
    answer = early["answer"]
    assert isinstance(answer, dict)
    assert (answer["kept"], answer["stale"]) == (2, False) and answer["queued_ms"] >= 300
    r = call(client, "verify", {"session": sid, "n": 2, "seq": 2})
    assert (r["accepted"], r["token"]) == (2, ref[6])
    for seq, status in [(2, 409), (100, 409)]:  # used, or too far ahead
        body = encode({"session": sid, "n": 0, "seq": seq})
        assert client.post("/v1/verify", content=body, headers=HEADERS).status_code == status
    unknown = encode({"session": "0" * 32, "n": 0, "seq": 1})  # no wait for a lost session
    assert client.post("/v1/verify", content=unknown, headers=HEADERS).status_code == 404
    call(client, "close", {"session": sid, "seq": 3})
