"""Scenario files (TOML): what to simulate, validated into typed objects.

A scenario names a profile, overrides parts of it (edge speed, link, acceptance), says which
prompts to run and which policies to compare, with which seeds, optionally over a sweep grid.
Overrides (`--set a.b=v`) and sweep axes address fields by dotted path; a policy's parameter is
`policies.<label>.<param>`. The file's sections are modelled in `simulator.scenario_sections`.
"""

from __future__ import annotations

import copy
import itertools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from policies.registry import params_model, policy_names
from simulator.acceptance import ReplayTraces
from simulator.acceptance_spec import IIDAcceptance, ReplayAcceptance
from simulator.compute import ComputeTrace
from simulator.errors import ConfigError, from_validation_error, render_value
from simulator.inputs import MAX_DEPTH, check_data, load_toml
from simulator.link import TraceBandwidth
from simulator.link_jitter import UplinkJitter
from simulator.profile import LoadedProfile, load_profile
from simulator.scenario_sections import PayloadSection, PolicyEntry, ScenarioModel

MAX_SWEEP_POINTS = 10_000
"""Most sweep points one run expands to (the grid is the product of the axes' lengths)."""


@dataclass(frozen=True)
class Scenario:
    """A validated scenario point: the model, its policies, the profile, and where it lives."""

    model: ScenarioModel
    policies: tuple[PolicyEntry, ...]
    profile: LoadedProfile
    path: Path
    raw: dict[str, Any]
    group_profiles: tuple[LoadedProfile | None, ...] = ()
    """Each `[[edge_groups]]` entry's own profile, or None where it uses the scenario's."""

    def edge_profile(self, group: int | None) -> LoadedProfile:
        """The profile of an edge group (None: the single default edge)."""
        own = self.group_profiles[group] if group is not None else None
        return own or self.profile

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the scenario are resolved against."""
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        """A path named in the scenario, resolved against its folder."""
        return (self.base_dir / relative).resolve()


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep grid: its axis values and the scenario there."""

    index: int
    axes: dict[str, Any]
    scenario: Scenario


def parse_value(text: str, flag: str = "--set", key: str = "") -> Any:
    """A command-line value as TOML would read it (number, bool, list, string), else the text;
    a value nested too deeply is a ConfigError naming `flag` and `key`."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError(flag, key, f"value nested more than {MAX_DEPTH} levels deep") from None
    check_data(value, flag, key)
    return value


def _policy_index(source: Path, policies: Any, key: str, dotted: str) -> int:
    if not isinstance(policies, list):
        raise ConfigError(source, dotted, "no [[policies]] list to address")
    for i, entry in enumerate(policies):
        if isinstance(entry, dict) and key in (entry.get("label"), entry.get("name")):
            return i
    labels = [str(e.get("label", e.get("name"))) for e in policies if isinstance(e, dict)]
    raise ConfigError(source, dotted, f"no policy labelled {key!r} (allowed: {', '.join(labels)})")


def set_path(raw: dict[str, Any], dotted: str, value: Any, source: Path) -> None:
    """Set `dotted` (e.g. `link.uplink_mbps`, `policies.pipesd.r1`) in a raw scenario dict."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(source, dotted, "not a valid dotted field path")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if part == "policies" and i == 0:
            index = _policy_index(source, raw.get("policies"), parts[1], dotted)
            node = raw["policies"][index]
            rest = parts[2:]
            if not rest:
                raise ConfigError(source, dotted, "name a policy parameter after the label")
            for sub in rest[:-1]:
                node = node.setdefault(sub, {})
                if not isinstance(node, dict):
                    raise ConfigError(source, dotted, f"{sub!r} is not a table")
            node[rest[-1]] = value
            return
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(source, dotted, f"{part!r} is not a table")
        node = child
    node[parts[-1]] = value


def _policy_payload(
    source: Path, label: str, default: PayloadSection, override: Any
) -> PayloadSection:
    """The scenario's [payload] with a policy's own `payload` table over it."""
    if override is None:
        return default
    if not isinstance(override, dict):
        raise ConfigError(source, f"policies.{label}.payload", "must be a table")
    try:
        return PayloadSection.model_validate(default.model_dump() | override)
    except ValidationError as exc:
        prefix = f"policies.{label}.payload"
        raise from_validation_error(source, exc, PayloadSection, prefix=prefix) from None


