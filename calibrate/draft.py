"""Profile the edge draft model on the CPU with llama-cpp-python, thread-limited.

`profile_draft` loads a GGUF model with `n_threads` (and `n_threads_batch`) limited to the
given number and flash attention on (as realrun's edge loads its draft), then measures with
`time.perf_counter`:

- prefill time vs prompt length: for each length L, the KV cache is cleared and a prompt of L
  tokens is evaluated in one `eval` call (llama.cpp splits it into batches of `n_batch` = 512
  tokens, as an application using llama-cpp-python would). `warmup` runs per length come first
  and are discarded; then `repetitions` rounds, each over all lengths in turn (interleaved, so
  a slow drift of the machine spreads over every length instead of biasing one);
- per-token decode time vs context length: for each context length C, C prompt tokens are
  prefilled (not timed) and the state saved; then draft steps are timed, each one
  `eval([token])` plus choosing the next token from the logits (argmax and its softmax
  probability), as the edge (realrun/edge/drafts.py) drafts: with a 49k vocabulary the
  choice costs about 0.3 ms, a tenth of a small draft's step. The steps are taken in *visits*
  (`VISIT_STEPS` back-to-back steps, or one burst): each round visits every context in turn,
  restoring its saved state (KV cache and tokens, `Llama.load_state`), taking one visit's
  steps and saving the state again, so every context's steps continue where they stopped but
  are spread over the whole measurement. Why: this VM's speed drifts by 10-30% within a
  minute, and timing one context after another turned that drift into a fake context
  dependence (a 1.1B draft: 99, 109, 122, 127, 202 ms at contexts 64-1024 in order). The
  first `warmup` steps of each context are discarded; each of the next `repetitions` steps is
  one `DecodeSample` whose `context_len` is the number of tokens already in context (C +
  warmup, C + warmup + 1, ...).
  The top-1 probability of each recorded step (max of the softmax of its logits) is the
  draft's confidence in the token it drafted.
  `burst` > 0 times the steps in the edge's duty cycle instead of back to back: every visit
  is `burst` steps after an idle `pause_s` (an edge drafts a few tokens, then waits for the
  verification). It matters on this VM: a step right after 60 ms of anything else (sleep,
  another model, a busy loop) takes ~16% longer than in a tight loop, and a testbed's draft
  runs at the former speed (docs/validation.md).

Prompt tokens are deterministic: the tokenised text of Python's `this` module (the Zen of
Python), repeated to the length needed. Nothing is made up or slept on: every number is a
measured wall-clock time of this process on this machine, so other load on the machine shows
up in the numbers (the spread in `LengthStats` says how much).

`fit_measurements` fits the profile's `DraftLatency` with `calibrate.fit.fit_draft_latency`.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import io
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibrate.fit import fit_draft_latency
from calibrate.fit_report import FitReport
from calibrate.noise import REMEASURE_PASSES, TYPICAL, Repeated, TimingStats, unstable_warning
from calibrate.samples import AcceptanceSample, DecodeSample, PrefillSample
from calibrate.target_timing import time_prefills
from models.registry import gguf_file_type
from simulator.errors import ConfigError
from simulator.profile import DraftLatency

CTX_MARGIN = 16
"""Extra context slots beyond the longest prompt / context + decode steps measured."""

VISIT_STEPS = 8
"""Decode steps per visit of a context when they are timed back to back (burst mode: `burst`)."""

PROMPT_SOURCE = "the Zen of Python (Python's `this` module), tokenised and repeated"
"""Where the prompt tokens come from, for provenance notes."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthStats(TimingStats):
    """`calibrate.noise.TimingStats` of the repeated measurements at one length (seconds):
    the summary (median: a draft's times vary legitimately on a shared edge device) and the
    noise figures over the runs the outlier rule kept."""

    length: int = 0

    @classmethod
    def at(cls, length: int, stats: TimingStats) -> LengthStats:
        return cls(**dataclasses.asdict(stats), length=int(length))

    def line(self) -> str:
        """One line: median, IQR (relative), range and noise, in milliseconds."""
        return (
            f"{self.length:>6}: median {1e3 * self.median_s:.3f} ms, IQR {1e3 * self.iqr_s:.3f} ms "
            f"({100 * self.relative_spread:.1f}%), range {1e3 * self.min_s:.3f}-"
            f"{1e3 * self.max_s:.3f} ms, n={self.n} ({self.noise_text()})"
        )


