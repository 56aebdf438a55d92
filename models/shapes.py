"""Architecture-faithful shapes of the papers' models, and random-weight models of those shapes.

Each named shape holds the dimensions of a published model configuration (layers, hidden and
MLP widths, attention and key/value heads, head size, vocabulary, RoPE settings, tied
embeddings), from the model cards' `config.json` as published. `build_random_model` makes a
transformers model of that shape with random weights (seeded), built in code: nothing is read
from or downloaded off a model hub.

The weights are random: such a model's latency is that of the real architecture (same matrix
shapes, same attention, same KV-cache size), but its outputs are noise, so any acceptance rate
measured with it is meaningless. Use these models for latency and energy calibration only.

Qwen3 shapes build `Qwen3ForCausalLM` (per-head RMSNorm on queries and keys, explicit head
size 128) when the installed transformers has it; otherwise a `LlamaForCausalLM` with the same
dimensions (including head_dim), which lacks only the two small q/k norms (`build_random_model`
says which in the model's `config.pipesd_architecture_note`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAMILIES = ("llama", "qwen3")
"""Architectures a shape can have."""


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only transformer, as its published config states them.

    `rope_scaling` is None or the config's `rope_scaling` dict (with "rope_type"). `head_dim`
    is hidden / heads unless the model states otherwise (Qwen3 does).
    """

    family: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool = False
    head_dim: int | None = None
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)
    source: str = ""
    """Where the numbers come from (the published config they copy)."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"ModelShape.family must be one of {FAMILIES} (got {self.family!r})")
        for name in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelShape.{name} must be an integer >= 1 (got {value!r})")
        if self.heads % self.kv_heads:
            raise ValueError(
                f"ModelShape: heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )
        if self.head_dim is None and self.hidden % self.heads:
            raise ValueError(
                f"ModelShape: hidden ({self.hidden}) must be a multiple of heads ({self.heads}) "
                f"unless head_dim is given"
            )

    @property
    def attention_head_dim(self) -> int:
        """The size of one attention head."""
        return self.head_dim if self.head_dim is not None else self.hidden // self.heads

    def config_kwargs(self) -> dict[str, Any]:
        """LlamaConfig-style keyword arguments for this shape (also what Qwen3Config takes).

        RoPE goes in as `rope_theta` / `rope_scaling`, which transformers 4.x reads as such and
        5.x converts into its `rope_parameters`.
        """
        kwargs: dict[str, Any] = {
            "num_hidden_layers": self.layers,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.attention_head_dim,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "use_cache": True,
        }
        if self.rope_scaling is not None:
            kwargs["rope_scaling"] = dict(self.rope_scaling)
        return kwargs

    def parameter_count(self) -> int:
        """Number of weights (embeddings, attention, MLP, norms, LM head unless tied)."""
        d, hd = self.hidden, self.attention_head_dim
        attention = d * self.heads * hd + 2 * d * self.kv_heads * hd + self.heads * hd * d
        mlp = 3 * d * self.intermediate
        norms = 2 * d + (2 * hd if self.family == "qwen3" else 0)
        embeddings = self.vocab * d
        head = 0 if self.tie_word_embeddings else self.vocab * d
        return embeddings + self.layers * (attention + mlp + norms) + d + head

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """KV-cache bytes one token occupies (keys and values, every layer)."""
        return 2 * self.layers * self.kv_heads * self.attention_head_dim * bytes_per_value

    def describe(self) -> dict[str, Any]:
        """The shape as plain data (for provenance)."""
        return {
            "family": self.family,
            "layers": self.layers,
            "hidden": self.hidden,
            "intermediate": self.intermediate,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.attention_head_dim,
            "vocab": self.vocab,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "parameters": self.parameter_count(),
        }


_DEEPSEEK_CODER_ROPE = {"rope_type": "linear", "factor": 4.0}
_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

SHAPES: dict[str, ModelShape] = {
    # Tests only: two layers, hidden 64 (builds and runs in milliseconds on a CPU).
    "tiny": ModelShape(
        family="llama",
        layers=2,
        hidden=64,
        intermediate=176,
        heads=4,
        kv_heads=2,
        vocab=512,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        source="made up for tests (llama architecture)",
    ),
    "TinyLlama-1.1B": ModelShape(
        family="llama",
        layers=22,
        hidden=2048,
        intermediate=5632,
        heads=32,
        kv_heads=4,
        vocab=32000,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        source="TinyLlama/TinyLlama-1.1B-Chat-v1.0 config.json",
    ),
    "DeepSeek-Coder-1.3B": ModelShape(
        family="llama",
        layers=24,
        hidden=2048,
        intermediate=5504,
        heads=16,
        kv_heads=16,
        vocab=32256,
        max_position_embeddings=16384,
        rope_theta=100000.0,
        rms_norm_eps=1e-6,
        rope_scaling=_DEEPSEEK_CODER_ROPE,
        source="deepseek-ai/deepseek-coder-1.3b-base config.json",
    ),
    "DeepSeek-Coder-6.7B": ModelShape(
        family="llama",
        layers=32,
        hidden=4096,
        intermediate=11008,
        heads=32,
        kv_heads=32,
        vocab=32256,
        max_position_embeddings=16384,
        rope_theta=100000.0,
        rms_norm_eps=1e-6,
        rope_scaling=_DEEPSEEK_CODER_ROPE,
        source="deepseek-ai/deepseek-coder-6.7b-base config.json",
    ),
    "Llama-2-7B": ModelShape(
        family="llama",
        layers=32,
        hidden=4096,
        intermediate=11008,
        heads=32,
        kv_heads=32,
        vocab=32000,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        source="meta-llama/Llama-2-7b-hf config.json",
    ),
    "Qwen3-0.6B": ModelShape(
        family="qwen3",
        layers=28,
        hidden=1024,
        intermediate=3072,
        heads=16,
        kv_heads=8,
        head_dim=128,
        vocab=151936,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        source="Qwen/Qwen3-0.6B config.json",
    ),
    "Qwen3-1.7B": ModelShape(
        family="qwen3",
        layers=28,
        hidden=2048,
        intermediate=6144,
        heads=16,
        kv_heads=8,
        head_dim=128,
        vocab=151936,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        source="Qwen/Qwen3-1.7B config.json",
    ),
    "Qwen3-32B": ModelShape(
        family="qwen3",
        layers=64,
        hidden=5120,
        intermediate=25600,
        heads=64,
        kv_heads=8,
        head_dim=128,
        vocab=151936,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        source="Qwen/Qwen3-32B config.json",
    ),
    "Llama-3.1-70B": ModelShape(
        family="llama",
        layers=80,
        hidden=8192,
        intermediate=28672,
        heads=64,
        kv_heads=8,
        vocab=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        rope_scaling=_LLAMA31_ROPE,
        source="meta-llama/Llama-3.1-70B config.json",
    ),
}
"""Named shapes: the papers' models (weights random, acceptance meaningless) and "tiny"."""


