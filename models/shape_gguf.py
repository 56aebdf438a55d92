"""Random-weight GGUF models of the papers' shapes, for llama.cpp latency calibration on a CPU.

`build_shape_gguf(shape, out, quant)` writes a GGUF file that llama.cpp loads and runs like the
real model of that shape (`models.shapes`): the same architecture ("llama", or "qwen3" with
its per-head q/k RMSNorm), the same matrix shapes, heads, head size, RoPE settings and
vocabulary size, quantised by llama.cpp's own quantiser (Q4_K_M by default, like the papers'
drafts). Its decode and prefill latency is that of the real model at that quantisation. Its
weights are random and its tokenizer made up, so its outputs are noise: any acceptance rate
measured with it is meaningless. The file says so in its metadata (`pipesd.random_weights`,
`pipesd.note`, `general.name`).

How it is built, all in code, nothing downloaded:

1. An F16 GGUF (1-D norm weights in F32, as llama.cpp's converters write them) is streamed to a
   temporary file next to the output with gguf-py, one tensor at a time (so a 7B model never
   sits in memory whole). Weights are seeded normal draws, std 0.02 (norm weights 1.0): tensor
   i draws from `numpy.random.default_rng([seed, i])`, so a seed gives the same bytes on every
   run.
2. The tokenizer is a made-up SentencePiece-style ("llama") vocabulary of exactly the shape's
   size: `<unk>`, `<s>`, `</s>`, the 256 byte tokens `<0x00>`..`<0xFF>` (byte fallback makes
   any text tokenisable), then filler pieces "▁", "▁a", "a", "▁b", ..., "▁ab", "ab", ... with
   decreasing scores. It is not the real model's tokenizer (token ids mean nothing); it only
   gives llama.cpp a vocabulary of the right size (the output layer's cost) that works on any
   text.
3. llama.cpp's quantiser (llama-cpp-python's `llama_model_quantize`) writes the requested type
   to a second temporary file, renamed onto the output only when complete; F16 is the first
   file renamed. Temporary files are removed on every failure, Ctrl-C included.

Shapes with llama3-style RoPE scaling get the `rope_freqs` tensor llama.cpp's converter
computes for them; linear scaling is written as such; other scalings are refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import os
import shutil
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.shapes import SHAPES, ModelShape, get_shape
from simulator.errors import ConfigError

SOURCE = "shape-gguf"
"""What the one-line errors of this module name as their source."""

QUANTS: dict[str, str] = {
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
}
"""Quantisations `build_shape_gguf` writes and the llama.cpp file type of each (F16: none)."""

QUANT_BYTES_PER_WEIGHT = {
    "Q4_0": 0.6,
    "Q4_K_M": 0.65,
    "Q5_K_M": 0.75,
    "Q6_K": 0.85,
    "Q8_0": 1.1,
    "F16": 0.0,
}
"""Rough output size per weight (with headroom), for the free-disk check. F16 is the F16 file
itself, renamed: it needs no extra room."""

WEIGHT_STD = 0.02
"""Standard deviation of the random matrices (transformers' default initializer_range)."""

NOTE = "random weights: latency only, acceptance meaningless"
"""What the file's `pipesd.note` says."""

CHUNK_ELEMENTS = 1 << 24
"""Weights drawn per step (float32: 64 MiB), so no large float32 copy of a tensor exists."""

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
"""The first three ids: unknown, beginning and end of sequence (as in Llama's tokenizer)."""

FILLER_ALPHABET = string.ascii_lowercase
"""Letters the made-up filler pieces are spelled with."""

MIN_VOCAB = len(SPECIAL_TOKENS) + 256
"""The smallest vocabulary the made-up tokenizer fits in (specials and byte tokens)."""


@dataclass(frozen=True)
class _Tensor:
    """One tensor to write: its GGUF name, numpy shape (rows, columns) and how to fill it."""

    name: str
    shape: tuple[int, ...]
    fill: str
    """How: "normal" (random, std WEIGHT_STD, F16), "ones" (a norm weight, F32), "rope_freqs"."""

    @property
    def dtype(self) -> type:
        return np.float16 if self.fill == "normal" else np.float32

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def resolve_shape(shape: str | ModelShape) -> tuple[str, ModelShape]:
    """(name, shape) for a shape name or a ModelShape (named if it is one of SHAPES)."""
    if isinstance(shape, ModelShape):
        name = next((key for key, value in SHAPES.items() if value == shape), "custom")
        return name, shape
    if not isinstance(shape, str):
        raise ConfigError(SOURCE, "shape", f"expected a shape name (got {shape!r})")
    try:
        found = get_shape(shape)
    except ValueError:
        raise ConfigError(
            SOURCE, "shape", f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}"
        ) from None
    return next(key for key, value in SHAPES.items() if value is found), found


