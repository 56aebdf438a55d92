"""A PyTorch/transformers target for the cloud server: static KV cache + CUDA graphs, or eager.

`TorchTarget` is a realrun.cloud.backend.TargetBackend with LlamaTarget's semantics
(realrun/cloud/llama_target.py, realrun/protocol.py: committed tokens in the KV cache, one
pending token, verification of [pending, drafts] in one forward under the session's rule
(greedy, synthetic or sampling: realrun.cloud.verifier.decide), rollback past the accepted
prefix, one resident session re-prefilled on a switch), on any transformers causal LM: a named
random-weight shape (models/shapes.py, latency only), a local Hugging Face folder, or a GGUF
file (transformers' `gguf_file=`, which needs the `accelerate` package).

Modes:
- "eager": plain transformers with a DynamicCache, cropped on rollback (as calibrate/target.py).
- "static": a StaticCache of n_ctx + the largest bucket positions; every verification forward
  is padded to a fixed bucket size (1, 2, 4, ... tokens) so shapes never change, and on CUDA
  each bucket's forward (logits and their argmax) is compiled with
  `torch.compile(mode="reduce-overhead")`, i.e. replayed as a CUDA graph, all buckets warmed
  up at load. Rollback only moves the write position back: entries past it are stale but
  invisible (the causal mask lets position p see cache slots <= p, and every slot below p holds
  the resident session's own tokens), and the next forward overwrites them. Padding tokens sit
  after the real ones, so they change nothing.

transformers internals relied on (the same in 5.17 and 5.23): a StaticCache layer writes at,
and offsets the mask by, its tensor `cumulative_length` (set in place here to roll back);
`Cache.crop(-k)` removes the last k positions. Static mode refuses a transformers without them.

Rules: every forward returns the logits and their argmax per row, both left on the device.
Greedy and synthetic sessions read only the argmax of the real rows (a few ints to the host,
handed to `decide` as `argmax`); sampling sessions copy to the host, as float32, just the rows
`decide` asks for. Greedy ties: the first maximal index (torch.argmax, as np.argmax in
LlamaTarget). Lossless means equal to the target's own greedy output *through the same
evaluation path*: in bf16 on a GPU a padded bucket and a one-token decode may round
differently (as llama.cpp's batches do).
Not thread-safe: the server serialises calls with a lock.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from models.registry import MODEL_NAMES, resolve_model
from models.shapes import SHAPES, build_random_model, get_shape
from realrun.cloud.backend import Session, SessionBook, VerifyResult
from realrun.cloud.verifier import Rule, decide
from simulator.errors import ConfigError

MODES = ("static", "eager")
DTYPES = ("auto", "float32", "bfloat16", "float16")
AUTO_COMPILE = "auto"
"""`compile_mode` default: "reduce-overhead" (CUDA graphs) for static mode on CUDA, else none."""
WARMUP_RUNS = 3
"""Runs per bucket at load: cudagraph trees warm up, record, then replay."""
SOURCE = "torch target"
"""The `source` of this module's ConfigErrors."""


def verify_buckets(max_positions: int) -> tuple[int, ...]:
    """Padded forward sizes: powers of two below `max_positions`, then `max_positions`."""
    sizes = []
    size = 1
    while size < max_positions:
        sizes.append(size)
        size *= 2
    sizes.append(max_positions)
    return tuple(sizes)


