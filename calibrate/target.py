"""Profile the cloud target model with PyTorch/transformers: prefill, verification forwards, energy.

`profile_target` measures a transformers causal LM on `device` (cuda or cpu), timing with
`time.perf_counter` and, on cuda, `torch.cuda.synchronize` just before starting and just
before stopping the clock, so each time is the device's work, not the launch:

- prefill time vs prompt length L: one forward over L new tokens (batch 1) into an empty KV
  cache, computing the logits of the last position only, as generation does. `warmup` runs
  per length are discarded; then `repetitions` rounds, each over all lengths in turn
  (interleaved, so a slow drift of the machine spreads over every length);
- verification time vs tokens verified n, batch size b and context c: for each (c, b), a KV
  cache of c tokens per sequence is built by a prefill (not timed); then one verification is
  one forward of n new positions per sequence on top of it (logits at every new position, as
  verification needs), after which the n new positions are cropped off the cache (not timed).
  `warmup` verifications per (n, b, c) are discarded; then `repetitions` rounds over the
  token counts. Each kept verification is one `ForwardSample` with new_positions = n * b,
  context_len = c * b and batch = b: positions and context summed over the batch, as
  `TargetLatency.forward_s` takes them.

Token ids are random (seeded), which is all a latency measurement needs.

Energy (optional): with an energy meter (`realrun.cloud.energy`: NVML on the GPU), each (n, b, c)
is repeated after its timed runs for a window of at least `min_window_s` seconds (and until
the counter has moved), synchronised around every verification as in serving; the energy per
verification is the meter's difference over the window / the number of verifications, and
the mean power is that difference / the window. NVML's counter advances in steps of tens of
milliseconds, so a 1 s window reads it to a few percent. Idle power is the meter's difference
over a quiet window of `idle_window_s` (nothing running) / its length. Without a meter (no
GPU, no NVML, no RAPL) the energy and idle fields are None and say why; latency is measured
all the same.
"""

from __future__ import annotations

import inspect
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibrate.fit import FitReport, fit_target_latency
from calibrate.noise import BEST_CASE, CLOCKS, Repeated, TimingStats, unstable_warning
from calibrate.samples import ForwardSample, PrefillSample
from realrun.cloud.energy import (
    EnergyMeter,
    NvmlEnergyMeter,
    PowerUnavailable,
    RaplMeter,
    nvml_index_for_cuda,
)
from simulator.profile import TargetLatency

DEFAULT_PROMPT_LENGTHS = (16, 32, 64, 128, 256, 512, 1024)
"""Prompt lengths prefilled by default."""

AUTO = "auto"
"""`energy_meter` default: NVML on a cuda device, RAPL on the CPU (each if available)."""