def resolve_quant(quant: str) -> str:
    """The canonical quant name (case-insensitive), or ConfigError listing the allowed ones."""
    wanted = quant.upper() if isinstance(quant, str) else quant
    if wanted not in QUANTS:
        raise ConfigError(SOURCE, "quant", f"must be one of {', '.join(QUANTS)} (got {quant!r})")
    return wanted


def default_file_name(shape_name: str, quant: str) -> str:
    """`<shape>-random-<quant>.gguf`, lower case (the CLI's default in the models folder)."""
    return f"{shape_name}-random-{quant}.gguf".lower()


def _rope_scaling(shape: ModelShape) -> tuple[str, dict[str, Any]]:
    """("none" | "linear" | "llama3", the scaling dict); ConfigError for other kinds."""
    scaling = shape.rope_scaling
    if not scaling:
        return "none", {}
    kind = str(scaling.get("rope_type", scaling.get("type", ""))).lower()
    if kind in ("linear", "llama3"):
        if shape.family != "llama" and kind == "llama3":
            raise ConfigError(SOURCE, "shape", "llama3 RoPE scaling needs the llama family")
        return kind, dict(scaling)
    raise ConfigError(
        SOURCE,
        "shape",
        f"RoPE scaling {kind!r} is not supported here (supported: none, linear, llama3)",
    )


