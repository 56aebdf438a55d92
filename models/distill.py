"""Distil a shallow draft for a llama GGUF target on offline text (`pipesd calibrate distill`).

Steps (each deterministic under the seed; torch on the CPU, single process):

1. prompts: `models.distill_data.stdlib_prompts` (instructions built from the standard
   library; never the acceptance evaluation prompts);
2. labels: the target's greedy continuations and its top-k logits at every position, through
   llama.cpp as the acceptance recorder runs it (`label_prompts`), cached in `OUT.labels.npz`
   and reused when target, prompts and settings match;
3. student: the target's embeddings and tied head (frozen), final norm and `layers` of its
   blocks (`models.distill_model.Student`); trained with AdamW (cosine schedule) on
   loss = cross-entropy on the target's argmax + cross-entropy on its top-k distribution
   (renormalised), over every position after the prefix all sequences share (the system
   prompt); the softmax runs over the batch's top-k ids plus `negatives` uniformly drawn
   tokens (0: the whole vocabulary), which makes the tied head's cost small; a held-out 5%
   of the sequences measures top-1 agreement with the target;
4. export: a GGUF (`export_gguf`) sharing the target's tokenizer, plus `OUT.recipe.json`
   (command, data, sizes, hyper-parameters, loss curve, agreement, wall time, versions).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.distill_data import Labels, label_prompts, stdlib_prompts, stdlib_root
from simulator.provenance import package_versions

QUANTS = ("f32", "f16", "q8_0")
"""Types the student's block matrices are exported in (norms stay F32; `export_gguf`)."""

HOLDOUT_FRACTION = 0.05
"""Share of the labelled sequences kept out of training to measure agreement."""


