"""Layer-truncated copies of a llama GGUF model: a draft sharing the target's tokenizer.

`truncate_gguf(source, out, keep_layers)` writes a copy of `source` that keeps only its first
`keep_layers` transformer blocks: every key/value of metadata (tokenizer, chat template,
hyper-parameters) is copied unchanged except `llama.block_count`, which becomes `keep_layers`;
the tensors of blocks >= keep_layers (`blk.N.*`) are dropped; every other tensor (embeddings,
output norm, output head) is copied with its original (quantised) type, byte for byte. No
weight is changed or re-quantised.

Such a copy shares the target's tokenizer, so it can draft for it, but its acceptance is low:
the shared environment notes found layer-truncated copies agreeing with their target on only
3-36% of greedy tokens. It exists to exercise the acceptance recorder
(`calibrate.acceptance`) on a real draft/target pair until a distilled draft exists; its
acceptance rates are not those of a trained draft.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.")
"""Tensor names of transformer block N (llama.cpp naming: blk.N.attn_q.weight, ...)."""

SUPPORTED_ARCHITECTURES = ("llama",)
"""Architectures `truncate_gguf` handles (their block count key is `<arch>.block_count`)."""


def field_value(reader: Any, name: str) -> Any:
    """A GGUF metadata value (None if the key is absent)."""
    field = reader.fields.get(name)
    return None if field is None else field.contents()


def metadata_writer(reader: Any, out: Path, arch: str, overrides: dict[str, Any]) -> Any:
    """A GGUFWriter for `out` holding `reader`'s metadata (alignment included) with the keys
    of `overrides` given new values; tensors are the caller's. The caller closes it."""
    import gguf  # optional (extra 'models'): GGUF files only when written or read

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out, arch=arch, endianess=reader.endianess)
    try:
        alignment = field_value(reader, gguf.Keys.General.ALIGNMENT)
        if alignment is not None:
            writer.data_alignment = alignment
        for field in reader.fields.values():
            # GGUF.* are virtual (header) fields; the writer writes the architecture itself.
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            value = overrides[field.name] if field.name in overrides else field.contents()
            writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
    except BaseException:
        writer.close()
        raise
    return writer


def truncate_gguf(source: Path, out: Path, keep_layers: int) -> Path:
    """Write `out`: `source` (a llama GGUF) with only its first `keep_layers` blocks.

    `keep_layers` must be an integer in [1, block_count - 1] (ValueError naming it otherwise);
    `source` must be a llama-architecture GGUF file (ValueError otherwise). `out` is
    overwritten; its parent folder is created. Returns `out`. Needs the `gguf` package.
    See the module docstring: the result is a weak draft, for exercising the recorder.
    """
    import gguf  # optional (extra 'models'): GGUF files only when written or read

    source, out = Path(source), Path(out)
    if isinstance(keep_layers, bool) or not isinstance(keep_layers, int) or keep_layers < 1:
        raise ValueError(
            f"truncate_gguf: keep_layers must be an integer in [1, block_count - 1] "
            f"(got {keep_layers!r})"
        )
    if not source.is_file():
        raise ValueError(f"truncate_gguf: source {source} is not a file")
    if source.resolve() == out.resolve():
        raise ValueError(f"truncate_gguf: out must differ from source (both {source})")
    reader = gguf.GGUFReader(source)
    arch = field_value(reader, gguf.Keys.General.ARCHITECTURE)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"truncate_gguf: {source.name} has architecture {arch!r}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    block_key = f"{arch}.block_count"
    block_count = field_value(reader, block_key)
    if not isinstance(block_count, int) or block_count < 2:
        raise ValueError(
            f"truncate_gguf: {source.name} has {block_key} {block_count!r}; need an integer >= 2"
        )
    if keep_layers > block_count - 1:
        raise ValueError(
            f"truncate_gguf: keep_layers must be an integer in [1, {block_count - 1}] "
            f"({source.name} has {block_count} blocks) (got {keep_layers!r})"
        )

    kept = []
    for tensor in reader.tensors:
        match = BLOCK_TENSOR.match(tensor.name)
        if match is None or int(match.group(1)) < keep_layers:
            kept.append(tensor)

    writer = metadata_writer(reader, out, arch, {block_key: keep_layers})
    try:
        for tensor in kept:
            writer.add_tensor_info(
                tensor.name,
                tensor.data.shape,
                tensor.data.dtype,
                tensor.data.nbytes,
                tensor.tensor_type,
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in kept:
            writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    finally:
        writer.close()
    return out


__all__ = ["field_value", "metadata_writer", "truncate_gguf"]
