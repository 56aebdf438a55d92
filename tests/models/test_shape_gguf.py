"""Random-weight GGUF shapes (models/shape_gguf.py): llama.cpp loads, tokenizes and runs them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is absent")
pytest.importorskip("gguf", reason="gguf (extra 'models') is not installed")

from models import shape_gguf  # noqa: E402
from models.registry import gguf_file_type  # noqa: E402
from models.shape_gguf import QUANTS, build_shape_gguf, weight_count  # noqa: E402
from models.shapes import SHAPES, ModelShape  # noqa: E402
from pipesd.cli import main  # noqa: E402
from simulator.errors import ConfigError  # noqa: E402

TINY = SHAPES["tiny"]

SMALL = {
    "layers": 2,
    "hidden": 256,
    "intermediate": 512,
    "heads": 4,
    "kv_heads": 2,
    "vocab": 600,
    "max_position_embeddings": 4096,
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-6,
}
LINEAR_ROPE = {"rope_type": "linear", "factor": 4.0}
LLAMA3_ROPE = dict(SHAPES["Llama-3.1-70B"].rope_scaling)
VARIANTS = {
    # Qwen3: per-head q/k norms, head size 128 != hidden / heads, tied embeddings
    "qwen3": ModelShape(family="qwen3", head_dim=128, tie_word_embeddings=True, **SMALL),
    # DeepSeek-Coder's linear RoPE scaling
    "linear": ModelShape(family="llama", rope_scaling=LINEAR_ROPE, **SMALL),
    # Llama 3.1's RoPE scaling (the rope_freqs tensor)
    "llama3": ModelShape(family="llama", rope_scaling=LLAMA3_ROPE, **SMALL),
}


def load(path: Path) -> object:
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False
    )


def finite_logits(model: object, tokens: list[int]) -> np.ndarray:
    model.eval(tokens)
    logits = np.asarray(model.scores[: model.n_tokens])
    assert logits.shape == (len(tokens), model.n_vocab())
    assert np.isfinite(logits).all() and np.abs(logits).max() > 0
    return logits


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny")
    return {q: build_shape_gguf("tiny", folder / f"tiny-{q}.gguf", q, threads=1) for q in QUANTS}


@pytest.mark.parametrize("quant", list(QUANTS))
def test_tiny_shape_loads_tokenizes_and_runs_in_every_quant(
    quant: str, tiny_files: dict[str, Path]
) -> None:
    model = load(tiny_files[quant])
    assert model.n_vocab() == TINY.vocab
    meta = model.metadata
    assert meta["general.architecture"] == "llama"
    assert int(meta["llama.block_count"]) == TINY.layers
    assert int(meta["llama.embedding_length"]) == TINY.hidden
    assert int(meta["llama.feed_forward_length"]) == TINY.intermediate
    assert int(meta["llama.attention.head_count"]) == TINY.heads
    assert int(meta["llama.attention.head_count_kv"]) == TINY.kv_heads
    assert int(meta["llama.context_length"]) == TINY.max_position_embeddings
    assert meta["pipesd.random_weights"] == "true" and "meaningless" in meta["pipesd.note"]
    assert "random" in meta["general.name"] and meta["pipesd.shape"] == "tiny"
    for text in ("hello world", "héllo wörld ✓ 42\n\tdef f(x): return x"):  # byte fallback
        tokens = model.tokenize(text.encode())
        assert tokens[0] == model.token_bos() == 1
        assert model.detokenize(tokens).decode() == text
    finite_logits(model, model.tokenize(b"hello world"))
    assert gguf_file_type(model) == quant.upper()  # what a calibration part records


def test_file_holds_the_shape_s_weights_and_quantisation_shrinks_it(
    tiny_files: dict[str, Path],
) -> None:
    import gguf

    reader = gguf.GGUFReader(tiny_files["F16"])
    assert sum(int(t.n_elements) for t in reader.tensors) == TINY.parameter_count()
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_norm.weight"] == "F32" and kinds["blk.0.attn_q.weight"] == "F16"
    assert kinds["output.weight"] == "F16" and len(kinds) == 2 + 9 * TINY.layers + 1
    sizes = {q: p.stat().st_size for q, p in tiny_files.items()}
    assert sizes["Q4_K_M"] < sizes["Q8_0"] < sizes["F16"]


def test_same_seed_same_bytes_other_seed_other_bytes(
    tmp_path: Path, tiny_files: dict[str, Path]
) -> None:
    again = build_shape_gguf("TINY", tmp_path / "again.gguf", "q4_k_m", seed=0, threads=1)
    other = build_shape_gguf("tiny", tmp_path / "other.gguf", "Q4_K_M", seed=1, threads=1)
    reference = tiny_files["Q4_K_M"].read_bytes()
    assert again.read_bytes() == reference
    assert other.read_bytes() != reference
    assert len(other.read_bytes()) == len(reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.gguf", "other.gguf"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_qwen3_and_rope_scaled_shapes_run_in_llama_cpp(variant: str, tmp_path: Path) -> None:
    shape = VARIANTS[variant]
    path = build_shape_gguf(shape, tmp_path / f"{variant}.gguf", "Q4_K_M", threads=1)
    model = load(path)
    arch = "qwen3" if variant == "qwen3" else "llama"
    meta = model.metadata
    assert meta["general.architecture"] == arch and model.n_vocab() == shape.vocab
    assert int(meta[f"{arch}.rope.dimension_count"]) == shape.attention_head_dim
    if variant == "qwen3":
        assert int(meta["qwen3.attention.key_length"]) == 128
        assert int(meta["qwen3.attention.value_length"]) == 128
    if variant == "linear":
        assert meta["llama.rope.scaling.type"] == "linear"
        assert float(meta["llama.rope.scaling.factor"]) == 4.0
    assert weight_count(shape) == shape.parameter_count()
    finite_logits(model, model.tokenize(b"def add(a, b):"))


def test_llama3_rope_factors_span_one_to_the_factor() -> None:
    factors = shape_gguf.llama3_rope_factors(VARIANTS["llama3"])
    assert factors.shape == (VARIANTS["llama3"].attention_head_dim // 2,)
    assert factors[0] == 1.0 and factors[-1] == 8.0
    assert np.all(np.diff(factors) >= 0)


def test_every_named_shape_has_its_parameter_count() -> None:
    for shape in SHAPES.values():
        assert weight_count(shape) == shape.parameter_count()


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"shape_name": "GPT-5"}, "shape", "TinyLlama-1.1B"),
        ({"quant": "Q3_K_S"}, "quant", "Q4_K_M, Q5_K_M, Q6_K, Q8_0, F16"),
        ({"seed": -1}, "seed", ">= 0"),
        ({"out_path": "model.bin"}, "out", ".gguf"),
        ({"shape_name": ModelShape(**{**SMALL, "vocab": 100}, family="llama")}, "shape", "259"),
        (
            {"shape_name": ModelShape(family="llama", rope_scaling={"rope_type": "yarn"}, **SMALL)},
            "shape",
            "linear, llama3",
        ),
    ],
)
def test_bad_input_is_a_one_line_config_error(
    kwargs: dict, field: str, allowed: str, tmp_path: Path
) -> None:
    arguments = {"shape_name": "tiny", "out_path": tmp_path / "x.gguf", "quant": "Q4_K_M"}
    arguments.update(kwargs)
    if not Path(arguments["out_path"]).is_absolute():
        arguments["out_path"] = tmp_path / arguments["out_path"]
    with pytest.raises(ConfigError) as caught:
        build_shape_gguf(**arguments)
    assert caught.value.field == field and allowed in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot create folder") as caught:
        build_shape_gguf("tiny", blocker / "sub" / "x.gguf")
    assert caught.value.field == "out"
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        build_shape_gguf("tiny", tmp_path / "dir.gguf")


@pytest.mark.parametrize("where", ["writing", "quantising"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_failures_leave_no_file_and_keep_an_older_output(
    where: str, error: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model.gguf"
    out.write_bytes(b"older model")
    calls = []

    def fail(*args: object, **kwargs: object) -> None:
        calls.append(args)
        if where == "writing" and len(calls) < 5:  # part of the F16 file is written
            return real_fill(*args, **kwargs)
        raise error("stop")

    real_fill = shape_gguf._fill
    monkeypatch.setattr(shape_gguf, "_fill" if where == "writing" else "quantize", fail)
    with pytest.raises(error):
        build_shape_gguf("tiny", out, "Q4_K_M", threads=1)
    assert calls and out.read_bytes() == b"older model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_cli_builds_into_the_models_folder_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIPESD_MODELS", str(tmp_path / "models"))
    argv = ["calibrate", "shape-gguf", "--shape", "Tiny", "--quant", "q8_0", "--threads", "1"]
    assert main(argv) == 0
    path = tmp_path / "models" / "tiny-random-q8_0.gguf"
    out = capsys.readouterr().out
    assert str(path) in out and "parameters" in out and "meaningless" in out
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert load(path).n_vocab() == TINY.vocab


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--shape", "nope"], "TinyLlama-1.1B"),
        (["--shape", "tiny", "--quant", "Q2"], "Q4_K_M"),
        (["--shape", "tiny", "--seed", "-3"], "seed"),
        (["--shape", "tiny", "--out", "x.json"], ".gguf"),
        (["--quant", "F16"], "--shape"),  # argparse: required
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(
    argv: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPESD_MODELS", str(tmp_path / "models"))
    try:
        code = main(["calibrate", "shape-gguf", *argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
