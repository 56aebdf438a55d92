"""The GPU calibration campaign's plan: its steps in order of value, each step's estimated time
from a small cost model, and the budget that drops the lowest-value steps.

Steps (`Step.kind`), for each target shape (models/shapes.py, random bf16 weights):
- "served": the server's own target (`realrun.cloud.torch_target.TorchTarget`) timed through
  its session methods (`calibrate.target_served_torch`), batch 1, tokens verified x contexts;
  mode "static" (static KV cache, padded buckets, CUDA graphs on a GPU) and "eager" side by side;
- "batched": eager transformers with batch 1..32 (`calibrate.target`: the server verifies one
  session per forward, so batching is measured on the eager path);
- "energy": NVML energy per verification, in windows of ENERGY_WINDOW_S per token count;
- "validate": `pipesd validate` on the GPU testbed (torch target, software shaping) at three
  uplink bandwidths, simulated with the profile the "served static" step of its target made
  (`validate_args`: its command line).

Estimates: `CostModel.forward_s` is a roofline (weights and KV streamed from memory at an
effective bandwidth, or the matmul FLOPs at an effective rate, whichever is slower) plus a
per-forward overhead (per layer in eager mode, once for a graph replay); a step adds model
build, compilation and the runs its grid takes. The cuda constants are assumptions from the
H100/H200 data sheets (to be replaced by the first run's measured step times, which the
campaign records); the cpu ones describe the "tiny" test shape on this 2-core VM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.shapes import get_shape

DEFAULT_SHAPES = ("Llama-2-7B", "DeepSeek-Coder-6.7B", "Qwen3-32B")
"""PipeSD's two targets and one PicoSpec/DiP-SD size."""

TINY_SHAPES = ("tiny",)
KINDS = ("served", "batched", "energy", "validate")
MODES = ("static", "eager")

NVML_UPDATE_S = 0.1
"""NVML's total-energy counter (mJ) advances every 20-100 ms depending on the GPU and driver;
the worst case is taken."""

ENERGY_REL_ERROR = 0.05
"""Wanted bound on the error of a window's energy from the counter's update steps."""

ENERGY_WINDOW_S = NVML_UPDATE_S / ENERGY_REL_ERROR
"""2 s: a reading is stale by at most one update, so a window of W seconds at a steady power
misplaces at most NVML_UPDATE_S of it: error <= 0.1 / W, 5% at 2 s."""

VALIDATE_BANDWIDTHS_MBPS = {"cuda": (0.2, 1.0, 10.0), "cpu": (10.0, 50.0, 100.0)}
"""Uplinks of the testbed validation (`--sweep link.uplink_mbps=...`)."""


@dataclass(frozen=True)
class Grid:
    """What a target step measures: token counts, contexts, prompts, batch sizes, runs."""

    tokens: tuple[int, ...]
    contexts: tuple[int, ...]
    prompts: tuple[int, ...]
    batches: tuple[int, ...]
    repetitions: int
    warmup: int


GPU_GRID = Grid(
    tokens=(1, 2, 4, 8, 16, 32, 64),
    contexts=(128, 512, 1024),
    prompts=(64, 256, 1024),
    batches=(1, 2, 4, 8, 16, 32),
    repetitions=3,
    warmup=1,
)
TINY_GRID = Grid(
    tokens=(1, 2, 4),
    contexts=(16, 48),
    prompts=(8, 16, 32),
    batches=(1, 2),
    repetitions=2,
    warmup=1,
)


@dataclass(frozen=True)
class CostModel:
    """Per-forward and per-step time of one device (see the module docstring)."""

    bytes_per_s: float
    flops_per_s: float
    eager_layer_s: float
    graph_s: float
    build_s_per_gib: float
    compile_s_per_bucket: float
    start_s: float
    validate_token_s: float

    def forward_s(self, shape: str, tokens: int, context: int, mode: str) -> float:
        """One forward of `tokens` new positions over `context` cached ones (summed over the
        batch), bf16."""
        s = get_shape(shape)
        params = s.parameter_count()
        head_dim = s.attention_head_dim
        kv_bytes = 2 * s.layers * s.kv_heads * head_dim * 2 * (context + tokens)
        memory = (2 * params + kv_bytes) / self.bytes_per_s
        compute = 2 * params * tokens / self.flops_per_s
        overhead = self.graph_s if mode == "static" else self.eager_layer_s * s.layers
        return max(memory, compute) + overhead

    def build_s(self, shape: str) -> float:
        return self.start_s + self.build_s_per_gib * 2 * get_shape(shape).parameter_count() / 2**30


