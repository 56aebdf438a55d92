"""TorchTarget (realrun/cloud/torch_target.py) on a tiny random llama saved as a HF folder.

Reference: the model's own greedy decoding, one token at a time with a DynamicCache (plain
transformers, float32 on the CPU). Each mode runs a speculative loop whose drafts are the
reference continuation with random corruptions and random lengths (0..8, so buckets change and
stale static-cache entries are left behind); the output must equal the reference token for
token, and each verification must accept exactly the drafts' prefix that matches it. The
synthetic and sampling rules on this backend: tests/realrun/test_torch_rules.py.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch (extra 'models') is not installed")
pytest.importorskip("transformers", reason="transformers (extra 'models') is not installed")

from model_marks import needs_smollm2, smollm2_path  # noqa: E402

from realrun.cloud.torch_target import TorchTarget, verify_buckets  # noqa: E402
from simulator.errors import ConfigError  # noqa: E402

VOCAB = 1000
N_NEW = 40
MAX_VERIFY = 8
PROMPTS = ([5, 17, 99, 3, 250, 7], [400, 12, 12, 901])
HAS_CUDA = torch.cuda.is_available()


def save_tiny_llama(path: Path) -> Path:
    """A 2-layer, hidden-64 llama with random weights (seeded), saved with save_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=512,
        initializer_range=0.2,  # peaked logits: a varied greedy output, no near-ties
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    """`n` greedy tokens after `prompt`, one forward per token on a DynamicCache."""
    from transformers.cache_utils import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache()
    out = []
    ids = torch.tensor([prompt], device=device)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits
            out.append(int(logits[0, -1].argmax()))
            ids = torch.tensor([[out[-1]]], device=device)
    return out


