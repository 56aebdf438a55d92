"""Same-tokenizer pairs by recipe: parsing, layer-skipped and quantised drafts of SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from model_marks import needs_smollm2, smollm2_path

from models.pairs import build_pair, parse_recipe, recipe_text


def test_recipes_parse_to_a_canonical_form() -> None:
    steps = parse_recipe(" skip:16,14-15 + quant:Q4_0 ")
    assert recipe_text(steps) == "skip:14-16+quant:Q4_0"
    assert [s.slug() for s in steps] == ["skip14-16", "q4_0"]
    assert recipe_text(parse_recipe("keep:0-3,20,21-29")) == "keep:0-3,20-29"


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("", "empty recipe"),
        ("drop:3", "kind one of skip, keep, quant"),
        ("quant:Q9", "unknown file type 'Q9'"),
        ("skip:9-3", "runs backwards"),
        ("skip:a-b", "must look like"),
        ("skip", "<kind>:<argument>"),
    ],
)
def test_bad_recipes(recipe: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_recipe(recipe)


@needs_smollm2
def test_layer_skipped_draft_shares_head_and_renumbers_blocks(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")
    target = smollm2_path()
    built = build_pair(target, "skip:14-16", tmp_path, "pytest")
    assert not built.reused and built.draft.name.endswith(".skip14-16.gguf")
    source, copy = gguf.GGUFReader(target), gguf.GGUFReader(built.draft)
    assert copy.fields["llama.block_count"].contents() == 27
    assert copy.fields["pipesd.recipe"].contents() == "skip:14-16"
    originals = {t.name: t for t in source.tensors}
    for t in copy.tensors:
        name = t.name
        if name.startswith("blk."):
            new = int(name.split(".")[1])
            old = new if new < 14 else new + 3
            name = f"blk.{old}." + name.split(".", 2)[2]
        assert np.array_equal(np.asarray(t.data), np.asarray(originals[name].data)), t.name
    record = json.loads(built.info.read_text())
    assert record["steps"][0]["kept_blocks"] == [*range(14), *range(17, 30)]
    assert record["source_sha256"] == built.record["source_sha256"]
    again = build_pair(target, "skip:14-16", tmp_path, "pytest")
    assert again.reused and again.draft == built.draft
    built.info.write_text(json.dumps({**record, "recipe": "other"}))
    with pytest.raises(ValueError, match="never overwritten"):
        build_pair(target, "skip:14-16", tmp_path, "pytest")


@needs_smollm2
def test_quantised_draft_loads_with_the_same_tokenizer(tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    pytest.importorskip("gguf", reason="the gguf package is not installed")
    target = smollm2_path()
    built = build_pair(target, "quant:Q4_0", tmp_path, "pytest")
    assert built.record["bytes"] < target.stat().st_size
    text = b"def add(a, b):\n    return a + b"
    loaded = [
        llama_cpp.Llama(model_path=str(p), n_ctx=64, verbose=False, n_threads=1)
        for p in (built.draft, target)
    ]
    try:
        assert loaded[0].tokenize(text) == loaded[1].tokenize(text)
        assert loaded[0].metadata["pipesd.recipe"] == "quant:Q4_0"
    finally:
        for llama in loaded:
            llama.close()