def torch_device(device: str) -> Any:
    """`device` as a torch.device (cuda gets its index); ConfigError if unusable here."""
    import torch  # torch: optional, loaded only when used

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(SOURCE, "device", f"not a torch device: {device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(SOURCE, "device", f"{device!r} asked for but CUDA is not available")
        if parsed.index is None:
            parsed = torch.device("cuda", torch.cuda.current_device())
    elif parsed.type != "cpu":
        raise ConfigError(SOURCE, "device", f"must be 'cpu' or 'cuda[:N]' (got {device!r})")
    return parsed


def torch_dtype(dtype: str, device: Any) -> Any:
    """A DTYPES name as a torch dtype ("auto": bfloat16 on CUDA, float32 on the CPU)."""
    import torch  # torch: optional, loaded only when used

    if dtype not in DTYPES:
        raise ConfigError(SOURCE, "dtype", f"must be one of {', '.join(DTYPES)} (got {dtype!r})")
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_model(model: str | Path, device: Any, dtype: Any, seed: int = 0) -> tuple[Any, str]:
    """(causal LM in eval mode on `device`, its name) for a shape name, HF folder or GGUF file.

    A name that is both a named shape and a path is taken as the path. ConfigError (one line)
    for anything unknown or unloadable.
    """
    text = str(model).strip()
    path = Path(text).expanduser()
    if not path.exists():
        try:
            get_shape(text)
        except ValueError:
            if text.lower() not in MODEL_NAMES and path.suffix.lower() != ".gguf":
                raise ConfigError(
                    SOURCE,
                    "model",
                    f"{text!r} is no file, folder or known name; allowed: a Hugging Face model "
                    f"folder, a .gguf file, a shape ({', '.join(SHAPES)}) or a model name "
                    f"({', '.join(sorted(MODEL_NAMES))})",
                ) from None
        else:
            try:
                return build_random_model(text, dtype=dtype, device=device, seed=seed), text
            except MemoryError as exc:
                raise ConfigError(SOURCE, "model", str(exc)) from None
        path = resolve_model(text)
    from transformers import AutoModelForCausalLM  # transformers: optional

    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(SOURCE, "model", f"{path} has no config.json (not a HF folder)")
        kwargs: dict[str, Any] = {}
    else:
        path = resolve_model(str(path))
        kwargs = {"gguf_file": path.name}
        if importlib.util.find_spec("accelerate") is None:
            raise ConfigError(
                SOURCE,
                "model",
                f"loading the GGUF file {path} with transformers needs accelerate "
                "(pip install accelerate), or give a Hugging Face model folder",
            ) from None
        path = path.parent
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(SOURCE, "model", f"cannot load {text}: {message}") from None
    loaded.to(device)
    loaded.eval()
    loaded.requires_grad_(False)
    return loaded, text


class TorchTarget(SessionBook):
    """A transformers target model with per-session KV state and rule-based verification.

    `model`: a named shape (models.shapes, random weights), a Hugging Face folder, a GGUF
    file or known GGUF name, or an already built causal LM (used as is, on its own device and
    dtype). `dtype` "auto": bfloat16 on CUDA, float32 on the CPU. `n_ctx`: most tokens per
    session. `max_verify`: most draft tokens per verification (`n_batch` = max_verify + 1
    positions, the pending token included). `compile_mode`: torch.compile mode for static
    mode's bucket forwards ("auto": "reduce-overhead" on CUDA, none on the CPU; None: none);
    `compile_backend` its backend: "inductor" (fused kernels; the mode applies), "cudagraphs"
    (CUDA graphs of the traced graph, no kernel generation: compiles in seconds), "eager"
    (tracing only, a CPU check). `threads`: torch CPU threads. Each session verifies under
    its own rule (`open(prompt, rule)`: Greedy by default, Synthetic or Sampling).
    """

    supports_rules = True
    """Synthetic and sampling sessions work here (realrun.cloud.server checks this)."""
    max_verify_batch = 1
    """One resident session: verifications run one at a time (`verify_batch` loops)."""

    def __init__(
        self,
        model: str | Path | Any,
        device: str = "cpu",
        dtype: str = "auto",
        mode: str = "static",
        n_ctx: int = 2048,
        max_verify: int = 64,
        compile_mode: str | None = AUTO_COMPILE,
        compile_backend: str = "inductor",
        fullgraph: bool = True,
        threads: int | None = None,
        seed: int = 0,
    ) -> None:
        import torch  # torch: optional, loaded only when used

        if mode not in MODES:
            raise ConfigError(SOURCE, "mode", f"must be one of {', '.join(MODES)} (got {mode!r})")
        for name, value in (("n_ctx", n_ctx), ("max_verify", max_verify)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(SOURCE, name, f"must be an integer >= 1 (got {value!r})")
        if threads is not None:
            torch.set_num_threads(threads)
        if isinstance(model, str | Path):
            self.device = torch_device(device)
            self.model, self.model_name = load_model(
                model, self.device, torch_dtype(dtype, self.device), seed
            )
        else:
            self.model, self.model_name = model, type(model).__name__
            self.device = next(model.parameters()).device
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None)
        if limit is not None and n_ctx > limit:
            raise ConfigError(
                SOURCE, "n_ctx", f"{n_ctx} exceeds the model's max_position_embeddings ({limit})"
            )
        self.mode = mode
        self.n_vocab = int(config.vocab_size)
        self.n_ctx = n_ctx
        self.max_verify = max_verify
        self.n_batch = max_verify + 1
        self.sessions: dict[str, Session] = {}
        self.resident: str | None = None
        self.buckets = verify_buckets(self.n_batch) if mode == "static" else ()
        if compile_mode == AUTO_COMPILE:
            on_gpu = mode == "static" and self.device.type == "cuda"
            compile_mode = "reduce-overhead" if on_gpu else None
        if compile_mode is not None and mode != "static":
            raise ConfigError(SOURCE, "compile_mode", "compilation needs mode 'static'")
        self.compile_mode = compile_mode
        self._step = self._logits_forward
        if mode == "static":
            self._open_static_cache(compile_mode, compile_backend, fullgraph)
        else:
            # transformers: optional, loaded only when used
            from transformers.cache_utils import DynamicCache

            self.cache: Any = DynamicCache()

    # ---------------------------------------------------------------- torch plumbing

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch  # torch: optional, loaded only when used

            torch.cuda.synchronize(self.device)

    def _open_static_cache(
        self, compile_mode: str | None, compile_backend: str, fullgraph: bool
    ) -> None:
        """The StaticCache, initialised in eager code; each bucket compiled and warmed up."""
        import torch  # torch: optional, loaded only when used

        # transformers: optional, loaded only when used
        from transformers.cache_utils import StaticCache

        self.cache = StaticCache(config=self.model.config, max_cache_len=self.n_ctx + self.n_batch)
        with torch.no_grad():
            self._prefill([0])  # allocates the cache tensors outside any compiled region
        if not all(
            isinstance(getattr(layer, "cumulative_length", None), torch.Tensor)
            for layer in self.cache.layers
        ):
            raise ConfigError(
                SOURCE,
                "mode",
                "static needs a transformers whose StaticCache layers keep a tensor "
                "`cumulative_length` (5.x); use mode 'eager'",
            )
        if compile_mode is None:
            self._set_length(0)
            return
        backends = torch._dynamo.list_backends(exclude_tags=())
        if compile_backend not in backends:
            raise ConfigError(
                SOURCE,
                "compile_backend",
                f"must be one of {', '.join(backends)} (got {compile_backend!r})",
            )
        dynamo = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo, name):
                setattr(dynamo, name, max(getattr(dynamo, name), 2 * len(self.buckets)))
                break
        self._step = torch.compile(
            self._logits_forward,
            mode=compile_mode if compile_backend == "inductor" else None,
            backend=compile_backend,
            fullgraph=fullgraph,
            dynamic=False,
        )
        with torch.no_grad():
            for bucket in self.buckets:
                for _ in range(WARMUP_RUNS):
                    self._set_length(0)
                    self._forward([0] * bucket, 0)
        self._set_length(0)

    def _logits_forward(self, ids: Any, positions: Any) -> tuple[Any, Any]:
        """One forward of `ids` at `positions` on the cache: (logits, argmax of every row)."""
        out = self.model(
            input_ids=ids, position_ids=positions, past_key_values=self.cache, use_cache=True
        )
        return out.logits, out.logits.argmax(dim=-1)

    def _forward(self, tokens: list[int], start: int) -> tuple[Any, list[int]]:
        """(logits [1, bucket, vocab] on the device, greedy token after each of `tokens`),
        `tokens` written at cache positions start... The logits are valid until the next
        forward (a CUDA graph replay overwrites them)."""
        import torch  # torch: optional, loaded only when used

        size = len(tokens)
        if self.mode == "static":
            size = next(b for b in self.buckets if b >= len(tokens))
        ids = torch.tensor([tokens + [0] * (size - len(tokens))], device=self.device)
        positions = torch.arange(start, start + size, device=self.device).unsqueeze(0)
        logits, greedy = self._step(ids, positions)
        return logits, greedy[0, : len(tokens)].tolist()

    def _prefill(self, tokens: list[int]) -> None:
        """Write `tokens` at positions 0.. (eager code, last row's logits only)."""
        import torch  # torch: optional, loaded only when used

        self._set_length(0)
        ids = torch.tensor([tokens], device=self.device)
        positions = torch.arange(len(tokens), device=self.device).unsqueeze(0)
        self.model(
            input_ids=ids,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )

    def _set_length(self, n: int) -> None:
        """Keep the first n cache positions (KV rollback)."""
        if self.mode == "static":
            for layer in self.cache.layers:
                layer.cumulative_length.fill_(n)
            return
        extra = self.cache.get_seq_length() - n
        if extra > 0:
            self.cache.crop(-extra)

    def _make_resident(self, sid: str) -> Session:
        session = self.sessions[sid]
        if self.resident != sid:
            import torch  # torch: optional, loaded only when used

            self.resident = None
            with torch.no_grad():
                if session.committed:
                    self._prefill(session.committed)
                else:
                    self._set_length(0)
            self.resident = sid
        return session

    # ---------------------------------------------------------------- sessions

    def open(self, prompt: list[int], rule: Rule | None = None) -> tuple[str, float]:
        """A new session holding `prompt` (all but the last token prefilled), verified under
        `rule` (None: Greedy): (id, ms)."""
        if not prompt or len(prompt) > self.n_ctx:
            raise ValueError(f"prompt must hold 1..{self.n_ctx} tokens (got {len(prompt)})")
        sid = self._add_session(prompt, rule)
        self._sync()
        start = time.perf_counter()
        try:
            self._make_resident(sid)
            self._sync()
        except Exception:
            self.sessions.pop(sid, None)
            self.resident = None
            raise
        return sid, 1e3 * (time.perf_counter() - start)

    def verify(self, sid: str) -> VerifyResult:
        """Verification of everything uploaded since the last verify, under the session rule.

        `target_ms`: the forward and the rule (for sampling, the rows' copies to the host)."""
        import torch  # torch: optional, loaded only when used

        session = self._make_resident(sid)
        drafts = session.uploaded
        base = len(session.committed)
        if len(drafts) > self.max_verify:
            raise ValueError(f"{len(drafts)} draft tokens; at most {self.max_verify} per verify")
        if base + 1 + len(drafts) > self.n_ctx:
            raise ValueError(
                f"session would hold {base + 1 + len(drafts)} tokens; n_ctx is {self.n_ctx}"
            )
        self._set_length(base)  # a top-K outcome may have rolled the session back
        self._sync()
        start = time.perf_counter()
        try:
            with torch.no_grad():
                logits, greedy = self._forward([session.pending, *drafts], base)
        except Exception:
            self.resident = None  # the cache may be half-written: re-prefill next time
            raise

        def rows(j: int) -> Any:
            return logits[0, j].float().cpu().numpy()

        try:
            accepted, token = decide(
                session.rule,
                rows,
                drafts,
                session.generated,
                session.dists,
                argmax=greedy.__getitem__,
            )
        except Exception:
            self._set_length(base)  # e.g. a sampling draft without its distribution
            raise
        elapsed = time.perf_counter() - start
        session.commit(accepted, token)
        self._set_length(len(session.committed))
        return VerifyResult(accepted=accepted, token=token, target_ms=1e3 * elapsed)

    def verify_batch(self, sids: list[str]) -> list[VerifyResult]:
        """Verify sessions one after another (one resident session: no shared forward)."""
        return [self.verify(sid) for sid in sids]

    def drop(self, sid: str) -> None:
        """Forget a session (the cache is re-prefilled if it was the resident one)."""
        self.sessions.pop(sid)
        if self.resident == sid:
            self.resident = None

    def close(self) -> None:
        """Release the model and cache (GPU memory is returned to torch's allocator)."""
        self.sessions.clear()
        self.resident = None
        self.cache = None
        self._step = None
        self.model = None
        if self.device.type == "cuda":
            import torch  # torch: optional, loaded only when used

            torch.cuda.empty_cache()


__all__ = ["MODES", "TorchTarget", "load_model", "torch_device", "torch_dtype", "verify_buckets"]
