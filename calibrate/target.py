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
import time
from collections.abc import Callable, Sequence
from typing import Any

from calibrate.noise import BEST_CASE, Repeated
from calibrate.samples import ForwardSample
from calibrate.target_results import TargetMeasurements, VerificationRun
from calibrate.target_setup import (
    AUTO,
    SEED,
    _count,
    _device_name,
    _grid,
    _open_meter,
    _shape_of,
)
from calibrate.target_timing import _energy_window, time_prefills

DEFAULT_PROMPT_LENGTHS = (16, 32, 64, 128, 256, 512, 1024)
"""Prompt lengths prefilled by default."""


def _logits_kwargs(model: Any, keep: int) -> dict[str, int]:
    """Ask for the logits of the last `keep` positions only, if the model supports it."""
    parameters = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in parameters:
            return {name: keep}
    return {}


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


__all__ = ["DEFAULT_PROMPT_LENGTHS", "profile_target"]
