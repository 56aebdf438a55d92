"""Distillation of a draft for SmolLM2-135M (models.distill*), tiny and on the CPU.

A run on 3 prompts x 8 new tokens, a 2-block student and a few steps: its labels are the
target's greedy tokens, its loss falls, its GGUF loads in llama.cpp with the target's
tokenizer and computes what the torch student computes; the torch llama reproduces the target;
bad arguments stop with one line; the registered draft name says how to build it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.distill_data import stdlib_prompts
from models.prompts import DEFAULT_PROMPTS
from models.registry import DRAFT_FILE, resolve_model
from pipesd.cli import main
from simulator.errors import ConfigError

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
torch = pytest.importorskip("torch", reason="torch is not installed")
pytest.importorskip("gguf", reason="the gguf package is not installed")

from model_marks import needs_smollm2, smollm2_path  # noqa: E402

from models.distill import DistillConfig, distill  # noqa: E402
from models.distill_data import Labels  # noqa: E402
from models.distill_model import Student, export_gguf, read_llama  # noqa: E402

pytestmark = needs_smollm2

TEXT = "The quick brown fox jumps over the lazy dog. Python lets you work quickly"
CONFIG = DistillConfig(
    layers=(0, 29),
    steps=6,
    n_prompts=3,
    max_new_tokens=8,
    top_k=4,
    lr=2e-3,
    batch_tokens=100_000,  # every training sequence in every step: the same batch each time
    negatives=256,
    threads=2,
)


@pytest.fixture(scope="module")
def target() -> Path:
    return smollm2_path()


@pytest.fixture(scope="module")
def run(target: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("distill") / "draft.gguf"
    return out, distill(target, out, CONFIG, "test")


def _llama(path: Path):
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, flash_attn=True,
        verbose=False,
    )  # fmt: skip


def _argmax_rows(path: Path, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    llama = _llama(path)
    try:
        llama.eval(tokens)
        scores = np.array(llama.scores[: len(tokens)])
    finally:
        llama.close()
    return scores.argmax(-1), scores


def test_prompts_are_deterministic_and_exclude_the_evaluation_prompts() -> None:
    first = stdlib_prompts(40, seed=3)
    assert first == stdlib_prompts(40, seed=3) and len(set(first)) == 40
    assert first != stdlib_prompts(40, seed=4)
    assert not set(first) & set(DEFAULT_PROMPTS)


def test_labels_are_the_target_greedy_tokens(run: tuple[Path, dict]) -> None:
    out, _recipe = run
    labels, meta = Labels.load(out.with_suffix(".labels.npz"))
    assert json.loads(meta)["top_k"] == CONFIG.top_k and len(labels.tokens) == CONFIG.n_prompts
    for tokens, n_prompt, ids, logits in zip(
        labels.tokens, labels.n_prompt, labels.topk_ids, labels.topk_logits, strict=True
    ):
        assert ids.shape == (len(tokens) - 1, CONFIG.top_k) == logits.shape
        assert 0 < len(tokens) - n_prompt <= CONFIG.max_new_tokens
        # each generated token is the target's argmax at the position before it
        assert np.array_equal(ids[n_prompt - 1 :, 0], tokens[n_prompt:])
        assert np.all(np.diff(logits, axis=1) <= 0)  # descending


def test_loss_falls_and_recipe_is_written(run: tuple[Path, dict]) -> None:
    out, recipe = run
    written = json.loads(out.with_suffix(".recipe.json").read_text())
    assert written == json.loads(json.dumps(recipe))
    assert written["training"]["steps"] == CONFIG.steps and written["training"]["seed"] == 0
    assert written["student"]["init_from_target_blocks"] == [0, 29]
    curve = written["loss_curve"]
    first, last = curve["first_10pct"], curve["last_10pct"]
    assert last["hard_ce"] + last["soft_ce"] < 0.8 * (first["hard_ce"] + first["soft_ce"])
    held = written["heldout"]
    assert held["after"]["hard_ce"] < held["before"]["hard_ce"]
    assert written["data"]["generated_tokens"] > 0 and written["output"]["bytes"] > 0


def test_gguf_loads_and_shares_the_target_tokenizer(run: tuple[Path, dict], target: Path) -> None:
    out, _recipe = run
    draft, reference = _llama(out), _llama(target)
    try:
        assert draft.metadata["llama.block_count"] == "2"
        assert draft.n_vocab() == reference.n_vocab()
        ids = draft.tokenize(TEXT.encode(), add_bos=True)
        assert ids == reference.tokenize(TEXT.encode(), add_bos=True)
        draft.eval(ids)
        token = int(np.argmax(draft.scores[len(ids) - 1]))
        assert 0 <= token < draft.n_vocab() and draft.detokenize([token])
    finally:
        draft.close()
        reference.close()


def test_torch_llama_reproduces_the_target(target: Path) -> None:
    weights = read_llama(target)
    full = Student.from_target(weights, list(range(weights.hyper.n_layer)))
    tokens = _llama_tokens(target)
    with torch.no_grad():
        ours = full.logits(full.hidden(torch.tensor([tokens])))[0].argmax(-1).numpy()
    theirs, _scores = _argmax_rows(target, tokens)
    assert np.mean(ours == theirs) >= 0.9


def test_exported_gguf_computes_what_the_student_computes(target: Path, tmp_path: Path) -> None:
    student = Student.from_target(read_llama(target, [0, 1, 2, 29]), [0, 1, 2, 29])
    out = export_gguf(student, target, tmp_path / "f32.gguf", quant="f32")
    tokens = _llama_tokens(target)
    with torch.no_grad():
        ours = student.logits(student.hidden(torch.tensor([tokens])))[0].numpy()
    _argmax, theirs = _argmax_rows(out, tokens)
    scale = np.abs(ours).max()
    assert np.abs(ours - theirs).max() < 0.02 * scale


def _llama_tokens(target: Path) -> list[int]:
    llama = llama_cpp.Llama(model_path=str(target), vocab_only=True, verbose=False)
    try:
        return list(llama.tokenize(TEXT.encode(), add_bos=True))
    finally:
        llama.close()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--layers", "0,99"], "layers"),
        (["--steps", "0"], "steps"),
        (["--lr", "2"], "lr"),
        (["--negatives", "-1"], "negatives"),
        (["--target", "no-such-model"], "model"),
        (["--out", "draft.txt"], "--out"),
        (["--layers", "a,b"], "block indices"),
        (["--quant", "q4_9"], "--quant"),
    ],
)
def test_bad_arguments_stop_with_one_line(
    args: list[str], expected: str, tmp_path: Path, capsys
) -> None:
    argv = ["calibrate", "distill", "--out", str(tmp_path / "d.gguf"), *args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


def test_draft_name_says_how_to_build_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PIPESD_MODELS", str(tmp_path))
    with pytest.raises(ConfigError, match="pipesd calibrate distill"):
        resolve_model("smollm2-135m-draft")
    (tmp_path / DRAFT_FILE).write_bytes(b"GGUF")
    assert resolve_model("smollm2-135m-draft") == tmp_path / DRAFT_FILE