SEED = 1234
"""Seed of the random token ids."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationRun:
    """One (tokens, batch, context) configuration: its timing and, with a meter, its energy.

    `tokens` and `context` are per sequence (the samples hold them summed over the batch).
    `energy_j` is joules per verification (the whole batch) over a window of `window_s`
    seconds holding `window_count` verifications; `mean_w` = energy over the window / window_s.
    """

    tokens: int
    batch: int
    context: int
    stats: TimingStats
    energy_j: float | None = None
    mean_w: float | None = None
    window_s: float | None = None
    window_count: int | None = None


@dataclass(frozen=True)
class TargetMeasurements:
    """What `profile_target` measured, with what provenance needs.

    `prefill` / `forward` hold every sample the outlier rule kept (warm-ups excluded), in
    measurement order, and `prefill_rejected` / `forward_rejected` the ones it rejected
    (`calibrate.noise`); `prefill_stats` maps each prompt length to its timing, `runs` has one
    entry per verification configuration, `noise` one row per configuration and part
    ("prefill", "forward": its statistic, CV, rejected runs, passes). `energy_method` says how
    energy was measured, or is None and `energy_unavailable` says why; likewise `idle_w` /
    `idle_method` / `idle_unavailable`.
    """

    device: str
    device_name: str
    dtype: str
    model_name: str
    shape: dict[str, Any]
    prefill: tuple[PrefillSample, ...]
    forward: tuple[ForwardSample, ...]
    prefill_stats: dict[int, TimingStats]
    runs: tuple[VerificationRun, ...]
    torch_version: str
    transformers_version: str
    repetitions: int
    warmup: int
    threads: int
    energy_method: str | None = None
    energy_unavailable: str | None = None
    idle_w: float | None = None
    idle_method: str | None = None
    idle_unavailable: str | None = None
    min_window_s: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    prefill_rejected: tuple[PrefillSample, ...] = ()
    forward_rejected: tuple[ForwardSample, ...] = ()
    noise: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    clock: str = "wall"

    @property
    def has_energy(self) -> bool:
        return self.energy_method is not None

    def energy_per_verification(self) -> list[tuple[int, int, int, float]]:
        """(tokens, batch, context, joules per verification) of every run with energy."""
        return [
            (r.tokens, r.batch, r.context, r.energy_j) for r in self.runs if r.energy_j is not None
        ]

    def mean_active_w(self) -> float | None:
        """Mean power over all energy windows (total energy / total window time), or None."""
        windows = [r for r in self.runs if r.energy_j is not None and r.window_s]
        if not windows:
            return None
        energy = sum(r.energy_j * r.window_count for r in windows)  # type: ignore[operator]
        return energy / sum(r.window_s for r in windows)  # type: ignore[misc]

    def power_fields(self, busy: str, idle: str) -> tuple[dict[str, float], dict[str, str]]:
        """The profile's power.gpu_active_w / gpu_idle_w values and their notes (`busy` and
        `idle` say what was measured); an absent meter gives a note saying why."""
        values: dict[str, float] = {}
        notes: dict[str, str] = {}
        active_w = self.mean_active_w()
        if active_w is not None:
            values["power.gpu_active_w"] = active_w
            notes["power.gpu_active_w"] = f"{busy}: {self.energy_method}"
        else:
            notes["power.gpu_active_w"] = f"not measured: {self.energy_unavailable}"
        if self.idle_w is not None:
            values["power.gpu_idle_w"] = self.idle_w
            notes["power.gpu_idle_w"] = f"{idle}: {self.idle_method}"
        return values, notes

    def sample_rows(self) -> dict[str, list[dict[str, Any]]]:
        """Every prefill and forward sample, as a part file keeps them: the fitted ones, the
        rejected ones (`<name>_rejected`) and the noise rows per configuration
        (`noise_<name>`)."""
        rows: dict[str, list[dict[str, Any]]] = {
            "prefill": [s.to_row() for s in self.prefill],
            "forward": [s.to_row() for s in self.forward],
        }
        for name, rejected in (
            ("prefill", self.prefill_rejected),
            ("forward", self.forward_rejected),
        ):
            if rejected:
                rows[f"{name}_rejected"] = [s.to_row() for s in rejected]
        for name, noise in self.noise.items():
            rows[f"noise_{name}"] = noise
        return rows

    def warnings(self) -> list[str]:
        """One line per part whose configurations stayed unstable (`calibrate.noise`)."""
        lines = (unstable_warning(f"target {name}", rows) for name, rows in self.noise.items())
        return [line for line in lines if line]

    def fit(self) -> tuple[TargetLatency, dict[str, FitReport]]:
        """The profile's target latency model and its fit reports ("prefill", "forward")."""
        return fit_target_latency(self.prefill, self.forward)

    def lines(self) -> list[str]:
        """A human-readable summary: setup, energy status, prefill and verification medians."""
        lines = [
            f"{self.model_name} on {self.device} ({self.device_name}), {self.dtype}, "
            f"torch {self.torch_version}, transformers {self.transformers_version}, "
            f"{self.repetitions} repetitions after {self.warmup} warm-up"
            + (f", {self.threads} CPU thread(s)" if self.device == "cpu" else ""),
            f"timed by {CLOCKS.get(self.clock, self.clock)}",
            "energy: " + (self.energy_method or f"not measured ({self.energy_unavailable})"),
            "idle power: "
            + (
                f"{self.idle_w:.1f} W ({self.idle_method})"
                if self.idle_w is not None
                else f"not measured ({self.idle_unavailable})"
            ),
            "prefill (prompt length):",
        ]
        for length, s in self.prefill_stats.items():
            lines.append(
                f"  {length:>6}: {s.statistic} {1e3 * s.value_s:.3f} ms, median "
                f"{1e3 * s.median_s:.3f} ms ({s.noise_text()}, n={s.n})"
            )
        lines.append("verification (tokens x batch @ context per sequence):")
        for r in self.runs:
            energy = (
                f", {r.energy_j:.4f} J/verification at {r.mean_w:.0f} W "
                f"({r.window_count} in {r.window_s:.2f} s)"
                if r.energy_j is not None
                else ""
            )
            lines.append(
                f"  {r.tokens:>3} x {r.batch:>2} @ {r.context:>5}: {r.stats.statistic} "
                f"{1e3 * r.stats.value_s:.3f} ms, median {1e3 * r.stats.median_s:.3f} ms "
                f"({r.stats.noise_text()})" + energy
            )
        lines.extend(self.notes)
        return lines


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"profile_target: {name} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def _grid(name: str, values: Any) -> tuple[int, ...]:
    try:
        items = tuple(values)
    except TypeError:
        raise ValueError(f"profile_target: {name} must be a sequence of integers") from None
    if not items:
        raise ValueError(f"profile_target: {name} must not be empty")
    checked = tuple(_count(f"each of {name}", v, 1) for v in items)
    if len(set(checked)) != len(checked):
        raise ValueError(f"profile_target: {name} has repeated values ({list(checked)})")
    return checked