@dataclass(frozen=True)
class DraftMeasurements:
    """What `profile_draft` measured, with what it needs for provenance.

    `prefill` holds every kept sample (warm-ups excluded) in measurement order, `decode` every
    kept step grouped by requested context (positions ascending; they were measured
    interleaved); `confidences[i]` is the top-1 probability of the token drafted by decode step
    `decode[i]`.
    `prefill_stats` has one entry per prompt length; `decode_stats` one per requested context
    length C (its samples are at context_len C + warmup ... C + warmup + repetitions - 1).
    """

    model_path: Path
    threads: int
    prefill: tuple[PrefillSample, ...]
    decode: tuple[DecodeSample, ...]
    confidences: tuple[float, ...]
    llama_cpp_version: str
    n_vocab: int
    n_ctx: int
    prefill_stats: tuple[LengthStats, ...] = ()
    decode_stats: tuple[LengthStats, ...] = ()
    repetitions: int = 0
    warmup: int = 0
    burst: int = 0
    pause_s: float = 0.0
    model_description: str = ""
    system_info: str = ""
    prompt_source: str = PROMPT_SOURCE
    n_params: int = 0
    file_type: str = "gguf"
    prefill_rejected: tuple[PrefillSample, ...] = ()
    decode_rejected: tuple[tuple[DecodeSample, float], ...] = ()
    noise: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)

    def sample_rows(self) -> dict[str, list[dict[str, Any]]]:
        """What the draft part stores: the fitted samples, each decode step's confidence, the
        runs the outlier rule rejected (`<name>_rejected`, decode steps with their confidence)
        and the noise rows per prompt length and context (`noise_<name>`)."""
        rows: dict[str, list[dict[str, Any]]] = {
            "prefill": [s.to_row() for s in self.prefill],
            "decode": [s.to_row() for s in self.decode],
            "confidence": [{"confidence": c} for c in self.confidences],
        }
        if self.prefill_rejected:
            rows["prefill_rejected"] = [s.to_row() for s in self.prefill_rejected]
        if self.decode_rejected:
            rows["decode_rejected"] = [
                {**s.to_row(), "confidence": repr(c)} for s, c in self.decode_rejected
            ]
        for name, noise in self.noise.items():
            rows[f"noise_{name}"] = noise
        return rows

    def warnings(self) -> list[str]:
        """One line per part whose configurations stayed unstable (`calibrate.noise`)."""
        lines = (unstable_warning(f"draft {name}", rows) for name, rows in self.noise.items())
        return [line for line in lines if line]

    def acceptance_samples(self, accepted: Sequence[bool]) -> list[AcceptanceSample]:
        """The decoded tokens' confidences paired with a target's verdict on each token.

        The draft alone cannot say whether a target accepts its tokens; the acceptance
        profiler supplies `accepted`, one verdict per decode step (ValueError otherwise).
        """
        if len(accepted) != len(self.confidences):
            raise ValueError(
                f"acceptance_samples: needs one verdict per decoded token "
                f"({len(self.confidences)}), got {len(accepted)}"
            )
        return [
            AcceptanceSample(confidence=c, accepted=a)
            for c, a in zip(self.confidences, accepted, strict=True)
        ]

    def lines(self) -> list[str]:
        """A human-readable summary: setup, then prefill and decode medians and spreads."""
        head = (
            f"{self.model_path.name} ({self.model_description or 'GGUF'}), {self.threads} "
            f"thread(s), llama-cpp-python {self.llama_cpp_version}, n_ctx {self.n_ctx}, "
            f"vocab {self.n_vocab}, {self.repetitions} repetitions after {self.warmup} warm-up"
        )
        lines = [head, "prefill (prompt length):"]
        lines += ["  " + s.line() for s in self.prefill_stats]
        lines.append("decode per token (requested context length):")
        lines += ["  " + s.line() for s in self.decode_stats]
        if self.confidences:
            conf = np.asarray(self.confidences)
            lines.append(
                f"draft top-1 confidence: mean {conf.mean():.3f}, median "
                f"{np.median(conf):.3f}, range {conf.min():.3f}-{conf.max():.3f}, "
                f"n={conf.size}"
            )
        return lines


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"profile_draft: {name} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def _lengths(name: str, values: Any) -> list[int]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ValueError(f"profile_draft: {name} must be a sequence of integers >= 1")
    items = list(values)
    if not items:
        raise ValueError(f"profile_draft: {name} must hold at least one length (got none)")
    out = [_count(f"each of {name}", v, 1) for v in items]
    if len(set(out)) != len(out):
        raise ValueError(f"profile_draft: {name} must be distinct (got {out})")
    return out


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def _zen_text() -> str:
    """The Zen of Python, from the standard library (importing `this` prints it: muted)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this  # prints the Zen of Python when first imported (muted here)
    return codecs.decode(this.s, "rot13")


def _token_stream(llama: Any, length: int) -> list[int]:
    """`length` deterministic token ids: the tokenised Zen of Python, repeated."""
    base = llama.tokenize(_zen_text().encode("utf-8"), add_bos=False, special=False)
    if not base:
        raise RuntimeError("profile_draft: the tokenizer produced no tokens for the prompt text")
    repeats = -(-length // len(base))
    return (list(base) * repeats)[:length]


def _clear(llama: Any) -> None:
    """Empty the KV cache and the token history."""
    llama.reset()
    llama._ctx.kv_cache_clear()


def _last_logits(llama: Any, n_vocab: int) -> np.ndarray:
    """The logits of the last evaluated position (logits_all=False keeps only those).

    llama-cpp-python 0.3.x no longer copies logits into `Llama.scores` unless logits_all is
    set, so they are read from the context (`llama_get_logits_ith(ctx, -1)`).
    """
    pointer = llama._ctx.get_logits_ith(-1)
    if not pointer:
        raise RuntimeError("profile_draft: llama.cpp returned no logits for the last position")
    return np.ctypeslib.as_array(pointer, shape=(n_vocab,)).astype(np.float64)


def _greedy(logits: np.ndarray) -> tuple[int, float]:
    """(argmax token, its softmax probability)."""
    if not np.all(np.isfinite(logits)):
        raise RuntimeError("profile_draft: the model produced non-finite logits")
    token = int(np.argmax(logits))
    probability = 1.0 / float(np.sum(np.exp(logits - logits[token])))
    return token, probability


def _timed_eval(llama: Any, tokens: Sequence[int]) -> float:
    start = time.perf_counter()
    llama.eval(tokens)
    return time.perf_counter() - start


def _load(model_path: Path, threads: int, n_ctx: int) -> Any:
    import llama_cpp  # optional (extra 'models'): llama.cpp only when a model runs

    if not model_path.is_file():
        raise ConfigError("model", "", f"no such file: {model_path} (expected a .gguf file)")
    try:
        return llama_cpp.Llama(
            model_path=str(model_path),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=n_ctx,
            logits_all=False,
            flash_attn=True,
            verbose=False,
            seed=0,
        )
    except ValueError as exc:
        raise ConfigError("model", "", f"llama.cpp cannot load {model_path}: {exc}") from None


def profile_draft(
    model_path: Path,
    threads: int,
    prompt_lengths: Sequence[int],
    context_lengths: Sequence[int],
    repetitions: int = 5,
    warmup: int = 2,
    progress: Callable[[str], None] | None = None,
    burst: int = 0,
    pause_s: float = 0.0,
) -> DraftMeasurements:
    """Measure the draft model's prefill and per-token decode time on the CPU (see module doc).

    `threads` limits llama.cpp's compute threads (decode and batch); `prompt_lengths` and
    `context_lengths` are distinct integers >= 1; `repetitions` >= 1 kept measurements per
    length, after `warmup` >= 0 discarded ones. `progress`, if given, receives one line per
    measured length. `burst` >= 0 and `pause_s` >= 0: the duty cycle of decode steps (0: back
    to back; module docstring). Needs llama-cpp-python (the `models` extra).
    """
    path = Path(model_path)
    threads = _count("threads", threads, 1)
    prompts = _lengths("prompt_lengths", prompt_lengths)
    contexts = _lengths("context_lengths", context_lengths)
    repetitions = _count("repetitions", repetitions, 1)
    warmup = _count("warmup", warmup, 0)
    burst = _count("burst", burst, 0)
    if not (math.isfinite(pause_s) and pause_s >= 0):
        raise ValueError(f"profile_draft: pause_s must be a number >= 0 (got {pause_s!r})")
    say = progress or (lambda _line: None)

    import llama_cpp  # optional (extra 'models'): llama.cpp only when a model runs

    steps = warmup + repetitions
    needed = max(max(prompts), max(contexts) + steps)
    remeasured = max(contexts) + steps + REMEASURE_PASSES * repetitions  # unstable contexts
    llama = _load(path, threads, max(needed, remeasured) + CTX_MARGIN)
    try:
        n_ctx_train = int(llama._model.n_ctx_train())
        if n_ctx_train > 0 and needed > n_ctx_train:
            raise ValueError(
                f"profile_draft: needs {needed} context positions but {path.name} was trained "
                f"for {n_ctx_train}; use shorter prompt/context lengths"
            )
        n_vocab = int(llama.n_vocab())
        tokens = _token_stream(llama, needed)

        say(f"draft: {path.name}, {threads} thread(s), n_ctx {llama.n_ctx()}")

        def prefill_once(length: int) -> float:
            """One prefill of `length` prompt tokens from an empty cache, timed."""
            _clear(llama)
            return _timed_eval(llama, tokens[:length])

        prefill = time_prefills(prefill_once, prompts, warmup, repetitions, say, statistic=TYPICAL)
        decode = _time_decode(llama, tokens, contexts, warmup, repetitions, burst, pause_s, say)
        kept_steps = decode.kept(grouped=True)
        measured = DraftMeasurements(
            model_path=path,
            threads=threads,
            prefill=prefill.kept,
            decode=tuple(sample for sample, _ in kept_steps),
            confidences=tuple(confidence for _, confidence in kept_steps),
            llama_cpp_version=str(llama_cpp.__version__),
            n_vocab=n_vocab,
            n_ctx=int(llama.n_ctx()),
            prefill_stats=tuple(LengthStats.at(n, prefill.stats[n]) for n in prompts),
            decode_stats=tuple(LengthStats.at(c, decode.stats(c)) for c in contexts),
            repetitions=repetitions,
            warmup=warmup,
            burst=burst,
            pause_s=pause_s,
            model_description=str(llama._model.desc()),
            n_params=int(llama._model.n_params()),
            file_type=gguf_file_type(llama),
            system_info=llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
            prefill_rejected=prefill.rejected,
            decode_rejected=tuple(decode.rejected(grouped=True)),
            noise={
                "prefill": prefill.noise,
                "decode": decode.noise_rows(lambda context: {"context": context}),
            },
        )
        for line in measured.warnings():
            say(line)
        return measured
    finally:
        llama.close()


def _time_decode(
    llama: Any,
    tokens: Sequence[int],
    contexts: Sequence[int],
    warmup: int,
    repetitions: int,
    burst: int,
    pause_s: float,
    say: Callable[[str], None],
) -> Repeated[int, tuple[DecodeSample, float]]:
    """Decode steps at every context, interleaved in visits (see the module docstring), then
    unstable contexts re-measured (`calibrate.noise`: more steps, continuing where they
    stopped). Returns the kept steps, (sample, confidence), by requested context."""
    n_vocab = int(llama.n_vocab())
    visit = burst or VISIT_STEPS
    resume: dict[int, tuple[Any, int]] = {}
    for context in contexts:
        _clear(llama)
        llama.eval(list(tokens[:context]))
        resume[context] = (llama.save_state(), _greedy(_last_logits(llama, n_vocab))[0])
    done = dict.fromkeys(contexts, 0)
    steps: Repeated[int, tuple[DecodeSample, float]] = Repeated(contexts, TYPICAL)

    def visits(chosen: Sequence[int], more: int, what: str) -> list[int]:
        """Visit the `chosen` contexts in turn until each has taken `more` steps more."""
        total = {c: done[c] + more for c in chosen}
        rounds = -(-more // visit)
        for rnd in range(rounds):
            for context in chosen:
                state, token = resume[context]
                llama.load_state(state)
                if burst:
                    time.sleep(pause_s)  # the edge waits for its verification
                for _ in range(min(visit, total[context] - done[context])):
                    position = int(llama.n_tokens)
                    start = time.perf_counter()
                    llama.eval([token])
                    token, confidence = _greedy(_last_logits(llama, n_vocab))
                    seconds = time.perf_counter() - start
                    if done[context] >= warmup:
                        sample = DecodeSample(position, seconds)
                        steps.add(context, seconds, (sample, confidence))
                    done[context] += 1
                resume[context] = (llama.save_state(), token)
            say(f"decode{what}: round {rnd + 1}/{rounds} over {len(chosen)} context lengths")
        return list(chosen)

    visits(contexts, warmup + repetitions, "")
    steps.remeasure(
        lambda chosen: visits(chosen, repetitions, " (again)"),
        say,
        lambda context: f"context {context}",
    )
    for context in contexts:
        stats = steps.stats(context)
        say(
            f"decode: context {context}, median {1e3 * stats.median_s:.3f} ms/token "
            f"({stats.noise_text()})"
        )
    return steps


def fit_measurements(m: DraftMeasurements) -> tuple[DraftLatency, dict[str, FitReport]]:
    """The profile's draft latency model and its fit reports ("prefill", "decode")."""
    return fit_draft_latency(m.prefill, m.decode)


__all__ = [
    "CTX_MARGIN",
    "DraftMeasurements",
    "LengthStats",
    "fit_measurements",
    "profile_draft",
]