@dataclass(frozen=True)
class DistillConfig:
    """Everything a distillation run depends on (recorded in the recipe)."""

    layers: tuple[int, ...]
    steps: int
    seed: int = 0
    n_prompts: int = 256
    max_new_tokens: int = 64
    top_k: int = 8
    lr: float = 5e-4
    batch_tokens: int = 2048
    negatives: int = 2048
    threads: int = 2
    quant: str = "q8_0"

    def check(self, n_layer: int) -> None:
        """ValueError naming the first bad field."""
        positive = ("steps", "n_prompts", "max_new_tokens", "top_k", "batch_tokens", "threads")
        if isinstance(self.negatives, bool) or not isinstance(self.negatives, int):
            raise ValueError(f"negatives must be an integer >= 0 (got {self.negatives!r})")
        if self.negatives < 0:
            raise ValueError(f"negatives must be an integer >= 0 (got {self.negatives!r})")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer (got {value!r})")
        if self.n_prompts < 2:
            raise ValueError(f"n_prompts must be at least 2 (got {self.n_prompts})")
        if not (isinstance(self.lr, float) and 0 < self.lr < 1):
            raise ValueError(f"lr must be in (0, 1) (got {self.lr!r})")
        if self.quant not in QUANTS:
            raise ValueError(f"quant must be one of {', '.join(QUANTS)} (got {self.quant!r})")
        if not self.layers or any(not 0 <= i < n_layer for i in self.layers):
            raise ValueError(
                f"layers must be block indices in [0, {n_layer - 1}] (got {list(self.layers)})"
            )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_labels(
    target: Path, config: DistillConfig, path: Path, say: Callable[[str], None]
) -> tuple[Labels, dict[str, Any]]:
    """The labels for `config` (module docstring, step 2): read from `path` if it holds the
    same target, prompts and settings, else computed and written there."""
    meta = {
        "target_sha256": sha256(target),
        "prompts": {
            "source": "python-stdlib-docstrings",
            "n": config.n_prompts,
            "seed": config.seed,
            "stdlib": str(stdlib_root()),
        },
        "max_new_tokens": config.max_new_tokens,
        "top_k": config.top_k,
        "llama_cpp_python": package_versions(["llama-cpp-python"])["llama-cpp-python"],
    }
    if path.is_file():
        labels, stored = Labels.load(path)
        if json.loads(stored) == meta:
            say(f"labels: reusing {path} ({len(labels.tokens)} sequences)")
            return labels, {**meta, "reused": str(path)}
    prompts = stdlib_prompts(config.n_prompts, config.seed)
    say(f"labels: {len(prompts)} prompts through the target ({target.name}) ...")
    began = time.perf_counter()
    labels = label_prompts(
        target, prompts, config.max_new_tokens, config.threads, config.top_k, progress=say
    )
    meta["seconds"] = round(time.perf_counter() - began, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels.save(path, json.dumps({k: v for k, v in meta.items() if k != "seconds"}))
    return labels, meta


def _shared_prefix(tokens: tuple[np.ndarray, ...]) -> int:
    """Length of the token prefix every sequence starts with (the chat template's header)."""
    first = tokens[0]
    n = min(len(t) for t in tokens) - 1
    for t in tokens[1:]:
        same = np.nonzero(t[:n] != first[:n])[0]
        n = int(same[0]) if same.size else n
    return n


class _Batches:
    """Padded training batches of whole sequences, drawn in a seeded order; a budget beyond
    the data's size takes every sequence once (never the same sequence twice in a batch)."""

    def __init__(self, labels: Labels, indices: list[int], start: int, budget: int, seed: int):
        total = sum(len(labels.tokens[i]) - 1 for i in indices)
        self.labels, self.indices, self.start = labels, indices, start
        self.budget = min(budget, total)
        self.rng = random.Random(seed)
        self.queue: list[int] = []

    def next(self) -> tuple[Any, ...]:
        chosen: list[int] = []
        used = 0
        while not chosen or used < self.budget:
            if not self.queue:
                self.queue = list(self.indices)
                self.rng.shuffle(self.queue)
            index = self.queue.pop()
            chosen.append(index)
            used += len(self.labels.tokens[index]) - 1
        return collate(self.labels, chosen, self.start)


def collate(labels: Labels, chosen: list[int], start: int) -> tuple[Any, ...]:
    """Inputs [B, T] (padded with 0), a mask of the rows trained on (positions >= start, not
    padding), and for those rows the top-k ids and logits, in mask order."""
    import torch  # optional (extra 'models'): loaded only when used

    width = max(len(labels.tokens[i]) - 1 for i in chosen)
    inputs = torch.zeros((len(chosen), width), dtype=torch.long)
    mask = torch.zeros((len(chosen), width), dtype=torch.bool)
    ids, logits = [], []
    for row, i in enumerate(chosen):
        n = len(labels.tokens[i]) - 1
        inputs[row, :n] = torch.from_numpy(labels.tokens[i][:n].astype(np.int64))
        mask[row, start:n] = True
        ids.append(labels.topk_ids[i][start:n])
        logits.append(labels.topk_logits[i][start:n])
    return (
        inputs,
        mask,
        torch.from_numpy(np.concatenate(ids).astype(np.int64)),
        torch.from_numpy(np.concatenate(logits).astype(np.float32)),
    )


def losses(
    student: Any, batch: tuple[Any, ...], candidates: Any | None = None
) -> tuple[Any, Any, Any]:
    """(hard CE on the target's argmax, soft CE on its top-k distribution, top-1 agreement).

    With `candidates` (sorted token ids holding every top-k id of the batch) the softmax runs
    over those tokens only (a sampled softmax: the head's cost falls from the vocabulary to
    the candidates); without, over the whole vocabulary.
    """
    import torch  # optional (extra 'models'): loaded only when used

    inputs, mask, ids, logits = batch
    hidden = student.hidden(inputs)[mask]
    if candidates is None:
        log_q = torch.log_softmax(student.logits(hidden), dim=-1)
    else:
        log_q = torch.log_softmax(hidden @ student.token_embd[candidates].T, dim=-1)
        ids = torch.searchsorted(candidates, ids)
    hard = -log_q.gather(1, ids[:, :1]).mean()
    p = torch.softmax(logits, dim=-1)
    soft = -(p * log_q.gather(1, ids)).sum(-1).mean()
    agree = (log_q.argmax(-1) == ids[:, 0]).float().mean()
    return hard, soft, agree


def sample_candidates(ids: Any, negatives: int, n_vocab: int, generator: Any) -> Any:
    """Sorted unique token ids: every id in `ids` plus `negatives` drawn uniformly."""
    import torch  # optional (extra 'models'): loaded only when used

    drawn = torch.randint(0, n_vocab, (negatives,), generator=generator)
    return torch.unique(torch.cat((ids.flatten(), drawn)))


def evaluate(student: Any, labels: Labels, indices: list[int], start: int) -> dict[str, float]:
    """Held-out hard loss and top-1 agreement with the target, one sequence at a time."""
    import torch  # optional (extra 'models'): loaded only when used

    rows = hard_sum = agree_sum = 0.0
    with torch.no_grad():
        for i in indices:
            hard, _soft, agree = losses(student, collate(labels, [i], start))
            n = len(labels.tokens[i]) - 1 - start
            rows, hard_sum, agree_sum = (
                rows + n,
                hard_sum + n * hard.item(),
                agree_sum + n * agree.item(),
            )
    return {"hard_ce": hard_sum / rows, "top1_agreement": agree_sum / rows, "positions": int(rows)}


def window(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean hard CE, soft CE and agreement over some steps of the loss curve."""
    return {k: float(np.mean([r[k] for r in rows])) for k in ("hard_ce", "soft_ce", "agreement")}


def distill(
    target: Path,
    out: Path,
    config: DistillConfig,
    command: str,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the whole distillation (module docstring); returns the recipe (also written to
    `OUT.recipe.json`). ValueError for a bad configuration or target."""
    import torch  # optional (extra 'models'): loaded only when used

    # loads torch (optional) when imported
    from models.distill_model import Student, block_count, export_gguf, read_llama

    say = progress or (lambda _line: None)
    began = time.perf_counter()
    config.check(block_count(target))
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    out = Path(out)
    labels, data = build_labels(target, config, out.with_suffix(".labels.npz"), say)
    order = list(range(len(labels.tokens)))
    random.Random(config.seed).shuffle(order)
    n_held = max(1, round(HOLDOUT_FRACTION * len(order)))
    held, train = sorted(order[:n_held]), sorted(order[n_held:])
    start = _shared_prefix(labels.tokens)
    weights = read_llama(target, list(config.layers))
    student = Student.from_target(weights, list(config.layers))
    params = [p for p in student.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    warmup = max(1, min(20, config.steps // 10))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, config.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    before = evaluate(student, labels, held, start)
    say(f"held-out agreement before training: {before['top1_agreement']:.3f}")
    batches = _Batches(labels, train, start, config.batch_tokens, config.seed)
    curve: list[dict[str, float]] = []
    train_began = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    n_vocab = weights.hyper.n_vocab
    for step in range(config.steps):
        batch = batches.next()
        candidates = (
            sample_candidates(batch[2], config.negatives, n_vocab, generator)
            if config.negatives
            else None
        )
        hard, soft, agree = losses(student, batch, candidates)
        optimiser.zero_grad(set_to_none=True)
        (hard + soft).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        scheduler.step()
        curve.append(
            {
                "step": step + 1,
                "hard_ce": hard.item(),
                "soft_ce": soft.item(),
                "agreement": agree.item(),
            }
        )
        if (step + 1) % 10 == 0 or step + 1 == config.steps:
            elapsed = time.perf_counter() - train_began
            eta = elapsed / (step + 1) * (config.steps - step - 1)
            recent = window(curve[-10:])
            say(
                f"step {step + 1}/{config.steps}: hard CE {recent['hard_ce']:.3f}, "
                f"agreement {recent['agreement']:.3f} ({elapsed:.0f} s, ETA {eta:.0f} s)"
            )
    train_seconds = time.perf_counter() - train_began
    after = evaluate(student, labels, held, start)
    say(f"held-out agreement after training: {after['top1_agreement']:.3f}")
    export_gguf(student, target, out, config.quant)

    tenth = max(1, len(curve) // 10)
    recipe = {
        "command": command,
        "output": {"gguf": str(out), "sha256": sha256(out), "bytes": out.stat().st_size},
        "target": {
            "gguf": str(target),
            "sha256": data["target_sha256"],
            "blocks": weights.hyper.n_layer,
        },
        "student": {
            "blocks": len(config.layers),
            "init_from_target_blocks": list(config.layers),
            "frozen": "token_embd (tied head), copied byte for byte",
            "trained": "blocks and output_norm",
            "quant": config.quant,
        },
        "data": {
            **data,
            "sequences": len(labels.tokens),
            "train_sequences": len(train),
            "heldout_sequences": len(held),
            "positions": labels.n_rows,
            "generated_tokens": labels.n_generated,
            "shared_prefix_skipped": start,
        },
        "training": {
            "steps": config.steps,
            "lr": config.lr,
            "schedule": f"linear warm-up {warmup} steps, cosine to 0",
            "optimiser": "AdamW, wd 0",
            "batch_tokens": config.batch_tokens,
            "loss": "hard CE + soft CE (top-k)",
            "softmax": (
                f"over the batch's top-k ids + {config.negatives} uniform negatives"
                if config.negatives
                else "full vocabulary"
            ),
            "top_k": config.top_k,
            "seed": config.seed,
            "threads": config.threads,
            "grad_clip": 1.0,
            "seconds": round(train_seconds, 1),
        },
        "loss_curve": {
            "first_10pct": window(curve[:tenth]),
            "last_10pct": window(curve[-tenth:]),
            "every_10th_step": curve[9::10],
        },
        "heldout": {"before": before, "after": after},
        "wall_seconds": round(time.perf_counter() - began, 1),
        "versions": package_versions(["torch", "numpy", "gguf", "llama-cpp-python"]),
    }
    recipe_path = out.with_suffix(".recipe.json")
    recipe_path.write_text(json.dumps(recipe, indent=2) + "\n")
    return recipe


__all__ = ["QUANTS", "DistillConfig", "build_labels", "distill", "evaluate"]