def _device_name(device: Any) -> str:
    import torch  # optional (extra 'models'): loaded only when used

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _shape_of(config: Any) -> dict[str, Any]:
    """The model's dimensions from its transformers config."""
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if hidden and heads else None)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    shape = {
        "model_type": getattr(config, "model_type", None),
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden": hidden,
        "intermediate": getattr(config, "intermediate_size", None),
        "heads": heads,
        "kv_heads": getattr(config, "num_key_value_heads", None),
        "head_dim": head_dim,
        "vocab": getattr(config, "vocab_size", None),
        "rope": dict(rope) if isinstance(rope, dict) else rope,
        "tie_word_embeddings": getattr(config, "tie_word_embeddings", None),
    }
    note = getattr(config, "pipesd_architecture_note", None)
    if note:
        shape["note"] = note
    return shape


def _open_meter(energy_meter: Any, device: Any) -> tuple[EnergyMeter | None, str | None]:
    """(meter, None) or (None, why there is none)."""
    if energy_meter is False or energy_meter is None:
        return None, "energy measurement switched off (energy_meter=None)"
    try:
        if energy_meter == AUTO:
            if device.type == "cuda":
                return NvmlEnergyMeter(nvml_index_for_cuda(device.index or 0)), None
            return RaplMeter(), None
        if isinstance(energy_meter, type) or (
            callable(energy_meter) and not hasattr(energy_meter, "read_j")
        ):
            return energy_meter(), None
    except PowerUnavailable as exc:
        return None, str(exc)
    if not hasattr(energy_meter, "read_j"):
        raise ValueError(
            f"profile_target: energy_meter must be 'auto', None, a meter with read_j(), or a "
            f"callable making one (got {energy_meter!r})"
        )
    return energy_meter, None


def _logits_kwargs(model: Any, keep: int) -> dict[str, int]:
    """Ask for the logits of the last `keep` positions only, if the model supports it."""
    parameters = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in parameters:
            return {name: keep}
    return {}


