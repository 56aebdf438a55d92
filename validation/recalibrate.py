"""Re-measure the draft's and the target's latency just before a validation run.

Why: this machine's speed drifts by 10-35% over an hour (docs/validation), so a profile
calibrated earlier predicts a testbed that no longer exists. `recalibrated_profile` measures
both models now, on this machine, with the testbed's own code paths (`pipesd calibrate draft`
and `pipesd calibrate target --backend llama`, or `--backend torch-served` on the run's device
for a torch target; the grids below, the same threads as the run),
and writes a copy of the given profile with `draft_latency` and `target_latency` replaced,
recording where each value came from. The link, payload, power and acceptance sections stay
as in the given profile.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from calibrate.assemble import Part, save_part, write_profile
from calibrate.measure import measure_draft, measure_target
from calibrate.options import DraftOptions, TargetOptions
from models.prompts import family_prompts, format_prompt
from models.quiet import c_output_silenced
from realrun.local import LocalOptions
from realrun.testbed_rules import tokens_per_message
from simulator.errors import ConfigError
from simulator.profile import Profile, load_profile
from simulator.scenario import Scenario, SweepPoint

PROMPT_LENGTHS = [16, 24, 32, 48, 64, 96, 128]
"""Prefill grid for both models (tokens), that of scenarios/profiles/parts/cpu-testbed.*;
`extended` carries it (and the context grids) up to what the run's requests reach."""

DRAFT_CONTEXTS = [32, 64, 96, 128, 192, 256]
TARGET_CONTEXTS = [32, 64, 96, 128, 192]
GRID_GROWTH = 1.5
"""Each point added past a grid's end is at most this factor beyond the one before."""
GRID_ROUND = 16
"""Points added past a grid's end are multiples of this many tokens."""
TARGET_TOKEN_COUNTS = [1, 2, 3, 4, 5, 6, 8]
REPETITIONS = 5
WARMUP = 2
DRAFT_REPETITIONS = 8
DRAFT_WARMUP = 0
"""Two bursts per context, the first step of each right after a pause, as after an answer."""
BURST = 4
PAUSE_MS = 60.0
"""The draft's decode steps are timed in the edge's duty cycle: a few tokens, then the wait
for a verification (calibrate.draft: back to back they run ~16% faster on this VM)."""


@dataclass(frozen=True)
class Extent:
    """The longest prompt and context (tokens) the run's requests reach, so that the
    latency models are measured there instead of extrapolated (issue 14's run 18 reached
    context ~310 on a grid ending at 192)."""

    prompt_tokens: int
    context_tokens: int