COSTS = {
    # H100/H200, bf16: 4.8 TB/s (H200) streamed at ~60%; ~400 of 990 TFLOP/s dense in
    # transformers' eager kernels; ~60 us of launches per layer eagerly; inductor compiles a
    # bucket of a 7B decoder in ~8 s (reduce-overhead); random init ~1 s per GiB.
    "cuda": CostModel(2.8e12, 4.0e14, 6e-5, 3e-4, 1.0, 8.0, 5.0, 0.08),
    # the "tiny" shape on this 2-core VM: a forward ~1 ms of Python and kernels.
    "cpu": CostModel(2e10, 5e10, 4e-4, 1e-3, 1.0, 0.0, 1.0, 0.01),
}

REMEASURE_FACTOR = 1.3
"""Allowance for re-measured unstable configurations (calibrate.noise)."""


@dataclass(frozen=True)
class Step:
    """One campaign step: `name` (also its part file's stem), `kind`, target `shape`, `mode`
    (served steps), `estimate_s`, and `needs` (a step whose part it uses)."""

    name: str
    kind: str
    shape: str
    mode: str | None
    estimate_s: float
    needs: str | None = None

    def what(self) -> str:
        """The step in words."""
        if self.kind == "served":
            return f"{self.shape}: served TorchTarget, {self.mode}, batch 1"
        if self.kind == "batched":
            return f"{self.shape}: eager transformers, batch 1..32"
        if self.kind == "energy":
            return f"{self.shape}: NVML energy, {ENERGY_WINDOW_S:g} s windows per token count"
        return f"testbed validation with {self.shape}, 3 uplink bandwidths"


def _served_s(cost: CostModel, device: str, grid: Grid, shape: str, mode: str) -> float:
    runs = grid.warmup + grid.repetitions
    compile_s = 0.0
    if device == "cuda" and mode == "static":
        compile_s = cost.compile_s_per_bucket * (1 + math.ceil(math.log2(max(grid.tokens))))
    prefill = sum(cost.forward_s(shape, p, 0, mode) for p in grid.prompts) * runs
    opens = sum(cost.forward_s(shape, c, 0, mode) for c in grid.contexts) * runs
    verify = sum(cost.forward_s(shape, n, c, mode) for n in grid.tokens for c in grid.contexts)
    return cost.build_s(shape) + compile_s + (prefill + opens + verify * runs) * REMEASURE_FACTOR


def _batched_s(cost: CostModel, grid: Grid, shape: str) -> float:
    runs = grid.warmup + grid.repetitions
    prefill = sum(cost.forward_s(shape, p, 0, "eager") for p in grid.prompts) * runs
    caches = sum(
        cost.forward_s(shape, b * c, 0, "eager") for b in grid.batches for c in grid.contexts
    )
    verify = sum(
        cost.forward_s(shape, n * b, c * b, "eager")
        for n in grid.tokens
        for b in grid.batches
        for c in grid.contexts
    )
    return cost.build_s(shape) + caches + (prefill + verify * runs) * REMEASURE_FACTOR


def _energy_s(cost: CostModel, device: str, grid: Grid, shape: str) -> float:
    windows = len(grid.tokens) * ENERGY_WINDOW_S if device == "cuda" else 0.0
    idle = 2.0 if device == "cuda" else 0.0
    return cost.build_s(shape) + idle + windows + _served_s(cost, "cpu", grid, shape, "eager") / 3


def _validate_s(cost: CostModel, device: str, shape: str, sessions: int, tokens: int) -> float:
    draft_build = 60.0 if device == "cuda" else 2.0  # TinyLlama-1.1B GGUF on 16 cores; tiny
    server = cost.build_s(shape) + (56.0 if device == "cuda" else 0.0)  # compile, as served
    return draft_build + server + sessions * tokens * cost.validate_token_s + 10.0


VALIDATE_POLICIES = 4
"""Edge-drafting policies of scenarios/testbed_cpu.toml (vanilla, hsl, edgellm, pipesd)."""

VALIDATE_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "testbed_cpu.toml"
"""The GPU testbed validation's scenario (one prompt, one seed: `validate_args`)."""

DRAFT_SHAPES = {"cuda": "TinyLlama-1.1B", "cpu": "tiny"}
"""The validation's draft: a random-weight GGUF of this shape (models.shape_gguf), sharing the
target's vocabulary size (32,000 for Llama-2-7B and TinyLlama)."""

VALIDATE_TOKENS = {"cuda": 32, "cpu": 8}
"""New tokens per request in the validation (one prompt, one seed: `calibrate.campaign`)."""