def get_shape(name: str) -> ModelShape:
    """The shape called `name` (exact, or ignoring case); ValueError listing the names."""
    if name in SHAPES:
        return SHAPES[name]
    folded = {key.lower(): key for key in SHAPES}
    if name.lower() in folded:
        return SHAPES[folded[name.lower()]]
    raise ValueError(f"unknown model shape {name!r}; known shapes: {', '.join(SHAPES)}")


def has_qwen3() -> bool:
    """Whether the installed transformers has the Qwen3 architecture."""
    try:
        from transformers import Qwen3Config, Qwen3ForCausalLM  # noqa: F401
    except ImportError:
        return False
    return True


def build_config(name: str) -> Any:
    """The transformers config of shape `name` (allocates no weights).

    LlamaConfig for llama shapes; Qwen3Config for Qwen3 shapes when transformers has it, else a
    LlamaConfig with the same dimensions. Its `name_or_path` is "random:<name>".
    """
    shape = get_shape(name)
    if shape.family == "qwen3" and has_qwen3():
        # optional (extra 'models'): loaded only when used
        from transformers import Qwen3Config as config_class

        note = "Qwen3ForCausalLM (transformers' Qwen3 architecture)"
    else:
        # optional (extra 'models'): loaded only when used
        from transformers import LlamaConfig as config_class

        note = "LlamaForCausalLM"
        if shape.family == "qwen3":
            note += " with Qwen3 dimensions (this transformers has no Qwen3: no q/k norms)"
    config = config_class(**shape.config_kwargs())
    config.name_or_path = f"random:{name}"
    config.pipesd_architecture_note = f"{note}; random weights, acceptance meaningless"
    return config


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
"""Bytes per weight of the dtypes the models are built in."""

