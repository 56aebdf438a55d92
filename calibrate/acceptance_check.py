"""The policy-level check of a fitted acceptance model against replayed held-out traces.

For every policy of a scenario (e.g. PipeSD's S1), the scenario is simulated twice with the
same seeds: with its acceptance replaced by the fitted model, and by a replay of the held-out
traces. TPT, NAV count and mean draft length are compared policy by policy; the model passes
when, for each of the three figures, the median over the policies that draft of the relative
difference is within `TOLERANCE`. Policies that never draft (cloud_ar) have no draft length
and an identical TPT under both: they are shown but left out of the medians.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.acceptance_spec import HmmAcceptance
from simulator.engine import simulate
from simulator.metrics import summarise
from simulator.scenario import read_scenario_file, validate_scenario

TOLERANCE = 0.03
"""Median |fitted - replay| / replay over policies, per figure."""

FIGURES = ("tpt_ms", "nav_count", "mean_draft_len")
"""The figures compared."""


@dataclass(frozen=True)
class PolicyRow:
    """One policy's figures under the fitted model and under replay."""

    label: str
    fitted: dict[str, float]
    replay: dict[str, float]

    @property
    def drafts(self) -> bool:
        """Whether the policy drafted at all (its mean draft length is a number > 0)."""
        value = self.replay["mean_draft_len"]
        return math.isfinite(value) and value > 0

    def error(self, figure: str) -> float:
        """|fitted - replay| / replay for one figure."""
        return abs(self.fitted[figure] - self.replay[figure]) / abs(self.replay[figure])


def policy_figures(
    raw: dict[str, Any], path: Path, acceptance: dict[str, Any] | None
) -> dict[str, dict[str, float]]:
    """Per policy label, FIGURES over the scenario's seeds (`acceptance` None: the profile's)."""
    raw = copy.deepcopy(raw)
    if acceptance is not None:
        raw["acceptance"] = acceptance
    scenario = validate_scenario(raw, path)
    seeds = scenario.model.seeds
    out = {}
    for entry in scenario.policies:
        records = [r for seed in seeds for r in simulate(scenario, entry, seed).records]
        summary = summarise(records, len(seeds))
        out[entry.label] = {f: float(summary[f]) for f in FIGURES}
    return out


def check_scenario(
    scenario: Path, prompts: int | None, seeds: list[int] | None, policies: list[str] | None
) -> dict[str, Any]:
    """The scenario's raw table without its sweep, with the check's requests, seeds and
    policies."""
    raw = read_scenario_file(Path(scenario))
    raw.pop("sweep", None)
    if prompts is not None:
        raw.setdefault("prompts", {})["count"] = prompts
    if seeds is not None:
        raw["seeds"] = list(seeds)
    if policies is not None:
        kept = [p for p in raw["policies"] if p.get("label", p["name"]) in policies]
        raw["policies"] = kept
        if raw.get("reference_policy", "vanilla") not in policies:
            raw["reference_policy"] = kept[0].get("label", kept[0]["name"])
    return raw


def replay_of(trace: Path) -> dict[str, Any]:
    """The acceptance table replaying `trace` (absolute path: scenarios resolve relative ones)."""
    return {"kind": "replay", "trace": str(Path(trace).resolve())}


def policy_check(
    scenario: Path,
    model: HmmAcceptance,
    heldout_trace: Path,
    prompts: int | None = None,
    seeds: list[int] | None = None,
    policies: list[str] | None = None,
) -> list[PolicyRow]:
    """Simulate every policy of `scenario` under `model` and under a replay of `heldout_trace`
    (optionally with fewer prompts, other seeds, or only the policies labelled in `policies`)."""
    raw = check_scenario(scenario, prompts, seeds, policies)
    fitted = policy_figures(raw, Path(scenario), model.model_dump(mode="json"))
    replay = policy_figures(raw, Path(scenario), replay_of(heldout_trace))
    return [PolicyRow(label, fitted[label], replay[label]) for label in fitted]


SEED_SHIFT = 1_000_000
"""The noise reference's seeds: the check's, shifted by this."""


def with_shifted_seeds(raw: dict[str, Any]) -> dict[str, Any]:
    """The check's scenario table with its seeds shifted by SEED_SHIFT (the noise reference)."""
    return {**copy.deepcopy(raw), "seeds": [seed + SEED_SHIFT for seed in raw.get("seeds", [0])]}


