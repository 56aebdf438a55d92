"""Time a target as the cloud server serves it: through its session methods only.

Any backend with the server's target interface (`open(prompt) -> (sid, ms)`, `upload(sid,
tokens, probs)`, `verify(sid) -> VerifyResult`, `drop(sid)`, `n_vocab`: realrun.cloud.llama_target's
LlamaTarget, realrun.cloud.torch_target's TorchTarget) is measured the same way, so every time is
the server's own measurement of its own calls:

- prefill time vs prompt length P: `open(prompt of P tokens)` prefills P - 1 tokens (the last
  one stays pending, as the server does) and returns its time; then `drop`. The sample's
  prompt_len is P, the length the simulator's `prefill_s` is given. `warmup` runs per length
  are discarded, then `repetitions` rounds over all lengths in turn (interleaved);
- verification time vs tokens verified n (positions evaluated: the pending token and n - 1
  drafts, so n = 1 is an autoregressive step) and context c: a session is opened on a prompt
  of c + 1 tokens (untimed setup), then one `upload(n - 1 drafts)` + `verify` per token count
  in turn; the sample is `verify`'s `target_ms` at the context the cache held before it (each
  verification commits the pending token and the accepted drafts, so the next one starts a
  little later: c, c + 1, ...; the samples carry the actual context). One round is one fresh
  session per context; the first `warmup` rounds are discarded, then `repetitions` rounds are
  kept (interleaved over contexts and token counts, so a drift of the machine spreads over all).

Times are the target's own (`target_ms`, wall clock) with `clock="wall"`; with
`clock="cpu"`, CPU time around each call: the calling thread's (`time.thread_time`) when the
target computes on one thread (llama.cpp and torch then compute on the caller's thread), else
the process's (`time.process_time`) divided by the threads. On one thread it is the time a
dedicated core would take, with none of the waiting a busy machine adds (on this VM under two
CPU hogs, a 16-token prefill of the tiny test model took 40-66 ms by the wall clock and
9.4-9.8 ms of CPU time, 9.4-9.7 ms quiet; the tiny torch target fitted within 14% of its
quiet fit). Not everywhere: LlamaTarget's verifications still took about 2x the CPU time under
the hogs (cause not established). With several threads, spinning threads make it only an
approximation;
`resolve_clock("auto", ...)` picks "cpu" for one CPU thread, "wall" otherwise. The profilers
default to "wall": `validate --recalibrate` measures the machine as its real run will find
it, contention included.

Both are best-case service times (a server that does nothing else): each configuration's
times go through `calibrate.noise` (outliers above median + 3 sigma rejected, summarised by
the minimum, CV recorded; an unstable configuration's whole context, or prompt length, is
re-measured at most twice, and what stays unstable is named in a warning line).

Token ids are random (seeded): latency does not depend on them, and random drafts are almost
never accepted, so each verification does what a rejected NAV does.

Energy, two ways (`energy_window_s`):
- None: the meter is read around every kept verification (RAPL: it updates about every
  millisecond, fine enough for one forward);
- a number: after the timed rounds, for each token count at the middle context, verifications
  are repeated for a window of at least that many seconds, until the counter has moved
  (calibrate.target's windows: NVML's counter advances in steps of tens of milliseconds). The
  session is reopened whenever its context has grown by `WINDOW_CONTEXT_SLACK`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from calibrate.noise import BEST_CASE, CLOCKS, Repeated, TimingStats
from calibrate.samples import ForwardSample, PrefillSample
from calibrate.target_results import VerificationRun
from calibrate.target_timing import _energy_window, time_prefills
from realrun.cloud.energy import EnergyMeter

AUTO_CLOCK = "auto"
"""`clock` default: "cpu" on a CPU target computing on one thread, "wall" otherwise."""


def resolve_clock(clock: str, device_type: str, threads: int | None) -> str:
    """The clock `time_served` reads (see the module docstring); ValueError for an unknown
    one, or "cpu" on a GPU (its work is not this process's CPU time)."""
    if clock == AUTO_CLOCK:
        return "cpu" if device_type == "cpu" and threads == 1 else "wall"
    if clock not in CLOCKS:
        allowed = ", ".join([AUTO_CLOCK, *CLOCKS])
        raise ValueError(f"clock must be one of {allowed} (got {clock!r})")
    if clock == "cpu" and device_type != "cpu":
        raise ValueError(f"clock 'cpu' times CPU work; the target is on {device_type}: use wall")
    return clock


WINDOW_CONTEXT_SLACK = 64
"""How far an energy window's session may grow past its context before it is reopened."""


@dataclass(frozen=True)
class ServedTimings:
    """What `time_served` measured: samples (kept and rejected by the outlier rule),
    per-configuration runs, noise rows ("prefill", "forward"), idle power."""

    prefill: tuple[PrefillSample, ...]
    prefill_stats: dict[int, TimingStats]
    forward: tuple[ForwardSample, ...]
    runs: tuple[VerificationRun, ...]
    energy_method: str | None
    idle_w: float | None
    idle_method: str | None
    idle_unavailable: str | None
    prefill_rejected: tuple[PrefillSample, ...] = ()
    forward_rejected: tuple[ForwardSample, ...] = ()
    noise: dict[str, list[dict[str, Any]]] | None = None
    clock: str = "wall"

    def measurement_fields(self) -> dict[str, Any]:
        """The TargetMeasurements fields these timings fill."""
        return {
            "prefill": self.prefill,
            "forward": self.forward,
            "prefill_stats": self.prefill_stats,
            "runs": self.runs,
            "energy_method": self.energy_method,
            "idle_w": self.idle_w,
            "idle_method": self.idle_method,
            "idle_unavailable": self.idle_unavailable,
            "prefill_rejected": self.prefill_rejected,
            "forward_rejected": self.forward_rejected,
            "noise": dict(self.noise or {}),
            "clock": self.clock,
        }


def served_needs(
    contexts: Sequence[int], tokens: Sequence[int], prompts: Sequence[int], windows: bool = False
) -> int:
    """Positions one session may need: the largest context plus every token count verified in
    turn (with energy `windows`, their slack), or the largest prompt."""
    grown = sum(tokens) + (WINDOW_CONTEXT_SLACK + max(tokens) if windows else 0)
    return max(max(contexts) + grown, max(prompts))


def time_served(
    target: Any,
    tokens: Sequence[int],
    contexts: Sequence[int],
    prompts: Sequence[int],
    repetitions: int,
    warmup: int,
    meter: EnergyMeter | None,
    meter_reason: str | None,
    say: Callable[[str], None],
    seed: int,
    idle_window_s: float = 2.0,
    energy_window_s: float | None = None,
    clock: str = "wall",
    threads: int = 1,
) -> ServedTimings:
    """Measure `target` through its session methods (see the module docstring). `clock`:
    "wall" (the target's own target_ms) or "cpu" (the calling thread's CPU time around each
    call with one thread, else the process's / `threads`)."""
    if clock not in CLOCKS:
        raise ValueError(f"time_served: clock must be one of {', '.join(CLOCKS)} (got {clock!r})")
    rng = np.random.default_rng(seed)

    cpu_time = time.thread_time if threads == 1 else time.process_time

    def timed(call: Callable[[], Any], wall_ms: Callable[[Any], float]) -> tuple[Any, float]:
        """(the call's result, its seconds on `clock`)."""
        cpu_start = cpu_time()
        result = call()
        if clock == "cpu":
            return result, (cpu_time() - cpu_start) / threads
        return result, wall_ms(result) / 1e3

    def ids(n: int) -> list[int]:
        return [int(t) for t in rng.integers(0, target.n_vocab, n)]

    idle_w = idle_method = None
    idle_reason = meter_reason
    if meter is not None:
        start_j, start_t = meter.read_j(), time.perf_counter()
        time.sleep(idle_window_s)
        idle_j, idle_t = meter.read_j() - start_j, time.perf_counter() - start_t
        idle_reason = f"{meter.name()} did not advance over {idle_t:.2f} s"
        if idle_j > 0:
            idle_w, idle_reason = idle_j / idle_t, None
            idle_method = f"{meter.name()} over a {idle_t:.2f} s quiet window"

    def prefill_once(length: int) -> float:
        prompt = ids(length)
        (sid, _), seconds = timed(lambda: target.open(prompt), lambda opened: opened[1])
        target.drop(sid)
        return seconds

    prefill = time_prefills(prefill_once, prompts, warmup, repetitions, say, clock)

    per_verify = meter is not None and energy_window_s is None
    repeated: Repeated[tuple[int, int], ForwardSample] = Repeated(
        ((n, c) for c in contexts for n in tokens), BEST_CASE, clock
    )
    energy: dict[tuple[int, int], list[tuple[float, float]]] = {key: [] for key in repeated.keys}

    def session(context: int, keep: bool) -> None:
        """One fresh session at `context`: every token count verified in turn."""
        sid, _ = target.open(ids(context + 1))
        position = context
        for n in tokens:
            target.upload(sid, ids(n - 1), None)
            read = per_verify and keep
            before_j, before_t = (meter.read_j(), time.perf_counter()) if read else (0, 0)
            result, seconds = timed(lambda: target.verify(sid), lambda r: r.target_ms)
            if read:
                used_j = meter.read_j() - before_j
                energy[(n, context)].append((used_j, time.perf_counter() - before_t))
            if keep:
                repeated.add((n, context), seconds, ForwardSample(n, position, 1, seconds))
            position += 1 + result.accepted
        target.drop(sid)

    for rnd in range(warmup + repetitions):
        keep = rnd >= warmup
        for context in contexts:
            session(context, keep)
        label = f"kept {rnd - warmup + 1}/{repetitions}" if keep else f"warm-up {rnd + 1}"
        say(f"verify: round {label} over {len(contexts)} contexts x {len(tokens)} counts")

    def run_pass(keys: list[tuple[int, int]]) -> list[tuple[int, int]]:
        # a session verifies every token count in turn (each one's context follows from the
        # previous ones), so a context is re-measured whole
        again = sorted({context for _, context in keys})
        for _ in range(repetitions):
            for context in again:
                session(context, True)
        return [(n, c) for c in again for n in tokens]

    repeated.remeasure(run_pass, say, lambda key: f"{key[0]} token(s) @ context {key[1]}")

    windows: dict[tuple[int, int], tuple[float | None, float | None, float, int]] = {}
    if meter is not None and energy_window_s is not None:
        middle = sorted(contexts)[len(contexts) // 2]
        for n in tokens:
            windows[(n, middle)] = _window(target, meter, n, middle, energy_window_s, ids)
            say(f"energy: {n} token(s) at context {middle}")

    runs = []
    for n, context in repeated.keys:
        used = energy[(n, context)]
        total_j, total_s = sum(j for j, _ in used), sum(s for _, s in used)
        if (n, context) in windows:
            energy_j, mean_w, window_s, count = windows[(n, context)]
        elif per_verify and total_j > 0:
            energy_j, mean_w, window_s, count = (
                total_j / len(used),
                total_j / total_s,
                total_s,
                len(used),
            )
        else:
            energy_j = mean_w = window_s = count = None
        runs.append(
            VerificationRun(
                tokens=n,
                batch=1,
                context=context,
                stats=repeated.stats((n, context)),
                energy_j=energy_j,
                mean_w=mean_w if energy_j is not None else None,
                window_s=window_s if energy_j is not None else None,
                window_count=count if energy_j is not None else None,
            )
        )
    energy_method = None
    if per_verify:
        assert meter is not None
        energy_method = (
            f"{meter.name()}: read around every kept verification (whole package, other "
            f"processes included)"
        )
    elif meter is not None:
        energy_method = (
            f"{meter.name()}: windows of >= {energy_window_s} s of back-to-back verifications "
            f"per token count at the middle context (device synchronised around each)"
        )
    return ServedTimings(
        prefill=prefill.kept,
        prefill_stats=prefill.stats,
        forward=tuple(repeated.kept()),
        runs=tuple(sorted(runs, key=lambda r: (r.context, r.tokens))),
        energy_method=energy_method,
        idle_w=idle_w,
        idle_method=idle_method,
        idle_unavailable=idle_reason,
        prefill_rejected=prefill.rejected,
        forward_rejected=tuple(repeated.rejected()),
        noise={
            "prefill": prefill.noise,
            "forward": repeated.noise_rows(lambda key: {"tokens": key[0], "context": key[1]}),
        },
        clock=clock,
    )


def _window(
    target: Any,
    meter: EnergyMeter,
    n: int,
    context: int,
    window_s: float,
    ids: Callable[[int], list[int]],
) -> tuple[float | None, float | None, float, int]:
    """One energy window of n-token verifications near `context` (calibrate.target's rule)."""
    state = {"sid": target.open(ids(context + 1))[0], "position": context}

    def verify() -> float:
        if state["position"] > context + WINDOW_CONTEXT_SLACK:
            target.drop(state["sid"])
            state["sid"], state["position"] = target.open(ids(context + 1))[0], context
        target.upload(state["sid"], ids(n - 1), None)
        result = target.verify(state["sid"])
        state["position"] += 1 + result.accepted
        return result.target_ms / 1e3

    try:
        return _energy_window(meter, verify, window_s)
    finally:
        target.drop(state["sid"])


__all__ = ["WINDOW_CONTEXT_SLACK", "ServedTimings", "served_needs", "time_served"]
