"""A llama model in PyTorch that reads and writes llama.cpp GGUF weights: the distilled student.

`read_llama(path)` dequantises a llama GGUF (the target) into float32 tensors in llama.cpp's
own layout; `Student.from_target(weights, layers)` is a shallow llama made of the target's
embeddings (tied head, frozen), final norm and the chosen blocks (trainable);
`export_gguf(student, target, out, quant)` writes it as a GGUF that llama.cpp loads, with the
target's metadata and tokenizer and its embedding tensor copied byte for byte.

Weights stay in GGUF layout, so no permutation is needed either way: llama.cpp's llama
architecture rotates adjacent pairs (x[2i], x[2i+1]) by RoPE (LLAMA_ROPE_TYPE_NORM), and so
does `_rope` here (Hugging Face checkpoints permute q/k rows instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.distill import QUANTS
from models.truncate import field_value, metadata_writer

BLOCK_PARTS = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)
"""The tensors of one llama block (`blk.N.<part>.weight` in llama.cpp naming)."""


@dataclass(frozen=True)
class Hyper:
    """The llama hyper-parameters a GGUF declares."""

    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_layer: int
    n_vocab: int
    eps: float
    rope_base: float


@dataclass(frozen=True)
class TargetWeights:
    """A llama GGUF dequantised to float32 (shapes as torch Linear weights: [out, in])."""

    path: Path
    hyper: Hyper
    token_embd: torch.Tensor
    output_norm: torch.Tensor
    blocks: dict[int, dict[str, torch.Tensor]]
    """The dequantised blocks, by index (those `read_llama` was asked for)."""


def block_count(path: Path) -> int:
    """A llama GGUF's `llama.block_count` (ValueError if the file is not a llama GGUF)."""
    import gguf  # optional (extra 'models'): GGUF files only when written or read

    reader = gguf.GGUFReader(path)
    arch = field_value(reader, gguf.Keys.General.ARCHITECTURE)
    if arch != "llama":
        raise ValueError(f"{Path(path).name}: architecture {arch!r}; distillation needs 'llama'")
    return int(field_value(reader, "llama.block_count"))