def llama3_rope_factors(shape: ModelShape) -> np.ndarray:
    """The `rope_freqs` tensor llama.cpp's converter computes for llama3 RoPE scaling."""
    scaling = shape.rope_scaling or {}
    dim = shape.attention_head_dim
    freqs = 1.0 / (shape.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_context = float(scaling.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / float(freq)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def tensor_plan(shape: ModelShape) -> list[_Tensor]:
    """Every tensor of the shape's GGUF, in file order (numpy shapes: rows = outputs)."""
    d, hd, ff = shape.hidden, shape.attention_head_dim, shape.intermediate
    q, kv = shape.heads * hd, shape.kv_heads * hd
    plan = [_Tensor("token_embd.weight", (shape.vocab, d), "normal")]
    if _rope_scaling(shape)[0] == "llama3":
        plan.append(_Tensor("rope_freqs.weight", (hd // 2,), "rope_freqs"))
    for i in range(shape.layers):
        block = [
            ("attn_norm", (d,), "ones"),
            ("attn_q", (q, d), "normal"),
            ("attn_k", (kv, d), "normal"),
            ("attn_v", (kv, d), "normal"),
        ]
        if shape.family == "qwen3":
            block += [("attn_q_norm", (hd,), "ones"), ("attn_k_norm", (hd,), "ones")]
        block += [
            ("attn_output", (d, q), "normal"),
            ("ffn_norm", (d,), "ones"),
            ("ffn_gate", (ff, d), "normal"),
            ("ffn_up", (ff, d), "normal"),
            ("ffn_down", (d, ff), "normal"),
        ]
        plan += [_Tensor(f"blk.{i}.{part}.weight", dims, fill) for part, dims, fill in block]
    plan.append(_Tensor("output_norm.weight", (d,), "ones"))
    if not shape.tie_word_embeddings:
        plan.append(_Tensor("output.weight", (shape.vocab, d), "normal"))
    return plan


def weight_count(shape: ModelShape) -> int:
    """Weights in the file (the shape's parameters; llama3's rope_freqs are not weights)."""
    return sum(math.prod(t.shape) for t in tensor_plan(shape) if t.fill != "rope_freqs")


def _fill(tensor: _Tensor, shape: ModelShape, seed: int, index: int) -> np.ndarray:
    """The tensor's values: seeded normal draws (F16), ones or rope factors (F32)."""
    if tensor.fill == "ones":
        return np.ones(tensor.shape, dtype=np.float32)
    if tensor.fill == "rope_freqs":
        return llama3_rope_factors(shape)
    rng = np.random.default_rng([seed, index])
    out = np.empty(math.prod(tensor.shape), dtype=np.float16)
    for start in range(0, out.size, CHUNK_ELEMENTS):
        stop = min(start + CHUNK_ELEMENTS, out.size)
        draws = rng.standard_normal(stop - start, dtype=np.float32)
        np.multiply(draws, WEIGHT_STD, out=out[start:stop], casting="unsafe")
    return out.reshape(tensor.shape)


def _filler_pieces() -> Iterator[str]:
    """Distinct made-up pieces: "▁", "▁a", "a", "▁b", "b", ..., "▁z", "z", "▁aa", "aa", ...

    "▁" (a space) comes first: without it a space before a character no piece starts with would
    fall back to the bytes of "▁" and detokenize as "▁" instead of " ".
    """
    yield "\u2581"
    for length in itertools.count(1):
        for letters in itertools.product(FILLER_ALPHABET, repeat=length):
            piece = "".join(letters)
            yield "\u2581" + piece
            yield piece


def synthetic_vocabulary(size: int) -> tuple[list[str], list[float], list[int]]:
    """A made-up SentencePiece-style vocabulary of exactly `size` pieces: (tokens, scores, types).

    Ids 0-2 are `<unk>` (UNKNOWN), `<s>`, `</s>` (CONTROL); ids 3-258 the byte tokens
    `<0x00>`..`<0xFF>` (BYTE: llama.cpp falls back to them for any text no piece covers); the
    rest filler pieces (NORMAL) with decreasing scores. Not a real model's tokenizer.
    """
    import gguf  # optional (extra 'models'): GGUF files only when written or read

    if size < MIN_VOCAB:
        raise ConfigError(
            SOURCE, "shape", f"vocab must be at least {MIN_VOCAB} for the made-up tokenizer"
        )
    tokens = list(SPECIAL_TOKENS) + [f"<0x{b:02X}>" for b in range(256)]
    types = [int(gguf.TokenType.UNKNOWN), int(gguf.TokenType.CONTROL), int(gguf.TokenType.CONTROL)]
    types += [int(gguf.TokenType.BYTE)] * 256
    scores = [0.0] * len(tokens)
    filler = list(itertools.islice(_filler_pieces(), size - len(tokens)))
    tokens += filler
    scores += [-float(i) for i in range(1, len(filler) + 1)]
    types += [int(gguf.TokenType.NORMAL)] * len(filler)
    return tokens, scores, types


def _add_metadata(writer: Any, shape: ModelShape, name: str, seed: int) -> None:
    """Architecture hyperparameters, tokenizer and the random-weight notes."""
    import gguf  # optional (extra 'models'): GGUF files only when written or read

    writer.add_name(f"random-weight {name} shape ({NOTE})")
    writer.add_description(
        f"pipesd-kit random-weight model of shape {name} ({shape.source or 'custom'}); "
        f"made-up tokenizer; {NOTE}"
    )
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    writer.add_vocab_size(shape.vocab)
    writer.add_context_length(shape.max_position_embeddings)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.intermediate)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(float(shape.rope_theta))
    writer.add_layer_norm_rms_eps(float(shape.rms_norm_eps))
    hd = shape.attention_head_dim
    if hd * shape.heads != shape.hidden:
        writer.add_key_length(hd)
        writer.add_value_length(hd)
    writer.add_rope_dimension_count(hd)
    kind, scaling = _rope_scaling(shape)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    tokens, scores, types = synthetic_vocabulary(shape.vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_bool("pipesd.random_weights", True)
    writer.add_string("pipesd.note", NOTE)
    writer.add_string("pipesd.shape", name)
    writer.add_uint64("pipesd.seed", seed)
    writer.add_string("pipesd.tokenizer", "made up: specials, 256 byte tokens, filler pieces")


def write_f16_gguf(
    shape: ModelShape,
    name: str,
    path: Path,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Stream the shape's F16 GGUF (norms F32) to `path`, one tensor in memory at a time."""
    import gguf  # optional (extra 'models'): GGUF files only when written or read

    plan = tensor_plan(shape)
    arch = "qwen3" if shape.family == "qwen3" else "llama"
    writer = gguf.GGUFWriter(path, arch)
    try:
        _add_metadata(writer, shape, name, seed)
        for tensor in plan:
            writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(tensor.dtype), tensor.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for index, tensor in enumerate(plan):
            if progress is not None and tensor.name.endswith("attn_norm.weight"):
                block = int(tensor.name.split(".")[1])
                progress(f"writing F16 weights: block {block + 1}/{shape.layers}")
            writer.write_tensor_data(_fill(tensor, shape, seed, index))
        writer.flush()
    finally:
        writer.close()


@contextlib.contextmanager
def _quiet_llama() -> Iterator[None]:
    """llama.cpp's log lines off (errors kept) while the quantiser runs."""
    # optional (extra 'models'): llama.cpp only when a model runs
    from llama_cpp._logger import logger

    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> None:
    """llama.cpp's quantiser: `src` (F16 GGUF) to `dst` in `quant`; RuntimeError if it fails."""
    import llama_cpp  # optional (extra 'models'): llama.cpp only when a model runs

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = threads if threads is not None else (os.cpu_count() or 1)
    with _quiet_llama():
        llama_cpp.llama_backend_init()
        code = llama_cpp.llama_model_quantize(
            os.fsencode(src), os.fsencode(dst), ctypes.byref(params)
        )
    if code != 0:
        raise RuntimeError(f"llama.cpp could not quantise {src.name} to {quant} (code {code})")


def _check_output(out: Path, needed_bytes: int) -> None:
    """ConfigError unless `out` is a .gguf path in a writable folder with room for the build."""
    if out.suffix.lower() != ".gguf":
        raise ConfigError(SOURCE, "out", f"must end in .gguf (got {str(out)!r})")
    if out.is_dir():
        raise ConfigError(SOURCE, "out", f"{out} is a folder (expected a .gguf file path)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            SOURCE, "out", f"cannot create folder {out.parent} ({exc.strerror or exc})"
        ) from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ConfigError(SOURCE, "out", f"folder {out.parent} is not writable")
    free = shutil.disk_usage(out.parent).free
    if needed_bytes > free:
        raise ConfigError(
            SOURCE,
            "out",
            f"building needs about {needed_bytes / 2**30:.1f} GiB free in {out.parent} "
            f"(temporary F16 file and output), only {free / 2**30:.1f} GiB free",
        )


def build_shape_gguf(
    shape_name: str | ModelShape,
    out_path: str | os.PathLike[str],
    quant: str = "Q4_K_M",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> Path:
    """Build the random-weight GGUF of a shape (a name from models.shapes, or a ModelShape).

    Writes `out_path` (a .gguf path; its folder is created) in `quant` (one of QUANTS,
    case-insensitive) from weights seeded with `seed` (an integer >= 0), quantised with
    `threads` threads (default: every core). Returns the output path. Bad input (shape, quant,
    seed, output) raises a one-line ConfigError; a failing quantiser RuntimeError. Nothing is
    left under the output's name unless the build completed, and no temporary file remains.
    Random weights and a made-up tokenizer: latency only, acceptance meaningless.
    """
    name, shape = resolve_shape(shape_name)
    quant = resolve_quant(quant)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ConfigError(SOURCE, "seed", f"must be an integer >= 0 (got {seed!r})")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ConfigError(SOURCE, "threads", f"must be at least 1 (got {threads!r})")
    _rope_scaling(shape)  # refuses unsupported scalings before anything is written
    if shape.vocab < MIN_VOCAB:
        raise ConfigError(
            SOURCE, "shape", f"vocab must be at least {MIN_VOCAB} for the made-up tokenizer"
        )
    out = Path(out_path).expanduser()
    f16_bytes = sum(t.nbytes for t in tensor_plan(shape))
    needed = int(1.02 * f16_bytes + QUANT_BYTES_PER_WEIGHT[quant] * weight_count(shape))
    _check_output(out, needed)

    tag = f"{os.getpid()}.tmp"
    f16_tmp = out.with_name(f"{out.name}.f16.{tag}")
    out_tmp = out.with_name(f"{out.name}.{tag}")
    try:
        try:
            write_f16_gguf(shape, name, f16_tmp, seed, progress)
        except OSError as exc:
            raise ConfigError(
                SOURCE, "out", f"cannot write {f16_tmp} ({exc.strerror or exc})"
            ) from None
        if quant == "F16":
            os.replace(f16_tmp, out)
        else:
            if progress is not None:
                progress(f"quantising to {quant} with llama.cpp")
            quantize(f16_tmp, out_tmp, quant, threads)
            os.replace(out_tmp, out)
    finally:
        for leftover in (f16_tmp, out_tmp):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return out


__all__ = [
    "NOTE",
    "QUANTS",
    "build_shape_gguf",
    "default_file_name",
    "llama3_rope_factors",
    "resolve_quant",
    "resolve_shape",
    "synthetic_vocabulary",
    "tensor_plan",
    "weight_count",
]