def plan(device: str, shapes: Sequence[str], grid: Grid) -> list[Step]:
    """Every step for `shapes` on `device`, most valuable first: the first two shapes' served
    static and eager steps (PipeSD's targets), the other shapes' served static steps, the
    validation with the first shape (the whole model against the GPU testbed), energy and
    batched steps of the first two, then the rest."""
    cost = COSTS[device]
    first, *others = shapes

    def served(shape: str, mode: str) -> Step:
        estimate = _served_s(cost, device, grid, shape, mode)
        return Step(f"served-{shape}-{mode}", "served", shape, mode, estimate)

    def batched(shape: str) -> Step:
        return Step(f"batched-{shape}", "batched", shape, None, _batched_s(cost, grid, shape))

    def energy(shape: str) -> Step:
        estimate = _energy_s(cost, device, grid, shape)
        return Step(f"energy-{shape}", "energy", shape, None, estimate)

    pipesd = [first, *others[:1]]
    rest = others[1:]
    sessions = len(VALIDATE_BANDWIDTHS_MBPS[device]) * VALIDATE_POLICIES
    tokens = VALIDATE_TOKENS[device]
    validate = Step(
        f"validate-{first}",
        "validate",
        first,
        None,
        _validate_s(cost, device, first, sessions, tokens),
        needs=f"served-{first}-static",
    )
    steps = [served(s, mode) for s in pipesd for mode in MODES]
    steps += [served(s, "static") for s in rest]
    steps += [validate]
    steps += [energy(s) for s in pipesd]
    steps += [batched(s) for s in pipesd]
    steps += [served(s, "eager") for s in rest] + [batched(s) for s in rest]
    steps += [energy(s) for s in rest]
    return steps


@dataclass(frozen=True)
class Selection:
    """What runs (`run`), what is already done (`done`), what the budget dropped."""

    run: tuple[Step, ...]
    done: tuple[Step, ...]
    dropped: tuple[tuple[Step, str], ...]

    @property
    def estimate_s(self) -> float:
        return sum(step.estimate_s for step in self.run)


def select(steps: Sequence[Step], finished: set[str], budget_s: float | None) -> Selection:
    """Steps to run in value order: finished ones skipped; each other step kept while the
    estimates kept so far plus its own fit `budget_s` (None: no budget), else dropped (a
    lower-value step that still fits is kept); a step whose `needs` is neither finished nor
    kept is dropped too."""
    run: list[Step] = []
    done: list[Step] = []
    dropped: list[tuple[Step, str]] = []
    total = 0.0
    for step in steps:
        if step.name in finished:
            done.append(step)
            continue
        kept = {s.name for s in run} | finished
        if step.needs is not None and step.needs not in kept:
            dropped.append((step, f"needs {step.needs}, which does not run"))
            continue
        if budget_s is not None and total + step.estimate_s > budget_s:
            dropped.append(
                (step, f"over the budget ({total:.0f} s kept + {step.estimate_s:.0f} s)")
            )
            continue
        run.append(step)
        total += step.estimate_s
    return Selection(tuple(run), tuple(done), tuple(dropped))


def plan_lines(selection: Selection, budget_s: float | None) -> list[str]:
    """The plan as printed before anything runs: one line per step with its estimate."""
    budget = f"budget {budget_s:.0f} s" if budget_s is not None else "no budget"
    lines = [f"plan: {len(selection.run)} step(s), about {selection.estimate_s:.0f} s ({budget})"]
    for i, step in enumerate(selection.run, start=1):
        lines.append(f"  {i:>2}. {step.name:<34} ~{step.estimate_s:6.0f} s  {step.what()}")
    for step in selection.done:
        lines.append(f"   done {step.name} (its part is there: skipped)")
    for step, why in selection.dropped:
        lines.append(f"   dropped {step.name} ~{step.estimate_s:.0f} s: {why}")
    return lines


def validate_args(device: str, shape: str, profiles: Path, draft: Path, out: Path) -> list[str]:
    """The `pipesd validate` arguments of the campaign's validation step."""
    bandwidths = ",".join(f"{b:g}" for b in VALIDATE_BANDWIDTHS_MBPS[device])
    return [
        "validate",
        str(VALIDATE_SCENARIO),
        "--profile",
        str(profiles / f"served-{shape}-static.json"),
        "--target",
        shape,
        "--target-backend",
        "torch",
        "--target-device",
        device,
        "--draft",
        str(draft),
        "--draft-threads",
        "4" if device == "cuda" else "1",
        "--shaping",
        "software",
        "--acceptance",
        "synthetic",
        "--set",
        "seeds=[1]",
        "--set",
        "prompts.count=1",
        "--set",
        f"prompts.max_new_tokens={VALIDATE_TOKENS[device]}",
        "--sweep",
        f"link.uplink_mbps={bandwidths}",
        "--quiet",
        "--out",
        str(out),
    ]
