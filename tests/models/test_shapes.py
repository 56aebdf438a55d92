"""models.shapes: the papers' model shapes, their configs and seeded random-weight models."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.shapes import (  # noqa: E402
    SHAPES,
    _available_bytes,
    build_config,
    build_random_model,
    get_shape,
    has_qwen3,
)

PUBLISHED_BILLIONS = {
    "TinyLlama-1.1B": 1.10,
    "DeepSeek-Coder-1.3B": 1.35,
    "DeepSeek-Coder-6.7B": 6.74,
    "Llama-2-7B": 6.74,
    "Qwen3-0.6B": 0.60,
    "Qwen3-1.7B": 1.72,
    "Qwen3-32B": 32.8,
    "Llama-3.1-70B": 70.6,
}
"""Published parameter counts (billions), which the shapes must reproduce to 1%."""


def test_random_model_is_seeded_and_in_eval_mode() -> None:
    a = build_random_model("tiny", torch.float32, "cpu", seed=3)
    b = build_random_model("tiny", torch.float32, "cpu", seed=3)
    c = build_random_model("tiny", torch.float32, "cpu", seed=4)
    pairs_ab = zip(a.parameters(), b.parameters(), strict=True)
    pairs_ac = zip(a.parameters(), c.parameters(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs_ab)
    assert not all(torch.equal(x, y) for x, y in pairs_ac)
    assert not a.training
    assert {p.dtype for p in a.parameters()} == {torch.float32}
    bf16 = build_random_model("tiny", torch.bfloat16, "cpu", seed=3)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}


def test_building_does_not_touch_the_global_random_state() -> None:
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    build_random_model("tiny", torch.float32, "cpu", seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_shape_builds_its_config(name: str) -> None:
    shape = SHAPES[name]
    config = build_config(name)
    assert config.num_hidden_layers == shape.layers
    assert config.hidden_size == shape.hidden
    assert config.intermediate_size == shape.intermediate
    assert config.num_attention_heads == shape.heads
    assert config.num_key_value_heads == shape.kv_heads
    assert config.head_dim == shape.attention_head_dim
    assert config.vocab_size == shape.vocab
    assert config.tie_word_embeddings == shape.tie_word_embeddings
    expected_type = "qwen3" if shape.family == "qwen3" and has_qwen3() else "llama"
    assert config.model_type == expected_type
    if name in PUBLISHED_BILLIONS:
        billions = shape.parameter_count() / 1e9
        assert billions == pytest.approx(PUBLISHED_BILLIONS[name], rel=0.01)


def test_tiny_shape_parameter_count_matches_the_built_model() -> None:
    tiny = build_random_model("tiny", torch.float32, "cpu", seed=0)
    assert sum(p.numel() for p in tiny.parameters()) == get_shape("tiny").parameter_count()


def test_unknown_shape_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known shapes: tiny"):
        get_shape("GPT-5")
    assert get_shape("tinyllama-1.1b") is SHAPES["TinyLlama-1.1B"]


def _cpu_bytes_free() -> int | None:
    return _available_bytes(torch.device("cpu"))


@pytest.mark.skipif(
    (_cpu_bytes_free() or 2**62) > 150 * 2**30,
    reason="this machine could hold Llama-3.1-70B in bf16 (or its memory is unknown)",
)
def test_too_big_a_model_is_refused_before_allocating() -> None:
    with pytest.raises(MemoryError, match=r"Llama-3\.1-70B needs"):
        build_random_model("Llama-3.1-70B", torch.bfloat16, "cpu")