# --------------------------------------------------------------------------------------------
# Profiler
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefillTimings:
    """What `time_prefills` measured: kept and rejected samples, stats and noise per length."""

    kept: tuple[PrefillSample, ...]
    rejected: tuple[PrefillSample, ...]
    stats: dict[int, TimingStats]
    noise: list[dict[str, Any]]


def time_prefills(
    prefill_once: Callable[[int], float],
    prompts: Sequence[int],
    warmup: int,
    repetitions: int,
    say: Callable[[str], None],
    clock: str = "wall",
) -> PrefillTimings:
    """Prefill samples and per-length timing: `warmup` discarded runs per length, then
    `repetitions` rounds over every length in turn (interleaved, so drift spreads evenly);
    lengths whose times vary too much are re-measured (`calibrate.noise`: a prefill is a
    best-case service time, summarised by its minimum, outliers rejected)."""
    for length in prompts:
        for _ in range(warmup):
            prefill_once(length)
    repeated: Repeated[int, PrefillSample] = Repeated(prompts, BEST_CASE, clock)

    def run_round(lengths: Sequence[int]) -> list[int]:
        for length in lengths:
            seconds = prefill_once(length)
            repeated.add(length, seconds, PrefillSample(prompt_len=length, seconds=seconds))
        return list(lengths)

    for rep in range(repetitions):
        run_round(prompts)
        say(f"prefill: round {rep + 1}/{repetitions} over {len(prompts)} prompt lengths")

    def run_pass(lengths: list[int]) -> list[int]:
        for _ in range(repetitions):
            run_round(lengths)
        return lengths

    repeated.remeasure(run_pass, say, lambda length: f"prompt {length}")
    return PrefillTimings(
        kept=tuple(repeated.kept()),
        rejected=tuple(repeated.rejected()),
        stats={length: repeated.stats(length) for length in prompts},
        noise=repeated.noise_rows(lambda length: {"prompt_len": length}),
    )


