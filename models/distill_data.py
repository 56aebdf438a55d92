"""Training data for distillation: offline instruction prompts and the target's own labels.

`stdlib_prompts(n, seed)` builds instruction prompts from the Python standard library on disk
(docstrings, module and function names, words of docstrings), deterministic under `seed`,
never one of the acceptance evaluation prompts (`models.prompts.DEFAULT_PROMPTS`).

`label_prompts(target, prompts, ...)` runs the target GGUF through llama.cpp exactly as the
acceptance recorder does (flash attention, same chat formatting): it generates each prompt's
greedy continuation and keeps, at every position of prompt + continuation, the target's top-k
token ids and logits (from one batch with all logit rows for the prompt, then one row per
generated token). Row i is the target's prediction after tokens[:i+1]; its first entry is the
argmax, so on the continuation row i's top-1 is tokens[i+1].
"""

from __future__ import annotations

import ast
import os
import random
import re
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.llama_load import CTX_ROUND, FLASH_ATTENTION, eos_tokens
from models.prompts import DEFAULT_PROMPTS, format_prompt

SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})
"""Standard-library folders not used (installed packages, test suites)."""

DOC_TEMPLATES = (
    "Explain in simple terms what this Python documentation says:\n\n{doc}",
    "Summarise the following text in two sentences:\n\n{doc}",
    "Rewrite this description so that a beginner understands it:\n\n{doc}",
)
NAME_TEMPLATES = (
    "What does {name} in Python's {module} module do?",
    "Write a short Python example that uses the {module} module.",
)
TOPIC_TEMPLATES = (
    "Write a short poem about {topic}.",
    "Tell a short story about {topic}.",
    "Give three tips about {topic}.",
    "Explain {topic} to a ten-year-old.",
    "Write a polite email about {topic}.",
    "What are the main uses of {topic}?",
    "Describe {topic} in a few sentences.",
    "List the steps to learn about {topic}.",
)
"""Prompt templates: documentation passages, names, and single words as topics."""

WORD = re.compile(r"^[a-z]{5,12}$")


@dataclass(frozen=True)
class Docstring:
    module: str
    name: str
    text: str