def reference_rows(
    scenario: Path,
    heldout_trace: Path,
    fitting_trace: Path | None,
    prompts: int | None = None,
    seeds: list[int] | None = None,
    policies: list[str] | None = None,
) -> dict[str, list[PolicyRow]]:
    """What the check would show with no model at all, to read its medians against:
    "noise", the held-out replay under other seeds (the simulation's own sampling noise), and,
    given the fitting traces, "fitting traces", their replay (the difference between the two
    prompt sets, which no model fitted to one of them can remove)."""
    raw = check_scenario(scenario, prompts, seeds, policies)
    path = Path(scenario)
    replay = policy_figures(raw, path, replay_of(heldout_trace))
    others = {"noise": policy_figures(with_shifted_seeds(raw), path, replay_of(heldout_trace))}
    if fitting_trace is not None:
        others["fitting traces"] = policy_figures(raw, path, replay_of(fitting_trace))
    return {
        name: [PolicyRow(label, figures[label], replay[label]) for label in figures]
        for name, figures in others.items()
    }


def medians(rows: list[PolicyRow]) -> dict[str, float]:
    """Per figure, the median relative difference over the policies that draft."""
    drafting = [r for r in rows if r.drafts]
    return {f: statistics.median(r.error(f) for r in drafting) for f in FIGURES}


def table_lines(rows: list[PolicyRow], noise: list[PolicyRow] | None = None) -> list[str]:
    """The table: per policy, each figure fitted / replay and the relative difference; with
    `noise` (the replay against itself under other seeds), each policy's own noise beside it
    (PipeSD's tuned variants: one tuning run per seed, so several percent)."""
    own = {r.label: r for r in noise or []}
    head = f"{'policy':24}" + "".join(f" {f + ' fit/replay (diff)':>34}" for f in FIGURES)
    lines = [head + ("   noise: " + " / ".join(FIGURES) if own else "")]
    for r in rows:
        cells = []
        for f in FIGURES:
            diff = f"{100 * r.error(f):5.1f}%" if r.drafts else "   -  "
            cells.append(f" {r.fitted[f]:11.3f} / {r.replay[f]:11.3f} ({diff})")
        if r.label in own and r.drafts:
            cells.append("   " + " / ".join(f"{100 * own[r.label].error(f):.1f}%" for f in FIGURES))
        lines.append(f"{r.label:24}" + "".join(cells))
    med = medians(rows)
    verdict = all(v <= TOLERANCE for v in med.values())
    lines.append(
        "median over drafting policies: "
        + ", ".join(f"{f} {100 * v:.2f}%" for f, v in med.items())
        + f" -> {'within' if verdict else 'NOT within'} {100 * TOLERANCE:.0f}%"
    )
    return lines


def kendall_tau(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> float:
    """Kendall's tau-a between two TPT rankings of the same policies (ties count as 0)."""
    labels = list(a)
    score, pairs = 0.0, 0
    for i, x in enumerate(labels):
        for y in labels[i + 1 :]:
            da = a[x]["tpt_ms"] - a[y]["tpt_ms"]
            db = b[x]["tpt_ms"] - b[y]["tpt_ms"]
            score += (da > 0) - (da < 0) if db > 0 else ((da < 0) - (da > 0) if db < 0 else 0)
            pairs += 1
    return score / pairs if pairs else math.nan


def sensitivity_lines(
    scenarios: list[Path], model: HmmAcceptance, trace: Path, profile_label: str
) -> list[str]:
    """Markdown: per scenario, each policy's TPT and rank (1 = fastest) under the profile's own
    acceptance (`profile_label`), the fitted model, and a replay of `trace`."""
    variants: dict[str, dict[str, Any] | None] = {
        profile_label: None,
        "fitted HMM": model.model_dump(mode="json"),
        "replay": {"kind": "replay", "trace": str(Path(trace).resolve())},
    }
    lines = []
    for scenario in scenarios:
        path = Path(scenario)
        raw = read_scenario_file(path)
        raw.pop("sweep", None)
        tpt = {name: policy_figures(raw, path, acc) for name, acc in variants.items()}
        ranks = {
            name: {label: i + 1 for i, label in enumerate(sorted(t, key=lambda k: t[k]["tpt_ms"]))}
            for name, t in tpt.items()
        }
        names = list(variants)
        lines += [
            f"**{path.stem}** (TPT ms, rank)",
            "",
            "| policy | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for label in tpt[names[0]]:
            cells = [f"{tpt[n][label]['tpt_ms']:.1f} ({ranks[n][label]})" for n in names]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        taus = ", ".join(
            f"{n} {kendall_tau(tpt[n], tpt['replay']):.2f}" for n in names if n != "replay"
        )
        lines += ["", f"Kendall tau of the TPT ranking with replay's: {taus}.", ""]
    return lines


__all__ = [
    "FIGURES",
    "TOLERANCE",
    "PolicyRow",
    "check_scenario",
    "kendall_tau",
    "medians",
    "policy_check",
    "policy_figures",
    "reference_rows",
    "replay_of",
    "sensitivity_lines",
    "table_lines",
    "with_shifted_seeds",
]
