"""Record the acceptance of a real draft/target pair: speculative decoding with greedy verification.

`record_acceptance` runs a draft and a target GGUF model that share a tokenizer, both with
llama-cpp-python on the CPU, through speculative decoding on each prompt, and records what the
simulator's acceptance models need:

- per drafted position on the correct prefix: its output position, the draft's confidence (top-1
  softmax probability of the token it drafted, temperature 1) and whether the target accepted
  it. Tokens drafted after the first rejection in a round sit on a wrong prefix: they are not
  recorded (the simulator models them separately);
- per round: how many tokens were drafted and how many the target accepted.

One round, with context C (prompt + output so far; the target has evaluated all of C but its
last token):

1. the draft proposes d_1..d_k greedily (k = min(draft_len, tokens still to generate)), one
   token per `eval`, recording each one's top-1 probability;
2. the target evaluates [last token of C, d_1..d_k] in one `eval` call (one batch) with logits
   for every position; g_i is its greedy (argmax) token after C + d_1..d_{i-1};
3. the longest prefix with d_i == g_i is accepted (a tokens); unless all k were accepted and the
   output is complete, the target's own token g_{a+1} (the correction, or the bonus token after a
   fully accepted draft) is appended too;
4. both KV caches are rolled back to the new context: llama-cpp-python's `Llama.eval` removes
   every cached position >= `n_tokens` (`llama_memory_seq_rm`) before it evaluates, so the
   recorder sets `n_tokens` to the length of the prefix still valid and evaluates from there.

Generation stops after `max_new_tokens` tokens, or at the target's end-of-generation token
(`stop_at_eos`, on by default; the token is kept in the output and nothing after it recorded).

Losslessness and its reference. With greedy verification the output is, by construction, the
sequence of the target's argmax tokens; whether it equals the target's *one-token-at-a-time*
greedy output depends on llama.cpp giving a position the same logits whether it is evaluated
alone or in a batch, which floating point does not promise. Measured here (llama-cpp-python
0.3.36, CPU, SmolLM2-135M Q4_1): with llama.cpp's default attention, batched evaluation
changed logits by up to 1.6 and greedy outputs diverged on 2 of 4 prompts within 12 tokens;
with flash attention the logits were bit-identical for batch sizes 1, 2 and 5. Both models are
therefore loaded with flash attention (`FLASH_ATTENTION`). The lossless reference is defined
through the same evaluation path: `target_greedy` loads the target exactly as the recorder
does (flash attention, logits for every position, same thread count and context size rule),
prefills the prompt but its last token in one batch as the recorder does, then evaluates one
token at a time and takes the argmax. The tests check the recorder's output against it token
for token; `first_mismatch` reports where two outputs part, should another build of llama.cpp
break the batch invariance.

Prompts are formatted with the target's chat template when its GGUF has one (SmolLM2: ChatML
with its default system message), as one user message; otherwise used as raw text.
Prompts and their formatting live in `models.prompts` (families, fitting and held-out splits).

The results live in `calibrate.acceptance_recording`: `write_trace` writes the simulator's replay
trace (columns sequence, position, confidence, accepted; `simulator.acceptance.ReplayTraces.load`
reads it), `samples` gives the `AcceptanceSample`s `calibrate.fit.fit_acceptance` fits, and
`AcceptanceRecording` has the summary statistics (acceptance rates, mean accepted length per
round).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calibrate.acceptance_recording import AcceptanceRecording, PositionRecord, RoundRecord
from models.llama_load import CTX_ROUND, FLASH_ATTENTION, eos_tokens
from models.prompts import format_prompt

CTX_MARGIN = 8
"""Extra context slots beyond prompt + max_new_tokens + draft_len."""


# --------------------------------------------------------------------------------------------
# llama.cpp helpers
# --------------------------------------------------------------------------------------------


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(
            f"record_acceptance: {name} must be an integer >= {minimum} (got {value!r})"
        )
    return int(value)


def _n_ctx(longest_prompt: int, max_new_tokens: int, draft_len: int) -> int:
    need = longest_prompt + max_new_tokens + draft_len + CTX_MARGIN
    return -(-need // CTX_ROUND) * CTX_ROUND


def _load(path: Path, threads: int, n_ctx: int, logits_all: bool) -> Any:
    import llama_cpp  # optional (extra 'models'): llama.cpp only when a model runs

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"record_acceptance: no such model file: {path}")
    return llama_cpp.Llama(
        model_path=str(path),
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=n_ctx,
        logits_all=logits_all,
        flash_attn=FLASH_ATTENTION,
        verbose=False,
        seed=0,
    )


def _softmax_top1(logits: np.ndarray) -> tuple[int, float]:
    """(argmax token, its softmax probability) of one row of logits."""
    row = np.asarray(logits, dtype=np.float64)
    if not np.all(np.isfinite(row)):
        raise RuntimeError("record_acceptance: the draft produced non-finite logits")
    token = int(np.argmax(row))
    return token, 1.0 / float(np.sum(np.exp(row - row[token])))


def _last_logits(llama: Any) -> np.ndarray:
    pointer = llama._ctx.get_logits_ith(-1)
    if not pointer:
        raise RuntimeError("record_acceptance: llama.cpp returned no logits")
    return np.ctypeslib.as_array(pointer, shape=(int(llama.n_vocab()),))


def _advance(llama: Any, tokens: Sequence[int], keep: int) -> None:
    """Make `llama` have evaluated exactly `tokens`, reusing its first `keep` cached positions.

    `keep` must not exceed the positions already evaluated that agree with `tokens`; `eval`
    drops every cached position >= n_tokens before evaluating the rest in one call.
    """
    llama.n_tokens = keep
    rest = list(tokens[keep:])
    if rest:
        llama.eval(rest)


def _common_prefix(llama: Any, tokens: Sequence[int]) -> int:
    cached = llama.input_ids[: llama.n_tokens]
    n = min(len(cached), len(tokens))
    same = 0
    while same < n and int(cached[same]) == tokens[same]:
        same += 1
    return same


def _prefill_target(target: Any, prompt: Sequence[int]) -> None:
    """Evaluate all of the prompt but its last token (kept pending for the first round)."""
    target.reset()
    target._ctx.kv_cache_clear()
    if len(prompt) > 1:
        target.eval(list(prompt[:-1]))


def _target_row(target: Any, position: int) -> int:
    """The target's argmax token after the token at `position` (logits_all scores)."""
    return int(np.argmax(target.scores[position]))


