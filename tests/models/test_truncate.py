"""models.truncate: a layer-truncated copy of SmolLM2-135M keeps its tokenizer and first blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_marks import needs_smollm2, smollm2_path

from models.truncate import truncate_gguf

pytestmark = needs_smollm2

KEEP = 15


@pytest.fixture(scope="module")
def target() -> Path:
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")
    return smollm2_path()


@pytest.fixture(scope="module")
def draft(target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return truncate_gguf(target, tmp_path_factory.mktemp("draft") / "draft.gguf", KEEP)


def test_truncated_copy_keeps_tokenizer_and_drops_blocks(target: Path, draft: Path) -> None:
    gguf = pytest.importorskip("gguf")
    llama_cpp = pytest.importorskip("llama_cpp")

    source, copy = gguf.GGUFReader(target), gguf.GGUFReader(draft)
    assert copy.fields["llama.block_count"].contents() == KEEP
    for name, field in source.fields.items():
        if name.startswith("GGUF.") or name == "llama.block_count":
            continue
        assert copy.fields[name].contents() == field.contents(), name
    blocks = {int(t.name.split(".")[1]) for t in copy.tensors if t.name.startswith("blk.")}
    assert blocks == set(range(KEEP))
    originals = {t.name: t for t in source.tensors}
    for t in copy.tensors:
        assert t.tensor_type == originals[t.name].tensor_type
        assert np.array_equal(np.asarray(t.data), np.asarray(originals[t.name].data))
    text = b"Hello, world: a shared tokenizer."
    loaded = [
        llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, n_threads=1)
        for path in (draft, target)
    ]
    try:
        small, full = loaded
        assert llama_cpp.llama_model_n_layer(small._model.model) == KEEP
        assert small.n_vocab() == full.n_vocab()
        assert small.tokenize(text) == full.tokenize(text)
    finally:
        for llama in loaded:
            llama.close()


@pytest.mark.parametrize("keep", [0, 30, -1, 2.0, True])
def test_truncate_rejects_bad_layer_counts(target: Path, tmp_path: Path, keep: object) -> None:
    with pytest.raises(ValueError, match="keep_layers"):
        truncate_gguf(target, tmp_path / "x.gguf", keep)  # type: ignore[arg-type]