def stdlib_root() -> Path:
    """The standard library's folder (`sysconfig.get_paths()["stdlib"]`)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("__"))
        files += [Path(folder) / n for n in sorted(names) if n.endswith(".py")]
    return files


def _docstrings(path: Path, root: Path) -> list[Docstring]:
    """Module, top-level class and function docstrings of one file (first paragraph)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    nodes: list[Any] = [tree]
    nodes += [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    found = []
    for node in nodes:
        doc = ast.get_docstring(node)
        if not doc:
            continue
        paragraph = " ".join(doc.split("\n\n")[0].split())
        if 40 <= len(paragraph) <= 400 and not node_is_private(node):
            name = module if isinstance(node, ast.Module) else f"{module}.{node.name}"
            found.append(Docstring(module, name, paragraph))
    return found


def node_is_private(node: Any) -> bool:
    """True for a class or function whose name starts with an underscore."""
    return getattr(node, "name", "x").startswith("_")


def stdlib_prompts(n: int, seed: int, root: Path | None = None) -> list[str]:
    """`n` distinct instruction prompts from the standard library, deterministic under `seed`.

    Files are visited in a seeded order until enough docstrings are found; each prompt takes a
    template in turn (documentation, name, topic), a docstring and, for topics, one of its
    words. The acceptance evaluation prompts are never produced (checked).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of prompts must be a positive integer (got {n!r})")
    root = Path(root) if root is not None else stdlib_root()
    rng = random.Random(seed)
    files = _stdlib_files(root)
    rng.shuffle(files)
    docs: list[Docstring] = []
    for path in files:
        docs += _docstrings(path, root)
        if len(docs) >= 2 * n:
            break
    if not docs:
        raise ValueError(f"no usable docstrings found under {root}")
    templates = [*DOC_TEMPLATES, *NAME_TEMPLATES, *TOPIC_TEMPLATES]
    prompts: list[str] = []
    seen = set(DEFAULT_PROMPTS)
    attempts = 0
    while len(prompts) < n and attempts < 20 * n:
        attempts += 1
        doc = rng.choice(docs)
        template = templates[attempts % len(templates)]
        words = [w for w in doc.text.lower().split() if WORD.match(w)]
        topic = rng.choice(words) if words else doc.module.split(".")[-1]
        prompt = template.format(doc=doc.text, name=doc.name, module=doc.module, topic=topic)
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    if len(prompts) < n:
        raise ValueError(f"only {len(prompts)} distinct prompts could be built (asked for {n})")
    return prompts


@dataclass(frozen=True)
class Labels:
    """Per sequence: its tokens (prompt + greedy continuation), the prompt's length, and for
    each position but the last the target's top-k ids and logits (descending; top-1 = argmax)."""

    tokens: tuple[np.ndarray, ...]
    n_prompt: tuple[int, ...]
    topk_ids: tuple[np.ndarray, ...]
    topk_logits: tuple[np.ndarray, ...]

    def save(self, path: Path, meta: str) -> None:
        """Write an .npz (sequences concatenated, with offsets) holding `meta` (JSON text)."""
        lengths = np.array([len(t) for t in self.tokens], dtype=np.int64)
        np.savez_compressed(
            path,
            meta=np.array(meta),
            lengths=lengths,
            n_prompt=np.array(self.n_prompt, dtype=np.int64),
            tokens=np.concatenate(self.tokens).astype(np.int32),
            topk_ids=np.concatenate(self.topk_ids).astype(np.int32),
            topk_logits=np.concatenate(self.topk_logits).astype(np.float32),
        )

    @staticmethod
    def load(path: Path) -> tuple[Labels, str]:
        """Read what `save` wrote: (labels, meta)."""
        data = np.load(path)
        lengths = data["lengths"]
        token_ends = np.cumsum(lengths)[:-1]
        row_ends = np.cumsum(lengths - 1)[:-1]
        labels = Labels(
            tokens=tuple(np.split(data["tokens"], token_ends)),
            n_prompt=tuple(int(v) for v in data["n_prompt"]),
            topk_ids=tuple(np.split(data["topk_ids"], row_ends)),
            topk_logits=tuple(np.split(data["topk_logits"], row_ends)),
        )
        return labels, str(data["meta"])

    @property
    def n_rows(self) -> int:
        return sum(len(t) - 1 for t in self.tokens)

    @property
    def n_generated(self) -> int:
        return sum(len(t) - p for t, p in zip(self.tokens, self.n_prompt, strict=True))


def _top_k(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids by logit, descending, the argmax (lowest id among ties) first."""
    best = int(np.argmax(row))
    part = np.argpartition(row, -k)[-k:]
    order = part[np.argsort(-row[part], kind="stable")]
    order = np.concatenate(([best], order[order != best]))[:k]
    return order.astype(np.int32), row[order].astype(np.float32)


class _Target:
    """The target in llama.cpp with all-logit batches (as realrun's LlamaTarget evaluates)."""

    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        import llama_cpp  # optional (extra 'models'): llama.cpp only when a model runs

        self.llama: Any = llama_cpp.Llama(
            model_path=str(path),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=n_ctx,
            logits_all=False,
            flash_attn=FLASH_ATTENTION,
            verbose=False,
            seed=0,
        )
        self.n_vocab = int(self.llama.n_vocab())

    def decode(self, tokens: list[int]) -> list[np.ndarray]:
        """Evaluate `tokens` after the cache; one logit row (a copy) per token."""
        llama, rows = self.llama, []
        for i in range(0, len(tokens), llama.n_batch):
            batch = tokens[i : i + llama.n_batch]
            llama._batch.set_batch(batch=batch, n_past=llama.n_tokens, logits_all=True)
            llama._ctx.decode(llama._batch)
            llama.n_tokens += len(batch)
            for j in range(len(batch)):
                pointer = llama._ctx.get_logits_ith(j)
                rows.append(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy())
        return rows

    def reset(self) -> None:
        self.llama.reset()
        self.llama._ctx.kv_cache_clear()


def label_prompts(
    target_path: Path,
    prompts: list[str],
    max_new_tokens: int,
    threads: int,
    top_k: int,
    progress: Callable[[str], None] | None = None,
) -> Labels:
    """The target's greedy continuations and top-k logits at every position (module docstring).

    Each continuation stops after `max_new_tokens` tokens or at an end-of-generation token
    (kept). Needs llama-cpp-python.
    """
    say = progress or (lambda _line: None)
    target = _Target(target_path, threads, CTX_ROUND)
    tokenised = [format_prompt(target.llama, p) for p in prompts]
    eos = eos_tokens(target.llama)
    target.llama.close()
    need = max(len(t) for t in tokenised) + max_new_tokens + 1
    target = _Target(target_path, threads, -(-need // CTX_ROUND) * CTX_ROUND)
    tokens_out, n_prompt, ids_out, logits_out = [], [], [], []
    began = time.perf_counter()
    try:
        for s, prompt in enumerate(tokenised):
            target.reset()
            rows = target.decode(prompt)
            sequence = list(prompt)
            for _ in range(max_new_tokens):
                token = int(np.argmax(rows[-1]))
                sequence.append(token)
                if token in eos or len(sequence) - len(prompt) >= max_new_tokens:
                    break
                rows += target.decode([token])
            tops = [_top_k(row, top_k) for row in rows[: len(sequence) - 1]]
            tokens_out.append(np.array(sequence, dtype=np.int32))
            n_prompt.append(len(prompt))
            ids_out.append(np.stack([t[0] for t in tops]))
            logits_out.append(np.stack([t[1] for t in tops]))
            if (s + 1) % 10 == 0 or s + 1 == len(tokenised):
                elapsed = time.perf_counter() - began
                eta = elapsed / (s + 1) * (len(tokenised) - s - 1)
                say(f"labelled {s + 1}/{len(tokenised)} prompts ({elapsed:.0f} s, ETA {eta:.0f} s)")
    finally:
        target.llama.close()
    return Labels(tuple(tokens_out), tuple(n_prompt), tuple(ids_out), tuple(logits_out))


__all__ = ["Labels", "label_prompts", "stdlib_prompts", "stdlib_root"]