MEMORY_HEADROOM = 0.9
"""A model is only built if its weights take at most this fraction of the free memory."""


def _available_bytes(device: Any) -> int | None:
    """Free memory on `device` (GPU memory for cuda, MemAvailable for the CPU), or None."""
    import torch  # optional (extra 'models'): loaded only when used

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def build_random_model(name: str, dtype: Any = None, device: Any = "cpu", seed: int = 0) -> Any:
    """A transformers causal LM of shape `name` with random weights, in eval mode.

    Weights are allocated directly on `device` in `dtype` (default torch.bfloat16) and
    initialised by transformers' own initialiser (normal, std = initializer_range) from a
    generator seeded with `seed`, inside `torch.random.fork_rng` so the caller's random state
    is untouched. Nothing is downloaded. Raises MemoryError (one line) before allocating if the
    weights would not fit in the free memory of the device. Random weights: latency is the
    architecture's, acceptance meaningless.
    """
    import torch  # optional (extra 'models'): loaded only when used

    shape = get_shape(name)
    dtype = torch.bfloat16 if dtype is None else dtype
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"build_random_model: seed must be an integer (got {seed!r})")
    dtype_name = str(dtype).removeprefix("torch.")
    if dtype_name not in DTYPE_BYTES:
        raise ValueError(
            f"build_random_model: dtype must be one of {', '.join(DTYPE_BYTES)} (got {dtype})"
        )
    weight_bytes = shape.parameter_count() * DTYPE_BYTES[dtype_name]
    free = _available_bytes(device)
    if free is not None and weight_bytes > MEMORY_HEADROOM * free:
        raise MemoryError(
            f"build_random_model: {name} needs {weight_bytes / 2**30:.1f} GiB of weights in "
            f"{dtype_name} but {device} has {free / 2**30:.1f} GiB free"
        )

    config = build_config(name)
    if config.model_type == "qwen3":
        # optional (extra 'models'): loaded only when used
        from transformers import Qwen3ForCausalLM as model_class
    else:
        # optional (extra 'models'): loaded only when used
        from transformers import LlamaForCausalLM as model_class

    forked = [device.index] if device.type == "cuda" else []
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = model_class(config)
        finally:
            torch.set_default_dtype(previous)
    model.eval()
    model.requires_grad_(False)
    return model


def weights_gib(name: str, dtype_name: str = "bfloat16") -> float:
    """GiB the weights of shape `name` take in `dtype_name`."""
    if dtype_name not in DTYPE_BYTES:
        raise ValueError(f"weights_gib: dtype must be one of {', '.join(DTYPE_BYTES)}")
    return get_shape(name).parameter_count() * DTYPE_BYTES[dtype_name] / 2**30


__all__ = [
    "FAMILIES",
    "SHAPES",
    "ModelShape",
    "build_config",
    "build_random_model",
    "get_shape",
    "has_qwen3",
    "weights_gib",
]