def extended(grid: list[int], longest: int) -> tuple[int, ...]:
    """`grid` with points added, each at most GRID_GROWTH x the one before, until it reaches
    `longest` rounded up to GRID_ROUND; unchanged when it already does."""
    points = list(grid)
    end = -(-longest // GRID_ROUND) * GRID_ROUND
    while points[-1] < end:
        step = -(-int(points[-1] * GRID_GROWTH) // GRID_ROUND) * GRID_ROUND
        points.append(min(step, end))
    return tuple(points)


def run_extent(scenario: Scenario, draft: Path) -> Extent:
    """The run's longest prompt (the scenario's prompt texts, as the testbed formats them
    with the draft's chat template) and its longest context: that prompt, every new token
    and the longest draft the edge may send."""
    # llama_cpp is heavy and optional: only the vocabulary is loaded, to count tokens.
    import llama_cpp

    prompts_section = scenario.model.prompts
    texts = [p.text for p in family_prompts(prompts_section.family, prompts_section.split)]
    used = texts[: min(len(texts), prompts_section.count)]
    with c_output_silenced():  # llama.cpp warns about the vocabulary's zero context from C
        vocab = llama_cpp.Llama(model_path=str(draft), vocab_only=True, verbose=False)
    longest_prompt = max(len(format_prompt(vocab, text)) for text in used)
    context = longest_prompt + prompts_section.max_new_tokens + tokens_per_message(scenario)
    return Extent(prompt_tokens=longest_prompt, context_tokens=context)


def measure_parts(
    draft: Path,
    draft_threads: int,
    target: Path | str,
    target_threads: int,
    say: Callable[[str], None],
    command: str,
    target_backend: str = "llama",
    target_device: str = "cpu",
    extent: Extent | None = None,
) -> tuple[Part, Part]:
    """(draft part, target part), measured now (about a minute for the CPU testbed's pair),
    on the grids above carried up to `extent` when given.

    The target as the run's server holds it: `target_backend` "llama" (CPU only: a llama.cpp
    target on a GPU is refused, its calibration runs on the CPU) or "torch" (TorchTarget on
    `target_device`)."""
    if target_backend == "llama" and target_device != "cpu":
        raise ConfigError(
            "--recalibrate",
            "",
            f"re-measures a llama.cpp target on the CPU only (the run's is on {target_device}); "
            "use --target-backend torch, or calibrate the profile by hand",
        )
    prompts = extended(PROMPT_LENGTHS, extent.prompt_tokens if extent else 0)
    draft_contexts = extended(DRAFT_CONTEXTS, extent.context_tokens if extent else 0)
    target_contexts = extended(TARGET_CONTEXTS, extent.context_tokens if extent else 0)
    draft_options = DraftOptions(
        model=draft,
        threads=draft_threads,
        prompt_lengths=prompts,
        context_lengths=draft_contexts,
        repetitions=DRAFT_REPETITIONS,
        warmup=DRAFT_WARMUP,
        burst=BURST,
        pause_ms=PAUSE_MS,
    )
    target_options = TargetOptions(
        model=target,
        backend="llama" if target_backend == "llama" else "torch-served",
        threads=target_threads,
        device=None if target_backend == "llama" else target_device,
        token_counts=tuple(TARGET_TOKEN_COUNTS),
        context_lengths=target_contexts,
        prompt_lengths=prompts,
        repetitions=REPETITIONS,
        warmup=WARMUP,
    )
    return (
        measure_draft(draft_options, say, command),
        measure_target(target_options, say, command),
    )


def replace_latencies(
    base_path: Path, draft_part: Part, target_part: Part, command: str
) -> Profile:
    """The profile at `base_path` with both latency models taken from the parts."""
    base = load_profile(base_path)
    data = base.profile.model_dump(mode="json")
    data["draft_latency"] = draft_part.values["draft_latency"]
    data["target_latency"] = target_part.values["target_latency"]
    provenance = data["provenance"]
    notes = dict(provenance["notes"])
    for part in (draft_part, target_part):
        notes.update({key: note for key, note in part.notes.items() if "latency" in key})
        notes.update({key: note for key, note in part.notes.items() if ".fit." in key})
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    notes["recalibrated"] = (
        f"draft_latency and target_latency re-measured at {created} just before the real run "
        f"({command}); everything else as in {base_path} (sha256 {base.sha256[:12]})"
    )
    provenance.update(created=created, command=command, notes=notes)
    for part in (draft_part, target_part):
        provenance["machine"].update({f"{part.kind}.{k}": v for k, v in part.machine.items()})
    return Profile.model_validate(data)


def recalibrated_profile(
    base_path: Path,
    draft: Path,
    draft_threads: int,
    target: Path | str,
    target_threads: int,
    out_dir: Path,
    say: Callable[[str], None],
    command: str,
    target_backend: str = "llama",
    target_device: str = "cpu",
    extent: Extent | None = None,
) -> Path:
    """Measure both models now (up to `extent`, see `measure_parts`) and write
    OUT/draft.json, OUT/target.json (the parts) and OUT/profile.json (see the module
    docstring); returns the profile's path."""
    if not base_path.is_file():
        raise ConfigError("--profile", "", f"profile file {str(base_path)!r} not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    draft_part, target_part = measure_parts(
        draft, draft_threads, target, target_threads, say, command, target_backend, target_device,
        extent,
    )  # fmt: skip
    save_part(draft_part, out_dir / "draft.json")
    save_part(target_part, out_dir / "target.json")
    profile = replace_latencies(base_path, draft_part, target_part, command)
    path = out_dir / "profile.json"
    write_profile(profile, path)
    return path


def recalibrate_for_run(
    base_path: Path,
    options: LocalOptions,
    points: Sequence[SweepPoint],
    out_dir: Path,
    quiet: bool,
    command: str,
) -> Path:
    """`recalibrated_profile` for a validation run: its models, threads and backend, with the
    grids carried up to the longest prompt and context of any of its sweep points."""
    extents = [run_extent(point.scenario, options.draft) for point in points]
    extent = Extent(
        prompt_tokens=max(e.prompt_tokens for e in extents),
        context_tokens=max(e.context_tokens for e in extents),
    )
    return recalibrated_profile(
        base_path, options.draft, options.draft_threads, options.target, options.target_threads,
        out_dir, (lambda _line: None) if quiet else print, command, options.target_backend,
        options.target_device, extent,
    )  # fmt: skip


__all__ = ["Extent", "extended", "recalibrated_profile", "replace_latencies", "run_extent"]
