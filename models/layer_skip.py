"""Layer-skipped copies of a llama GGUF model: self-speculative drafts sharing its tokenizer.

`skip_layers_gguf(source, out, keep_blocks, metadata)` writes a copy of `source` holding only
the transformer blocks listed in `keep_blocks` (any subset, e.g. the first ten and the last
ten), renumbered 0..n-1 in their original order; `llama.block_count` becomes n. Embeddings,
the final norm and the output head are shared: copied with their original (quantised) type,
byte for byte, as is every kept block's tensor. No weight is changed or re-quantised. Extra
metadata keys (strings: the recipe that made the file) are added.

Skipping middle blocks and keeping the last few (which map the residual stream onto the head's
space) agrees with the full model far better than keeping only the first blocks
(`models.truncate`), as layer-skipping self-speculative decoding (Draft & Verify, LayerSkip)
reports; `calibrate.pairs` measures it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from models.truncate import BLOCK_TENSOR, SUPPORTED_ARCHITECTURES, field_value, metadata_writer


def _bad(message: str) -> ValueError:
    return ValueError(f"skip_layers_gguf: {message}")


def parse_blocks(text: str, block_count: int | None = None) -> list[int]:
    """Block indices from "0-9,20-29" (ranges inclusive, sorted, no repeats); ValueError if
    malformed or (given `block_count`) out of [0, block_count - 1]."""
    blocks: set[int] = set()
    for part in str(text).split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise _bad(f"blocks must look like 0-9,20-29 (got {text!r})")
        first, last = int(lo), int(hi) if hi else int(lo)
        if last < first:
            raise _bad(f"range {part.strip()!r} runs backwards in {text!r}")
        blocks.update(range(first, last + 1))
    if block_count is not None and max(blocks) >= block_count:
        raise _bad(f"block {max(blocks)} does not exist (blocks 0-{block_count - 1}) in {text!r}")
    return sorted(blocks)


def skip_layers_gguf(
    source: Path,
    out: Path,
    keep_blocks: Sequence[int] | Callable[[int], Sequence[int]],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write `out`: `source` (a llama GGUF) with only `keep_blocks`, renumbered (docstring).

    `keep_blocks` (or what it returns given the source's block count) must be distinct
    indices in [0, block_count - 1], fewer than all of them; `out` must differ from `source`;
    its parent folder is created. ValueError (naming the problem) otherwise. Returns the
    number of blocks written. Needs the `gguf` package.
    """
    return _copy(Path(source), Path(out), keep_blocks, metadata or {})


def stamp_gguf(source: Path, out: Path, metadata: dict[str, str]) -> int:
    """Write `out`: a byte-for-byte copy of `source`'s tensors with string metadata keys added
    (or replaced). Returns its block count. Needs the `gguf` package."""
    return _copy(Path(source), Path(out), None, metadata)


def _copy(
    source: Path,
    out: Path,
    keep_blocks: Sequence[int] | Callable[[int], Sequence[int]] | None,
    metadata: dict[str, str],
) -> int:
    import gguf  # the gguf package is optional (the models extra)

    if not source.is_file():
        raise _bad(f"source {source} is not a file")
    if out.exists() and source.resolve() == out.resolve():
        raise _bad(f"out must differ from source (both {source})")
    reader = gguf.GGUFReader(source)
    arch = field_value(reader, gguf.Keys.General.ARCHITECTURE)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise _bad(f"{source.name} has architecture {arch!r}; supported: llama")
    block_key = f"{arch}.block_count"
    count = field_value(reader, block_key)
    if callable(keep_blocks):
        keep_blocks = list(keep_blocks(count))
    keep = list(range(count)) if keep_blocks is None else sorted({int(b) for b in keep_blocks})
    if not keep:
        raise _bad(f"every block would be dropped: keep at least one of the {count} blocks")
    if len(keep) != (count if keep_blocks is None else len(keep_blocks)) or (
        not keep or keep[0] < 0 or keep[-1] >= count
    ):
        raise _bad(
            f"keep_blocks must be distinct block indices in [0, {count - 1}] (got {keep_blocks!r})"
        )
    if keep_blocks is not None and len(keep) == count:
        raise _bad(f"keep_blocks keeps all {count} blocks: nothing is skipped")
    renumber = {old: new for new, old in enumerate(keep)}

    kept = []
    for tensor in reader.tensors:
        match = BLOCK_TENSOR.match(tensor.name)
        if match is None:
            kept.append((tensor.name, tensor))
        elif int(match.group(1)) in renumber:
            name = f"blk.{renumber[int(match.group(1))]}." + tensor.name[match.end() :]
            kept.append((name, tensor))

    replaced = {k: v for k, v in metadata.items() if k in reader.fields}
    writer = metadata_writer(reader, out, arch, {block_key: len(keep), **replaced})
    try:
        for key, value in metadata.items():
            if key not in replaced:
                writer.add_string(key, value)
        for name, tensor in kept:
            writer.add_tensor_info(
                name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _name, tensor in kept:
            writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    finally:
        writer.close()
    return len(keep)


__all__ = ["parse_blocks", "skip_layers_gguf", "stamp_gguf"]