def _validate_policies(
    source: Path, entries: list[dict[str, Any]], default_payload: PayloadSection
) -> tuple[PolicyEntry, ...]:
    known = policy_names()
    result: list[PolicyEntry] = []
    labels: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"policies[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(source, where, "each [[policies]] entry must be a table")
        name = entry.get("name")
        if name not in known:
            problem = "required field is missing" if name is None else "unknown policy"
            if name is not None:
                problem += f" {render_value(name)}"
            raise ConfigError(source, f"{where}.name", f"{problem} (allowed: {', '.join(known)})")
        label = entry.get("label", name)
        if not isinstance(label, str) or not label:
            raise ConfigError(source, f"{where}.label", "must be a non-empty string")
        if label in labels:
            raise ConfigError(source, f"{where}.label", f"duplicate label {label!r}")
        labels.add(label)
        params = {k: v for k, v in entry.items() if k not in ("name", "label", "payload")}
        payload = _policy_payload(source, label, default_payload, entry.get("payload"))
        model = params_model(name)
        try:
            validated = model.model_validate(params)
        except ValidationError as exc:
            raise from_validation_error(source, exc, model, prefix=f"policies.{label}") from None
        result.append(PolicyEntry(name=name, label=label, params=validated, payload=payload))
    return tuple(result)


def validate_scenario(raw: dict[str, Any], path: Path) -> Scenario:
    """Validate a raw scenario dict (sweep table removed) into a Scenario."""
    try:
        model = ScenarioModel.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(path, exc, ScenarioModel) from None
    policies = _validate_policies(path, model.policies, model.payload)
    labels = [p.label for p in policies]
    if model.reference_policy not in labels:
        raise ConfigError(
            path,
            "reference_policy",
            f"{model.reference_policy!r} is not a policy label here (allowed: {', '.join(labels)})",
        )
    profile = load_profile(_named_file(path, "profile", model.profile, "profile"))
    group_profiles = tuple(
        load_profile(_named_file(path, f"edge_groups[{i}].profile", g.profile, "profile"))
        if g.profile
        else None
        for i, g in enumerate(model.edge_groups)
    )
    # traces are read here as well as by the engine, so a bad one fails before anything runs
    for field in ("uplink_trace", "downlink_trace"):
        trace = getattr(model.link, field)
        if trace is not None:
            trace_path = _named_file(path, f"link.{field}", trace, "trace")
            TraceBandwidth.from_csv(trace_path, model.link.trace_repeat)
        for i, group in enumerate(model.edge_groups):
            trace = getattr(group, field)
            if trace is not None:
                trace_path = _named_file(path, f"edge_groups[{i}].{field}", trace, "trace")
                TraceBandwidth.from_csv(trace_path, model.link.trace_repeat)
    if model.link.uplink_jitter is not None:
        jitter = model.link.uplink_jitter
        UplinkJitter.from_csv(_named_file(path, "link.uplink_jitter", jitter, "jitter"))
    edge_repeat = model.edge.compute_trace_repeat  # groups follow [edge]'s
    compute_traces = [
        ("edge.compute_trace", model.edge.compute_trace, edge_repeat),
        ("edge.prefill_compute_trace", model.edge.prefill_compute_trace, edge_repeat),
        ("cloud.compute_trace", model.cloud.compute_trace, model.cloud.compute_trace_repeat),
        *(
            (f"edge_groups[{i}].compute_trace", group.compute_trace, edge_repeat)
            for i, group in enumerate(model.edge_groups)
        ),
    ]
    for where, trace, repeat in compute_traces:
        if trace is not None:
            ComputeTrace.from_csv(_named_file(path, where, trace, "trace"), repeat)
    group_labels: set[str] = set()
    for i, group in enumerate(model.edge_groups):
        if group.arrival == "poisson" and group.rate_per_s is None:
            raise ConfigError(
                path, f"edge_groups[{i}].rate_per_s", "required when arrival = 'poisson'"
            )
        if group.label and group.label in group_labels:
            raise ConfigError(path, f"edge_groups[{i}].label", f"duplicate label {group.label!r}")
        group_labels.add(group.label)
    owner, acceptance = (
        (path, model.acceptance)
        if model.acceptance is not None
        else (profile.path, profile.profile.acceptance)
    )
    if isinstance(acceptance, ReplayAcceptance):
        ReplayTraces.load(_named_file(owner, "acceptance.trace", acceptance.trace, "trace"))
    for i, own in enumerate(group_profiles):
        own_acceptance = own.profile.acceptance if own else None
        if model.acceptance is None and isinstance(own_acceptance, ReplayAcceptance):
            assert own is not None
            field = f"edge_groups[{i}].profile: acceptance.trace"
            ReplayTraces.load(_named_file(own.path, field, own_acceptance.trace, "trace"))
    _check_policy_needs(path, policies, model, profile, group_profiles)
    return Scenario(
        model=model,
        policies=policies,
        profile=profile,
        path=path,
        raw=raw,
        group_profiles=group_profiles,
    )