def read_llama(path: Path, blocks: list[int] | None = None) -> TargetWeights:
    """Dequantise a llama-architecture GGUF with a tied head (ValueError otherwise): its
    embeddings, final norm and `blocks` (default all)."""
    import gguf  # optional (extra 'models'): GGUF files only when written or read

    reader = gguf.GGUFReader(path)
    arch = field_value(reader, gguf.Keys.General.ARCHITECTURE)
    if arch != "llama":
        raise ValueError(f"{Path(path).name}: architecture {arch!r}; distillation needs 'llama'")
    tensors = {t.name: t for t in reader.tensors}
    if "output.weight" in tensors:
        raise ValueError(f"{Path(path).name}: has an untied output head; distillation needs tied")

    def get(name: str) -> torch.Tensor:
        tensor = tensors[name]
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        return torch.from_numpy(np.array(array, dtype=np.float32))

    n_layer = int(field_value(reader, "llama.block_count"))
    token_embd = get("token_embd.weight")
    hyper = Hyper(
        n_embd=int(field_value(reader, "llama.embedding_length")),
        n_head=int(field_value(reader, "llama.attention.head_count")),
        n_head_kv=int(field_value(reader, "llama.attention.head_count_kv")),
        n_ff=int(field_value(reader, "llama.feed_forward_length")),
        n_layer=n_layer,
        n_vocab=int(token_embd.shape[0]),
        eps=float(field_value(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_base=float(field_value(reader, "llama.rope.freq_base") or 10000.0),
    )
    wanted = range(n_layer) if blocks is None else sorted(set(blocks))
    if any(not 0 <= i < n_layer for i in wanted):
        raise ValueError(f"blocks must be in [0, {n_layer - 1}] (got {list(wanted)})")
    dequantised = {i: {part: get(f"blk.{i}.{part}.weight") for part in BLOCK_PARTS} for i in wanted}
    return TargetWeights(Path(path), hyper, token_embd, get("output_norm.weight"), dequantised)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of the last dimension (llama.cpp's normal RoPE); x: [B,H,T,D]."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class Block(nn.Module):
    """One llama block: pre-norm grouped-query attention and a SwiGLU feed-forward."""

    def __init__(self, hyper: Hyper, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.hyper = hyper
        self.weights = nn.ParameterDict(
            {part: nn.Parameter(weights[part].clone()) for part in BLOCK_PARTS}
        )

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h, w = self.hyper, self.weights
        batch, length, _ = x.shape
        head_dim = h.n_embd // h.n_head
        y = _rms_norm(x, w["attn_norm"], h.eps)
        q = F.linear(y, w["attn_q"]).view(batch, length, h.n_head, head_dim).transpose(1, 2)
        k = F.linear(y, w["attn_k"]).view(batch, length, h.n_head_kv, head_dim).transpose(1, 2)
        v = F.linear(y, w["attn_v"]).view(batch, length, h.n_head_kv, head_dim).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        group = h.n_head // h.n_head_kv
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + F.linear(attn.transpose(1, 2).reshape(batch, length, h.n_embd), w["attn_output"])
        y = _rms_norm(x, w["ffn_norm"], h.eps)
        return x + F.linear(
            F.silu(F.linear(y, w["ffn_gate"])) * F.linear(y, w["ffn_up"]), w["ffn_down"]
        )


class Student(nn.Module):
    """Embeddings and tied head (frozen) + chosen blocks + final norm (trainable)."""

    def __init__(
        self,
        hyper: Hyper,
        token_embd: torch.Tensor,
        output_norm: torch.Tensor,
        blocks: list[dict[str, torch.Tensor]],
    ) -> None:
        super().__init__()
        self.hyper = hyper
        self.register_buffer("token_embd", token_embd, persistent=False)
        self.output_norm = nn.Parameter(output_norm.clone())
        self.blocks = nn.ModuleList(Block(hyper, b) for b in blocks)

    @classmethod
    def from_target(cls, target: TargetWeights, layers: list[int]) -> Student:
        """A student initialised from the target's blocks `layers` (in that order)."""
        bad = [i for i in layers if i not in target.blocks]
        if not layers or bad:
            raise ValueError(f"layers must be blocks read from the target (got {layers})")
        hyper = Hyper(**{**target.hyper.__dict__, "n_layer": len(layers)})
        blocks = [target.blocks[i] for i in layers]
        return cls(hyper, target.token_embd, target.output_norm, blocks)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states [B, T, n_embd] of token ids [B, T] (positions from 0)."""
        h = self.hyper
        head_dim = h.n_embd // h.n_head
        positions = torch.arange(tokens.shape[1], dtype=torch.float32)
        inv_freq = h.rope_base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = positions[:, None] * inv_freq[None, :]
        cos, sin = angles.cos(), angles.sin()
        x = F.embedding(tokens, self.token_embd)
        for block in self.blocks:
            x = block(x, cos, sin)
        return _rms_norm(x, self.output_norm, h.eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the vocabulary (the tied head) of hidden states [..., n_embd]."""
        return hidden @ self.token_embd.T


def export_gguf(student: Student, target_path: Path, out: Path, quant: str = "q8_0") -> Path:
    """Write `student` as a llama GGUF: the target's metadata (block_count changed), tokenizer
    and token_embd (byte for byte); blocks' matrices in `quant`, norms F32. Returns `out`."""
    import gguf  # optional (extra 'models'): GGUF files only when written or read

    if quant not in QUANTS:
        raise ValueError(f"quant must be one of {', '.join(QUANTS)} (got {quant!r})")
    reader = gguf.GGUFReader(target_path)
    tensors = {t.name: t for t in reader.tensors}
    embd = tensors["token_embd.weight"]
    qtype = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[quant]
    FILE_TYPES = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    named: list[tuple[str, np.ndarray, gguf.GGMLQuantizationType]] = []
    named.append(
        ("output_norm.weight", student.output_norm.detach().numpy(), gguf.GGMLQuantizationType.F32)
    )
    for i, block in enumerate(student.blocks):
        for part in BLOCK_PARTS:
            array = block.weights[part].detach().numpy().astype(np.float32)
            kind = gguf.GGMLQuantizationType.F32 if array.ndim == 1 else qtype
            named.append((f"blk.{i}.{part}.weight", array, kind))

    overrides = {
        "llama.block_count": student.hyper.n_layer,
        gguf.Keys.General.FILE_TYPE: int(FILE_TYPES[quant]),
    }
    out = Path(out)
    writer = metadata_writer(reader, out, "llama", overrides)
    try:
        writer.add_tensor(
            embd.name, embd.data, raw_shape=embd.data.shape, raw_dtype=embd.tensor_type
        )
        for name, array, kind in named:
            if kind == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(name, array)
            elif kind == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(name, array.astype(np.float16))
            else:
                data = gguf.quants.quantize(array, kind)
                writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out


__all__ = ["Hyper", "Student", "TargetWeights", "block_count", "export_gguf", "read_llama"]
