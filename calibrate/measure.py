"""Measure one part of a profile from typed options: the library behind `pipesd calibrate`.

`measure_draft(DraftOptions)`, `measure_power(PowerOptions)` and
`measure_acceptance(AcceptanceOptions)` live here; `measure_target` in
`calibrate.measure_target`, `measure_link` and `measure_wire` in `calibrate.measure_link`.
`measure(options)` runs whichever one the options are for. Each returns a `Part`
(`calibrate.assemble`) and turns a measurement's ValueError into a one-line `ConfigError`;
`say` receives progress lines, `command` is recorded in the part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from calibrate.acceptance import record_acceptance
from calibrate.acceptance_recording import samples, write_trace
from calibrate.assemble import Part, assemble, new_part, save_part, write_profile
from calibrate.draft import VISIT_STEPS, fit_measurements, profile_draft
from calibrate.fit import fit_acceptance
from calibrate.measure_link import measure_link, measure_wire
from calibrate.measure_target import measure_target
from calibrate.options import (
    AcceptanceOptions,
    DraftOptions,
    LinkOptions,
    MeasureOptions,
    PowerOptions,
    TargetOptions,
    WireOptions,
)
from calibrate.power import edge_power
from models.prompts import default_prompts, read_prompts
from models.registry import resolve_model
from realrun.cloud.energy import PowerUnavailable
from simulator.errors import ConfigError
from simulator.profile import Profile, load_profile
from simulator.provenance import package_versions

Say = Callable[[str], None]


def measure_draft(options: DraftOptions, say: Say, command: str) -> Part:
    """Profile the draft model (llama.cpp on this CPU) and return its part."""
    path = resolve_model(str(options.model))
    try:
        measured = profile_draft(
            path,
            options.threads,
            list(options.prompt_lengths),
            list(options.context_lengths),
            options.repetitions,
            options.warmup,
            progress=say,
            burst=options.burst,
            pause_s=options.pause_ms / 1e3,
        )
        latency, reports = fit_measurements(measured)
    except ValueError as exc:
        raise ConfigError("calibrate draft", "", str(exc)) from None
    where = (
        f"measured with llama.cpp {measured.llama_cpp_version}, {options.threads} threads, "
        f"prompts {list(options.prompt_lengths)}, contexts {list(options.context_lengths)}, "
        f"{options.repetitions} repetitions after {options.warmup} warm-up"
        + (
            f"; decode steps in bursts of {options.burst} with {options.pause_ms:g} ms idle "
            "between them (the edge's duty cycle)"
            if options.burst
            else f"; decode steps back to back in visits of {VISIT_STEPS}"
        )
        + "; contexts visited in turn (interleaved rounds)"
    )
    values = {
        "draft_latency": latency.model_dump(),
        "payload.vocab_size": measured.n_vocab,
        "models.draft": {
            "name": path.name,
            "parameters_b": measured.n_params / 1e9,
            "quantisation": measured.file_type,
        },
    }
    notes = {
        "draft_latency": where,
        "payload.vocab_size": "the draft model's vocabulary (llama.cpp n_vocab)",
    }
    rows = measured.sample_rows()  # fitted, rejected and noise rows (calibrate.noise)
    versions = package_versions(["llama-cpp-python"])
    return new_part("draft", values, notes, reports, rows, versions, command)


def measure_power(options: PowerOptions, say: Say, command: str) -> Part:
    """Edge busy and idle package power (`calibrate.power.edge_power`)."""
    try:
        power = edge_power(options.package_watts, options.seconds, options.threads)
    except PowerUnavailable as exc:
        raise ConfigError("calibrate power", "", str(exc)) from None
    values = {"power.edge_busy_w": power.busy_w, "power.edge_idle_w": power.idle_w}
    notes = {"power.edge_busy_w": power.method, "power.edge_idle_w": power.method}
    return new_part("power", values, notes, {}, {}, {}, command)


def measure_acceptance(options: AcceptanceOptions, say: Say, command: str) -> Part:
    """Record per-position (confidence, accepted) of a real pair, fit the calibrated model and
    write the replay trace to `options.trace`."""
    prompts = read_prompts(options.prompts) if options.prompts else default_prompts()
    draft, target = resolve_model(str(options.draft)), resolve_model(str(options.target))
    try:
        recording = record_acceptance(
            draft,
            target,
            prompts,
            options.max_new_tokens,
            options.draft_len,
            threads=options.threads,
            progress=say,
        )
        model, report = fit_acceptance(samples(recording), bins=options.bins)
    except ValueError as exc:
        raise ConfigError("calibrate acceptance", "", str(exc)) from None
    trace = write_trace(recording, options.trace)
    how = (
        f"recorded with draft {draft.name} and target {target.name} (llama.cpp, greedy, "
        f"draft length {options.draft_len}) on {len(prompts)} prompts x "
        f"{options.max_new_tokens} tokens: acceptance {recording.acceptance_rate:.3f} of drafted "
        f"tokens, {recording.mean_accepted_per_round:.2f} accepted per round; replay trace "
        f"{trace.name}"
    )
    values = {"acceptance": model.model_dump(mode="json")}
    rows = [{"confidence": s.confidence, "accepted": int(s.accepted)} for s in samples(recording)]
    return new_part(
        "acceptance",
        values,
        {"acceptance": how},
        {"acceptance": report},
        {"positions": rows},
        package_versions(["llama-cpp-python"]),
        command,
    )


def measure(options: MeasureOptions, say: Say, command: str) -> Part:
    """The part that `options` describe, measured now."""
    if isinstance(options, DraftOptions):
        return measure_draft(options, say, command)
    if isinstance(options, TargetOptions):
        return measure_target(options, say, command)
    if isinstance(options, PowerOptions):
        return measure_power(options, say, command)
    if isinstance(options, LinkOptions):
        return measure_link(options, say, command)
    if isinstance(options, WireOptions):
        return measure_wire(options, say, command)
    return measure_acceptance(options, say, command)


PART_KINDS: dict[type, str] = {
    DraftOptions: "draft",
    TargetOptions: "target",
    PowerOptions: "power",
    LinkOptions: "link",
    WireOptions: "payload",
    AcceptanceOptions: "acceptance",
}
"""The part each options type measures."""


def measure_profile(
    name: str,
    steps: Sequence[MeasureOptions],
    base: Path,
    out: Path,
    command: str,
    progress: Callable[[str, str | None], None],
) -> Profile:
    """Measure every step in turn, each part saved to OUT.parts/<kind>.json as it finishes,
    then write the profile `name` to `out` (`base` gives every section no part measured).

    `progress(kind, line)` receives each step's progress lines, and `line=None` once its part
    is saved."""
    base_profile = load_profile(base)
    parts_dir = out.with_suffix(".parts")
    parts = []
    for options in steps:
        kind = PART_KINDS[type(options)]

        def say(line: str, kind: str = kind) -> None:
            progress(kind, line)

        part = measure(options, say, command)
        save_part(part, parts_dir / f"{kind}.json")
        parts.append(part)
        progress(kind, None)
    profile = assemble(name, parts, base_profile, command)
    write_profile(profile, out)
    return profile


__all__ = [
    "PART_KINDS",
    "measure",
    "measure_acceptance",
    "measure_draft",
    "measure_link",
    "measure_power",
    "measure_profile",
    "measure_target",
    "measure_wire",
]