def _target_view(
    target: Any, position: int, token: int, confidence: float, top_k: int
) -> tuple[float, tuple[int, ...], tuple[float, ...]]:
    """At `position`: min(1, p(token)/q) with p the target's softmax (temperature 1) and q the
    draft's probability of `token`; the target's top-`top_k` ids and probabilities."""
    row = np.asarray(target.scores[position], dtype=np.float64)
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    ratio = min(1.0, float(probs[token]) / confidence)
    top_k = min(top_k, probs.size)
    if top_k <= 0:
        return ratio, (), ()
    top = np.argpartition(-probs, top_k - 1)[:top_k]
    top = top[np.argsort(-probs[top], kind="stable")]
    return ratio, tuple(int(t) for t in top), tuple(float(probs[t]) for t in top)


# --------------------------------------------------------------------------------------------
# Speculative decoding with greedy verification
# --------------------------------------------------------------------------------------------


def _speculate(
    draft: Any,
    target: Any,
    sequence: int,
    prompt: list[int],
    max_new_tokens: int,
    draft_len: int,
    eos: set[int],
    positions: list[PositionRecord],
    rounds: list[RoundRecord],
    top_k: int,
) -> list[int]:
    """One prompt through speculative decoding; appends its records; returns the output."""
    draft.reset()
    draft._ctx.kv_cache_clear()
    _prefill_target(target, prompt)
    out: list[int] = []
    done = False
    while not done and len(out) < max_new_tokens:
        context = prompt + out
        start = len(out)
        k = min(draft_len, max_new_tokens - start)

        # 1. Draft k tokens greedily, one eval each, from the longest valid cached prefix.
        _advance(draft, context, min(_common_prefix(draft, context), len(context) - 1))
        proposed: list[int] = []
        confidences: list[float] = []
        for i in range(k):
            token, confidence = _softmax_top1(_last_logits(draft))
            proposed.append(token)
            confidences.append(confidence)
            if i < k - 1:
                draft.eval([token])

        # 2. Verify: the target evaluates [last context token, d_1..d_k] in one batch.
        base = len(context) - 1  # position of the pending last context token
        _advance(target, [*context, *proposed], base)
        greedy = [_target_row(target, base + i) for i in range(k + 1)]

        # 3. Accept the matching prefix; stop at an accepted end-of-generation token.
        accepted = 0
        while accepted < k and proposed[accepted] == greedy[accepted]:
            accepted += 1
            if proposed[accepted - 1] in eos:
                done = True
                break
        on_path = accepted + (1 if not done and accepted < k else 0)
        for i in range(on_path):
            ratio, ids, probs = _target_view(target, base + i, proposed[i], confidences[i], top_k)
            positions.append(
                PositionRecord(
                    sequence,
                    start + i,
                    confidences[i],
                    i < accepted,
                    proposed[i],
                    ratio,
                    ids,
                    probs,
                )
            )
        rounds.append(RoundRecord(sequence, start, k, accepted))
        out.extend(proposed[:accepted])
        if not done and len(out) < max_new_tokens:
            out.append(greedy[accepted])
            done = greedy[accepted] in eos

        # 4. Roll the target back to the accepted context (its last token stays pending).
        target.n_tokens = min(target.n_tokens, len(prompt) + len(out) - 1)
    return out