@pytest.fixture(scope="module")
def references(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    return [greedy_reference(model, p, N_NEW) for p in PROMPTS]


def speculate(
    target, sid: str, ref: list[int], rng: random.Random, done: list[int], most: int = MAX_VERIFY
) -> tuple:
    """One round: draft the next 0..`most` reference tokens, maybe corrupt one, verify."""
    k = rng.randint(0, most)
    drafts = list(ref[len(done) : len(done) + k])
    if drafts and rng.random() < 0.6:
        j = rng.randrange(len(drafts))
        drafts[j] = (drafts[j] + 1 + rng.randrange(VOCAB - 1)) % VOCAB
    assert target.upload(sid, drafts, None) == len(drafts)
    result = target.verify(sid)
    matching = 0
    while matching < len(drafts) and drafts[matching] == ref[len(done) + matching]:
        matching += 1
    assert result.accepted == matching
    assert result.target_ms > 0
    done.extend([*drafts[: result.accepted], result.token])
    return result.accepted, result.token


def run_loop(
    target, ref: list[int], prompt: list[int], seed: int, most: int = MAX_VERIFY
) -> list[tuple]:
    """The speculative loop until N_NEW tokens; asserts the output is the reference."""
    rng = random.Random(seed)
    sid, prefill_ms = target.open(prompt)
    assert prefill_ms >= 0
    done: list[int] = []
    rounds = []
    while len(done) < N_NEW:
        rounds.append(speculate(target, sid, ref, rng, done, most))
    assert done[:N_NEW] == ref
    target.drop(sid)
    assert sid not in target.sessions
    return rounds


@pytest.mark.parametrize("mode", ["eager", "static"])
def test_lossless_with_corrupted_drafts(tiny_dir, references, mode):
    target = TorchTarget(tiny_dir, mode=mode, n_ctx=256, max_verify=MAX_VERIFY)
    assert target.n_vocab == VOCAB and target.n_ctx == 256 and target.n_batch == MAX_VERIFY + 1
    for seed in (1, 2):
        run_loop(target, references[0], PROMPTS[0], seed)
    target.close()


def test_static_equals_eager(tiny_dir, references):
    rounds = {}
    for mode in ("eager", "static"):
        target = TorchTarget(tiny_dir, mode=mode, n_ctx=128, max_verify=MAX_VERIFY)
        rounds[mode] = run_loop(target, references[1], PROMPTS[1], seed=7)
        target.close()
    assert rounds["static"] == rounds["eager"]
    assert any(accepted > 0 for accepted, _ in rounds["static"])
    assert any(accepted == 0 for accepted, _ in rounds["static"])


@pytest.mark.parametrize("mode", ["eager", "static"])
def test_interleaved_sessions_switch_and_reprefill(tiny_dir, references, mode):
    target = TorchTarget(tiny_dir, mode=mode, n_ctx=128, max_verify=MAX_VERIFY)
    rng = random.Random(3)
    sids = [target.open(p)[0] for p in PROMPTS]
    done: list[list[int]] = [[], []]
    while min(len(d) for d in done) < N_NEW:
        i = rng.randrange(2)
        if len(done[i]) < N_NEW:
            speculate(target, sids[i], references[i], rng, done[i])
    for i in range(2):
        assert done[i][:N_NEW] == references[i]


def test_compiled_static_traces_on_cpu(tiny_dir, references):
    """torch.compile(fullgraph=True) of every bucket's forward, with the 'eager' backend."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    target = TorchTarget(
        tiny_dir,
        mode="static",
        n_ctx=128,
        max_verify=1,
        compile_mode="default",
        compile_backend="eager",
    )
    assert target.buckets == (1, 2)
    assert counters["stats"]["unique_graphs"] - graphs == len(target.buckets)
    rng = random.Random(5)
    sid, _ = target.open(PROMPTS[0])
    done: list[int] = []
    while len(done) < N_NEW:
        k = rng.randint(0, 1)
        drafts = list(references[0][len(done) : len(done) + k])
        if drafts and rng.random() < 0.5:
            drafts[-1] = (drafts[-1] + 1) % VOCAB
        target.upload(sid, drafts, None)
        result = target.verify(sid)
        done.extend([*drafts[: result.accepted], result.token])
    assert done[:N_NEW] == references[0]
    assert counters["stats"]["unique_graphs"] - graphs == len(target.buckets)  # no recompiles


def test_torch_target_is_a_backend_and_verifies_batches_one_by_one(tiny_dir, references):
    from realrun.cloud.backend import TargetBackend

    target = TorchTarget(tiny_dir, mode="eager", n_ctx=128, max_verify=MAX_VERIFY)
    assert isinstance(target, TargetBackend) and target.max_verify_batch == 1
    sids = [target.open(p)[0] for p in PROMPTS]
    results = target.verify_batch(sids)
    assert [r.token for r in results] == [ref[0] for ref in references]
    assert [r.batch_size for r in results] == [1, 1]


def test_buckets():
    assert verify_buckets(1) == (1,)
    assert verify_buckets(9) == (1, 2, 4, 8, 9)
    assert verify_buckets(65) == (1, 2, 4, 8, 16, 32, 64, 65)
    assert verify_buckets(64) == (1, 2, 4, 8, 16, 32, 64)


def test_limits_and_rollback_after_refusal(tiny_dir, references):
    target = TorchTarget(tiny_dir, mode="static", n_ctx=len(PROMPTS[0]) + 3, max_verify=4)
    sid, _ = target.open(PROMPTS[0])
    target.upload(sid, [1] * 5, None)
    with pytest.raises(ValueError, match="at most 4"):
        target.verify(sid)
    target.sessions[sid].uploaded = [references[0][0]] * 4
    with pytest.raises(ValueError, match="n_ctx"):
        target.verify(sid)
    target.sessions[sid].uploaded = references[0][:2]
    step = target._step

    def failing(ids, positions):
        step(ids, positions)  # the cache is written, then the forward "fails"
        raise RuntimeError("device lost")

    target._step = failing
    with pytest.raises(RuntimeError, match="device lost"):
        target.verify(sid)
    target._step = step
    result = target.verify(sid)
    assert (result.accepted, result.token) == (2, references[0][2])
    with pytest.raises(ValueError, match="prompt"):
        target.open([])


def test_named_shape_builds_random_model():
    target = TorchTarget("tiny", mode="static", n_ctx=64, max_verify=4)
    assert target.n_vocab == 512
    sid, _ = target.open([1, 2, 3])
    target.upload(sid, [4, 5], None)
    result = target.verify(sid)
    assert 0 <= result.accepted <= 2 and 0 <= result.token < 512


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"model": "tiny", "mode": "fast"}, "mode"),
        ({"model": "tiny", "dtype": "int8"}, "dtype"),
        ({"model": "tiny", "device": "tpu"}, "device"),
        ({"model": "tiny", "n_ctx": 0}, "n_ctx"),
        ({"model": "tiny", "n_ctx": 10**6}, "n_ctx"),
        ({"model": "tiny", "mode": "eager", "compile_mode": "default"}, "compile_mode"),
    ],
)
def test_bad_arguments_are_one_line_config_errors(kwargs, field):
    with pytest.raises(ConfigError) as info:
        TorchTarget(**kwargs)
    assert info.value.field == field
    assert "\n" not in str(info.value)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.json"):
        TorchTarget(tmp_path)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        TorchTarget("tiny", device="cuda")


def _smollm2():

    return smollm2_path()


@pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is not None, reason="accelerate is installed"
)
@needs_smollm2
def test_gguf_without_accelerate_says_so():
    path = _smollm2()
    with pytest.raises(ConfigError, match="accelerate"):
        TorchTarget(path, mode="eager")


@pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None,
    reason="transformers loads GGUF files only with accelerate, which is not installed",
)
@needs_smollm2
def test_gguf_loads_smollm2():
    target = TorchTarget(_smollm2(), mode="eager", n_ctx=64)
    assert target.n_vocab == 49152
    sid, _ = target.open([1, 2, 3])
    assert 0 <= target.verify(sid).token < 49152


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["inductor", "cudagraphs"])
def test_cuda_graphs_static_equals_eager_and_reference(tiny_dir, backend):
    """float32 on the GPU: CUDA-graph static mode and eager both reproduce greedy decoding."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).to("cuda")
    ref = greedy_reference(model.eval(), PROMPTS[0], N_NEW)
    rounds = {}
    for mode in ("eager", "static"):
        target = TorchTarget(
            tiny_dir,
            device="cuda",
            dtype="float32",
            mode=mode,
            n_ctx=128,
            max_verify=3,
            compile_backend=backend,
        )
        assert target.compile_mode == ("reduce-overhead" if mode == "static" else None)
        rounds[mode] = run_loop(target, ref, PROMPTS[0], seed=11, most=3)
        target.close()
    assert rounds["static"] == rounds["eager"]


def _bench_module():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_target_verify.py"
    spec = importlib.util.spec_from_file_location("bench_target_verify", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_on_a_tiny_shape(capsys, tmp_path):
    bench = _bench_module()
    out = tmp_path / "report.json"
    argv = ["--shape", "tiny", "--device", "cpu", "--tokens", "1,4", "--context", "16"]
    argv += ["--reps", "2", "--warmup", "1", "--bandwidth-gbs", "10", "--json", str(out)]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "weight-read bound" in text and "eager/static" in text
    report = json.loads(out.read_text())
    assert set(report["timings"]) == {"eager", "static"}
    assert set(report["timings"]["static"]) == {"1", "4"}
    assert report["bandwidth_source"] == "given"
    assert report["bound_ms"] == pytest.approx(1e3 * report["read_bytes"] / 10e9)


@pytest.mark.parametrize(
    "argv",
    [["--tokens", "1,x"], ["--tokens", "0,2"], ["--modes", "fast"], ["--shape", "no-such"]],
)
def test_benchmark_bad_input_is_one_line(capsys, argv):
    bench = _bench_module()
    with pytest.raises(SystemExit) as info:
        bench.main(["--device", "cpu", "--shape", "tiny", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error:" in err