def _check_policy_needs(
    path: Path,
    policies: tuple[PolicyEntry, ...],
    model: ScenarioModel,
    profile: LoadedProfile,
    group_profiles: tuple[LoadedProfile | None, ...],
) -> None:
    """Policies that need more than the basics: split inference a profile `split` section,
    DiP-SD an i.i.d. acceptance model (its optimiser's assumption) and a fixed plan one draft
    length per edge."""
    used = [profile, *(p for p in group_profiles if p is not None)]
    for entry in policies:
        for loaded in used:
            acceptance = model.acceptance or loaded.profile.acceptance
            if entry.name == "split" and loaded.profile.split is None:
                problem = f"policy {entry.label!r} needs this section in the profile"
                raise ConfigError(loaded.path, "split", problem)
            if entry.name == "dipsd" and not isinstance(acceptance, IIDAcceptance):
                problem = f"policy {entry.label!r} needs the 'iid' acceptance model"
                raise ConfigError(path, "acceptance.kind", problem)
        plan = getattr(entry.params, "plan", None)  # DiP-SD's fixed plan: one length per edge
        edges = sum(group.count for group in model.edge_groups) or 1
        if plan is not None and len(plan.lengths) != edges:
            problem = f"plans {len(plan.lengths)} edges; the scenario has {edges}"
            raise ConfigError(path, f"policies.{entry.label}.plan.lengths", problem)


def _named_file(owner: Path, field: str, relative: str, what: str) -> Path:
    """A file named by `field` of `owner`, resolved against owner's folder; it must exist."""
    target = (owner.parent / relative).resolve()
    if not target.is_file():
        raise ConfigError(owner, field, f"{what} file {relative!r} not found")
    return target


def read_scenario_file(path: str | Path) -> dict[str, Any]:
    """Read a scenario TOML file into a raw dict (a regular file, bounded in size and nesting,
    finite numbers only); bad input raises ConfigError."""
    return load_toml(Path(path), "scenario")


def parse_assignment(text: str, flag: str) -> tuple[str, str]:
    """Split `key=value` given to a command-line flag."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(flag, text.strip(), "expected key=value")
    return key.strip(), value.strip()


def _covers(key: str, field: str) -> bool:
    """Whether an error at dotted `field` lies at or inside the dotted path `key`."""
    return field == key or field.startswith((key + ".", key + "["))


def expand_sweep(
    path: str | Path,
    overrides: list[str] | None = None,
    sweeps: list[str] | None = None,
) -> list[SweepPoint]:
    """Read a scenario, apply `--set` overrides, and expand its sweep grid into points.

    `sweeps` entries are `axis=v1,v2,...` and add to (or replace) the file's [sweep] axes.
    Every point is validated, so a bad axis value fails before anything runs.
    """
    path = Path(path)
    raw = read_scenario_file(path)
    axes_raw = raw.pop("sweep", {})
    if not isinstance(axes_raw, dict):
        raise ConfigError(path, "sweep", "must be a table of axis = [values]")
    # where each overridden field's value comes from, so errors blame the flag or the axis
    origins: dict[str, tuple[Path, str]] = {}
    for text in overrides or []:
        key, value = parse_assignment(text, "--set")
        set_path(raw, key, parse_value(value, "--set", key), Path("--set"))
        origins[key] = (Path("--set"), key)
    axes: dict[str, list[Any]] = {}
    for axis, values in axes_raw.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(path, f"sweep.{axis}", "must be a non-empty list of values")
        axes[axis] = values
        origins[axis] = (path, f"sweep.{axis}")
    for text in sweeps or []:
        key, value = parse_assignment(text, "--sweep")
        axes[key] = [parse_value(v.strip(), "--sweep", key) for v in value.split(",") if v.strip()]
        if not axes[key]:
            raise ConfigError(Path("--sweep"), key, "give at least one value")
        origins[key] = (Path("--sweep"), key)
    names = list(axes)
    count = math.prod(len(axes[a]) for a in names)
    if count > MAX_SWEEP_POINTS:
        problem = f"{count} sweep points; at most {MAX_SWEEP_POINTS} in one run"
        raise ConfigError(origins[names[0]][0], "", problem)
    points: list[SweepPoint] = []
    for index, combo in enumerate(itertools.product(*(axes[a] for a in names))):
        point_raw = copy.deepcopy(raw)
        for axis, value in zip(names, combo, strict=True):
            set_path(point_raw, axis, value, origins[axis][0])
        try:
            scenario = validate_scenario(point_raw, path)
        except ConfigError as exc:
            keys = [k for k in origins if _covers(k, exc.field)]
            # a flag that set a field's sibling (acceptance.kind -> acceptance.trace) is blamed
            # before the file
            keys = keys or [
                k
                for k, (source, _) in origins.items()
                if source != path and "." in k and _covers(k.rpartition(".")[0], exc.field)
            ]
            if exc.source != str(path) or not keys:
                raise
            key = keys[0]
            source, field = origins[key]
            if not _covers(key, exc.field):
                raise ConfigError(source, key, f"{exc.field}: {exc.problem}") from None
            raise ConfigError(source, field + exc.field[len(key) :], exc.problem) from None
        axes_here = dict(zip(names, combo, strict=True))
        points.append(SweepPoint(index=index, axes=axes_here, scenario=scenario))
    return points