def profile_target(
    model: Any,
    device: Any = "cpu",
    token_counts: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
    context_lengths: Sequence[int] = (128, 512, 1024),
    prompt_lengths: Sequence[int] = DEFAULT_PROMPT_LENGTHS,
    repetitions: int = 5,
    warmup: int = 2,
    energy_meter: Any = AUTO,
    progress: Callable[[str], None] | None = None,
    min_window_s: float = 1.0,
    idle_window_s: float = 2.0,
    model_name: str | None = None,
    seed: int = SEED,
) -> TargetMeasurements:
    """Measure a target model's prefill and verification times (and energy) (see module doc).

    `model` is a transformers causal LM already on `device` (e.g. from
    `models.shapes.build_random_model`). The grids are distinct integers >= 1; every
    context + tokens and every prompt length must fit the model's max_position_embeddings.
    `energy_meter`: "auto" (NVML for a cuda device, RAPL for the CPU), None (no energy), a
    meter (`read_j()`, `name()`), or a callable that makes one (e.g. `NvmlEnergyMeter`); a
    meter that cannot be opened (PowerUnavailable) leaves energy None with its reason.
    `progress`, if given, receives one line per measured configuration.
    """
    import torch  # optional (extra 'models'): loaded only when used
    import transformers  # optional (extra 'models'): loaded only when used
    from transformers.cache_utils import DynamicCache  # optional, as transformers

    tokens = _grid("token_counts", token_counts)
    batches = _grid("batch_sizes", batch_sizes)
    contexts = _grid("context_lengths", context_lengths)
    prompts = _grid("prompt_lengths", prompt_lengths)
    repetitions = _count("repetitions", repetitions, 1)
    warmup = _count("warmup", warmup, 0)
    for name, value in (("min_window_s", min_window_s), ("idle_window_s", idle_window_s)):
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"profile_target: {name} must be a number > 0 (got {value!r})")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    config = model.config
    limit = getattr(config, "max_position_embeddings", None)
    needed = max(max(contexts) + max(tokens), max(prompts))
    if limit is not None and needed > limit:
        raise ValueError(
            f"profile_target: needs {needed} positions but the model has "
            f"max_position_embeddings = {limit}; use shorter contexts/prompts"
        )
    say = progress or (lambda _line: None)
    parameter = next(model.parameters())
    if parameter.device != device:
        raise ValueError(f"profile_target: the model is on {parameter.device}, not on {device}")
    dtype = str(parameter.dtype).removeprefix("torch.")
    vocab = int(config.vocab_size)
    generator = torch.Generator().manual_seed(seed)

    def random_ids(batch: int, length: int) -> Any:
        return torch.randint(0, vocab, (batch, length), generator=generator).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    last_only = _logits_kwargs(model, 1)
    meter, energy_reason = _open_meter(energy_meter, device)
    notes: list[str] = []
    idle_w = idle_method = idle_reason = None

    with torch.inference_mode():
        if meter is not None:
            sync()
            start_j, start_t = meter.read_j(), time.perf_counter()
            time.sleep(idle_window_s)
            idle_j, idle_t = meter.read_j() - start_j, time.perf_counter() - start_t
            if idle_j > 0:
                idle_w = idle_j / idle_t
                idle_method = f"{meter.name()} over a {idle_t:.2f} s quiet window"
            else:
                idle_reason = f"{meter.name()} did not advance over {idle_t:.2f} s"
        else:
            idle_reason = energy_reason

        # Prefill: batch 1, fresh cache, last position's logits.
        def prefill_once(length: int) -> float:
            ids = random_ids(1, length)
            cache = DynamicCache()
            sync()
            start = time.perf_counter()
            model(input_ids=ids, past_key_values=cache, use_cache=True, **last_only)
            sync()
            return time.perf_counter() - start

        prefill = time_prefills(prefill_once, prompts, warmup, repetitions, say)

        # Verification: n new positions per sequence on a cache of c tokens per sequence.
        repeated: Repeated[tuple[int, int, int], ForwardSample] = Repeated(
            ((n, batch, context) for context in contexts for batch in batches for n in tokens),
            BEST_CASE,
        )
        runs: list[VerificationRun] = []
        total = len(contexts) * len(batches) * len(tokens)
        done = 0
        for context in contexts:
            for batch in batches:
                cache = DynamicCache()
                model(
                    input_ids=random_ids(batch, context),
                    past_key_values=cache,
                    use_cache=True,
                    **last_only,
                )
                drafts = {n: random_ids(batch, n) for n in tokens}

                def verify(
                    n: int, cache: Any = cache, context: int = context, drafts: Any = drafts
                ) -> float:
                    sync()
                    start = time.perf_counter()
                    model(input_ids=drafts[n], past_key_values=cache, use_cache=True)
                    sync()
                    seconds = time.perf_counter() - start
                    cache.crop(-n)  # remove the n new positions (negative: every version)
                    if cache.get_seq_length() != context:
                        raise RuntimeError(
                            f"profile_target: the KV cache holds {cache.get_seq_length()} "
                            f"positions after cropping, not {context}"
                        )
                    return seconds

                for n in tokens:
                    for _ in range(warmup):
                        verify(n)

                def run_round(
                    counts: Sequence[int], batch: int = batch, context: int = context, verify=verify
                ) -> list[tuple[int, int, int]]:
                    for n in counts:
                        seconds = verify(n)
                        sample = ForwardSample(n * batch, context * batch, batch, seconds)
                        repeated.add((n, batch, context), seconds, sample)
                    return [(n, batch, context) for n in counts]

                for _ in range(repetitions):
                    run_round(tokens)

                def run_pass(keys: list[tuple[int, int, int]], run_round=run_round) -> list:
                    for _ in range(repetitions):
                        run_round([n for n, _, _ in keys])
                    return keys

                repeated.remeasure(
                    run_pass,
                    say,
                    lambda key: f"{key[0]} token(s) x batch {key[1]} @ context {key[2]}",
                    among=[(n, batch, context) for n in tokens],
                )
                for n in tokens:
                    stats = repeated.stats((n, batch, context))
                    energy = mean_w = window_s = count = None
                    if meter is not None:
                        energy, mean_w, window_s, count = _energy_window(
                            meter, lambda n=n: verify(n), min_window_s
                        )
                        if energy is None:
                            notes.append(
                                f"energy: {meter.name()} did not advance over {window_s:.2f} s "
                                f"for {n} x {batch} @ {context}"
                            )
                    runs.append(
                        VerificationRun(n, batch, context, stats, energy, mean_w, window_s, count)
                    )
                    done += 1
                    say(
                        f"verify {done}/{total}: {n} token(s) x batch {batch} @ context "
                        f"{context}: {stats.statistic} {1e3 * stats.value_s:.3f} ms "
                        f"({stats.noise_text()})"
                        + (f", {energy:.4f} J" if energy is not None else "")
                    )
                del cache, drafts

    energy_method = None
    if meter is not None:
        energy_method = (
            f"{meter.name()}: difference over a window of >= {min_window_s:g} s of repeated, "
            f"synchronised verifications per configuration, / their count"
        )
    measured = TargetMeasurements(
        device=str(device),
        device_name=_device_name(device),
        dtype=dtype,
        model_name=model_name or getattr(config, "name_or_path", "") or type(model).__name__,
        shape=_shape_of(config),
        prefill=prefill.kept,
        forward=tuple(repeated.kept()),
        prefill_stats=prefill.stats,
        runs=tuple(runs),
        torch_version=str(torch.__version__),
        transformers_version=str(transformers.__version__),
        repetitions=repetitions,
        warmup=warmup,
        threads=int(torch.get_num_threads()),
        energy_method=energy_method,
        energy_unavailable=None if meter is not None else energy_reason,
        idle_w=idle_w,
        idle_method=idle_method,
        idle_unavailable=idle_reason,
        min_window_s=float(min_window_s),
        notes=tuple(notes),
        prefill_rejected=prefill.rejected,
        forward_rejected=tuple(repeated.rejected()),
        noise={
            "prefill": prefill.noise,
            "forward": repeated.noise_rows(
                lambda key: {"tokens": key[0], "batch": key[1], "context": key[2]}
            ),
        },
    )
    for line in measured.warnings():
        say(line)
    return measured


