"""A scenario's policies run on the real testbed: the edge drafts with llama.cpp, the cloud
verifies over HTTP, and results are written in the simulator's schema (summary.csv,
results.csv, manifest.json) plus every request's timeline.

What the testbed cannot take from the scenario yet: link shaping (the link is whatever lies
between edge and server), many edges, and policies that are not edge-drafting (cloud-only,
split inference) or need the future (oracle); those are listed as skipped in the manifest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policies.base import Mode
from policies.registry import POLICIES, make_policy
from simulator.engine import Span, policy_seed
from simulator.records import RECORD_FIELDS
from simulator.results import write_json, write_table
from simulator.runner import (
    Task,
    TaskOutcome,
    manifest,
    request_rows,
    summary_columns,
    summary_rows,
)
from simulator.scenario import SweepPoint


def skip_reason(name: str) -> str | None:
    """Why a policy cannot run on the testbed (None: it can)."""
    policy_class = POLICIES[name][1]
    if getattr(policy_class, "mode", Mode.SPECULATIVE) != Mode.SPECULATIVE:
        return "not an edge-drafting policy"
    if getattr(policy_class, "is_oracle", False):
        return "needs future acceptance outcomes"
    if getattr(policy_class, "uses_fleet_plan", False):
        return "needs a fleet of edges"
    return None


def run_testbed(
    scenario_path: Path,
    point: SweepPoint,
    server: str,
    draft_path: Path,
    threads: int,
    out_dir: Path,
    command: list[str],
    token: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every runnable policy of `point` on the testbed; returns the summary rows."""
    import llama_cpp

    from calibrate.acceptance import default_prompts, format_prompt
    from realrun.client import CloudClient
    from realrun.edge import run_edge

    scenario = point.scenario
    model = scenario.model
    prompts = default_prompts()
    draft = llama_cpp.Llama(
        model_path=str(draft_path),
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=2048,
        logits_all=False,
        flash_attn=True,
        verbose=False,
        seed=0,
    )
    outcomes: dict[int, list[TaskOutcome]] = {}
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    with CloudClient(server, token) as cloud:
        for index, entry in enumerate(scenario.policies):
            reason = skip_reason(entry.name)
            if reason:
                skipped[entry.label] = reason
                continue
            for seed in model.seeds:
                policy = make_policy(entry.name, entry.params, policy_seed(seed, entry.label))
                origin = time.perf_counter()
                records, spans = [], []
                for request in range(model.prompts.count):
                    tokens = format_prompt(draft, prompts[request % len(prompts)])
                    record, _, timeline = run_edge(
                        policy,
                        draft,
                        cloud,
                        tokens,
                        model.prompts.max_new_tokens,
                        request_index=request,
                        clock_origin=origin,
                    )
                    records.append(record)
                    spans.extend(timeline)
                    if progress is not None:
                        progress(f"{entry.label} seed {seed} request {request}")
                outcome = TaskOutcome(
                    point=point.index,
                    policy_index=index,
                    seed=seed,
                    records=records,
                    policy_state=policy.state(),
                    cloud_busy_s=sum(r.cloud_busy_s for r in records),
                    cloud_jobs=sum(r.navs for r in records),
                    cloud_batches=sum(r.navs for r in records),
                    edges=1,
                    plan_throughput_tokens_per_s=math.nan,
                )
                outcomes.setdefault(index, []).append(outcome)
                task = Task(point, index, seed)
                rows.extend(request_rows(task, outcome))
                name = f"timeline_p{point.index}_{index}_{entry.label}_s{seed}.csv"
                write_table(
                    out_dir / "timelines" / name,
                    list(Span._fields),
                    (s._asdict() for s in spans),
                )
    axes = list(point.axes)
    columns = ["point", *axes, "policy", "policy_name", "seed", *RECORD_FIELDS, "ttft_ms", "tpt_ms"]
    write_table(out_dir / "results.csv", columns, rows)
    summary = [r for r in summary_rows(point, outcomes) if r["seeds"]]
    write_table(out_dir / "summary.csv", summary_columns([point]), summary)
    data = manifest(scenario_path, [point], command, "complete", "")
    data["testbed"] = {
        "server": server,
        "draft": str(draft_path),
        "threads": threads,
        "skipped": skipped,
        "link": "not shaped: whatever lies between this edge and the server",
    }
    write_json(out_dir / "manifest.json", data)
    return summary