def record_acceptance(
    draft_path: Path,
    target_path: Path,
    prompts: Sequence[str],
    max_new_tokens: int,
    draft_len: int = 4,
    *,
    threads: int,
    stop_at_eos: bool = True,
    top_k: int = 32,
    progress: Callable[[str], None] | None = None,
) -> AcceptanceRecording:
    """Run the draft/target pair through greedy speculative decoding on each prompt.

    `draft_path` and `target_path` are GGUF files sharing a tokenizer (ValueError if their
    vocabularies or the prompts' tokens differ); `max_new_tokens` >= 1 tokens are generated
    per prompt, `draft_len` >= 1 drafted per round; `threads` limits llama.cpp's threads for
    both models; `top_k` (default 32, 0 for none) target probabilities are kept per recorded
    position. `progress`, if given, receives one line per prompt. See the module docstring
    for what is recorded and how. Needs llama-cpp-python.
    """
    import llama_cpp  # optional (extra 'models'): llama.cpp only when a model runs

    max_new_tokens = _count("max_new_tokens", max_new_tokens, 1)
    draft_len = _count("draft_len", draft_len, 1)
    threads = _count("threads", threads, 1)
    top_k = _count("top_k", top_k, 0)
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("record_acceptance: prompts must be a non-empty sequence of strings")
    say = progress or (lambda _line: None)
    began = time.perf_counter()

    # Tokenise with the target first, to size both contexts the same.
    probe = _load(target_path, threads, CTX_ROUND, logits_all=False)
    try:
        tokenised = [format_prompt(probe, p) for p in prompts]
        target_vocab = int(probe.n_vocab())
    finally:
        probe.close()
    n_ctx = _n_ctx(max(len(t) for t in tokenised), max_new_tokens, draft_len)

    draft = _load(draft_path, threads, n_ctx, logits_all=False)
    target = _load(target_path, threads, n_ctx, logits_all=True)
    try:
        if int(draft.n_vocab()) != target_vocab:
            raise ValueError(
                f"record_acceptance: draft and target do not share a tokenizer (vocabulary "
                f"sizes {int(draft.n_vocab())} and {target_vocab})"
            )
        for text, tokens in zip(prompts, tokenised, strict=True):
            if format_prompt(draft, text) != tokens:
                raise ValueError(
                    f"record_acceptance: draft and target tokenise prompt {text[:40]!r} "
                    f"differently: they do not share a tokenizer"
                )
        eos = eos_tokens(target) if stop_at_eos else set()
        positions: list[PositionRecord] = []
        rounds: list[RoundRecord] = []
        outputs: list[tuple[int, ...]] = []
        for sequence, tokens in enumerate(tokenised):
            n_rounds, n_positions = len(rounds), len(positions)
            out = _speculate(
                draft,
                target,
                sequence,
                tokens,
                max_new_tokens,
                draft_len,
                eos,
                positions,
                rounds,
                top_k,
            )
            outputs.append(tuple(out))
            got = rounds[n_rounds:]
            acc = sum(r.accepted for r in got)
            drafted = sum(r.drafted for r in got)
            say(
                f"prompt {sequence + 1}/{len(tokenised)}: {len(out)} tokens in {len(got)} "
                f"rounds, accepted {acc}/{drafted} drafted, "
                f"{len(positions) - n_positions} positions recorded"
            )
    finally:
        draft.close()
        target.close()
    return AcceptanceRecording(
        draft_path=Path(draft_path),
        target_path=Path(target_path),
        prompts=tuple(prompts),
        prompt_tokens=tuple(tuple(t) for t in tokenised),
        outputs=tuple(outputs),
        positions=tuple(positions),
        rounds=tuple(rounds),
        draft_len=draft_len,
        max_new_tokens=max_new_tokens,
        threads=threads,
        seconds=time.perf_counter() - began,
        llama_cpp_version=str(llama_cpp.__version__),
    )


def target_greedy(
    target_path: Path,
    prompt: str,
    n: int,
    threads: int,
    draft_len: int = 4,
    stop_at_eos: bool = True,
) -> list[int]:
    """The target's own greedy output: the lossless reference (see the module docstring).

    Loaded as `record_acceptance` loads it for this prompt alone (context size from the
    prompt, `n` and `draft_len`; logits for every position), prompt but its last token
    prefilled in one batch, then one token per `eval`, argmax each time; `n` tokens at most,
    stopping after an end-of-generation token when `stop_at_eos`.
    """
    n = _count("n", n, 1)
    threads = _count("threads", threads, 1)
    probe = _load(target_path, threads, CTX_ROUND, logits_all=False)
    try:
        tokens = format_prompt(probe, prompt)
    finally:
        probe.close()
    target = _load(target_path, threads, _n_ctx(len(tokens), n, draft_len), logits_all=True)
    try:
        eos = eos_tokens(target) if stop_at_eos else set()
        _prefill_target(target, tokens)
        out: list[int] = []
        pending = tokens[-1]
        while len(out) < n:
            target.eval([pending])
            pending = _target_row(target, target.n_tokens - 1)
            out.append(pending)
            if pending in eos:
                break
        return out
    finally:
        target.close()


def first_mismatch(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where two token sequences differ (or one ends), None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


__all__ = [
    "first_mismatch",
    "record_acceptance",
    "target_greedy",
]