MAX_WINDOW_FACTOR = 10.0
"""An energy window grows to at most this many times `min_window_s` waiting for the counter."""


def _energy_window(
    meter: EnergyMeter, verify: Callable[[], float], min_window_s: float
) -> tuple[float | None, float | None, float, int]:
    """(J per verification, mean W, window s, count) over repeated verifications.

    Repeats `verify` (which synchronises the device) until the window is >= min_window_s and
    the meter has advanced, or the window reaches MAX_WINDOW_FACTOR x min_window_s (then the
    energy is None: the meter never moved).
    """
    count = 0
    start_j, start_t = meter.read_j(), time.perf_counter()
    while True:
        verify()
        count += 1
        elapsed = time.perf_counter() - start_t
        if elapsed >= min_window_s:
            energy = meter.read_j() - start_j
            elapsed = time.perf_counter() - start_t
            if energy > 0:
                return energy / count, energy / elapsed, elapsed, count
            if elapsed >= MAX_WINDOW_FACTOR * min_window_s:
                return None, None, elapsed, count


def fit_measurements(m: TargetMeasurements) -> tuple[TargetLatency, dict[str, FitReport]]:
    """The profile's target latency model and its fit reports ("prefill", "forward")."""
    return m.fit()


__all__ = [
    "AUTO",
    "DEFAULT_PROMPT_LENGTHS",
    "PrefillTimings",
    "TargetMeasurements",
    "TimingStats",
    "VerificationRun",
    "fit_measurements",
    "profile_target",
]
