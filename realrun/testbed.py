"""A scenario's policies run on the real testbed: the edge drafts with llama.cpp, the cloud
verifies over HTTP, and results are written in the simulator's schema (summary.csv,
results.csv, manifest.json) plus every request's timeline.

Each (policy, seed) run is one edge session, as one simulation is in the simulator: its clock
(and the caller's trace replay, `on_start`) starts at 0, the policy's start-up probes go first,
then the scenario's requests run back to back. Sessions go seed by seed, every policy within
a seed (policies interleaved in time, so the machine's drift does not rank them). With
`acceptance="synthetic"` every request
faces the simulator's acceptance outcomes for the same (seed, edge 0, request). With
`sampling` the edge drafts by sampling and the server verifies by speculative sampling
(realrun.edge.executor, "Sampling"), each request seeded by its (seed, request), so a run is
reproducible; greedy otherwise. In a sampling run a policy whose payload sets `downlink_top_k`
(PicoSpec) is verified at the edge on the target's top-K instead (`edge_top_k`; results.csv's
`verification` and the manifest say which ran).

One sweep point per call (the caller loops over points, each with its own output folder).
What the testbed cannot take from the scenario: many edges, and policies that are not
edge-drafting (cloud-only, split inference), need the true costs (oracle) or a fleet plan;
those are listed as skipped in the manifest. The link is whatever lies between edge and
server (`transport` and `link_info` say how the caller shaped it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.prompts import family_prompts, format_prompt
from policies.registry import POLICIES, make_policy
from policies.seeding import policy_seed
from realrun.testbed_rules import (
    SamplingSpec,
    acceptance_model,
    check_body_limit,
    check_sampling,
    check_vocabularies,
    edge_top_k,
    entry_skip_reason,
    full_row_bytes,
    refill_s,
    sampling_info,
    sampling_top_k,
    tokens_per_message,
    verification,
)
from simulator.errors import ConfigError
from simulator.records import RECORD_FIELDS, Span
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

if TYPE_CHECKING:
    import httpx

    from realrun.request_costs import Answer

ACCEPTANCE = ("real", "synthetic")
"""Where acceptance comes from: the target's own verification, or the scenario's model."""

OUTPUT_COLUMNS = ("point", "policy", "seed", "request", "tokens")
"""outputs.csv: each request's output token ids, space-separated (request r's prompt is the
scenario's prompt family's r-th, cycling), so that the output can be checked against the
target's own greedy output (validation.lossless)."""

COMPUTE_FILES = {"edge": "compute_edge.csv", "cloud": "compute_cloud.csv"}
"""The speed each request's draft and target ran at against the profile, per session (its
t_s from the session's start): compute traces the simulator can replay (validation)."""

VERIFICATION_COLUMNS = ("verification", "downlink_top_k")
"""results.csv columns the testbed adds to the simulator's: "edge_topk" (PicoSpec's edge-side
verification on the target's top-`downlink_top_k`) or "server" (`downlink_top_k` 0)."""


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
    transport: httpx.BaseTransport | None = None,
    link_info: dict[str, Any] | None = None,
    acceptance: str = "real",
    on_start: Callable[[], None] | None = None,
    cloud_timeout_s: float = 10.0,
    uplink_meter: Callable[[], float | None] | None = None,
    speed_probe: bool = False,
    sampling: SamplingSpec | None = None,
    edge: int = 0,
    only: tuple[int, str] | None = None,
    batch_sizes: bool = False,
    fleet_plan: tuple[tuple[tuple[int, ...], ...], int] | None = None,
) -> list[dict[str, Any]]:
    """Run every runnable policy of `point` on the testbed; returns the summary rows.

    `edge`: which edge of the scenario this is (its synthetic acceptance stream, and the
    `edge` of its records; realrun.fleet runs one process per edge). `only`: run just this
    (seed, policy label) session. `batch_sizes`: write OUT/batches.csv, the size of the
    cloud's batch each of this edge's NAVs was verified in and that batch's target time (the
    server's answer), and count each record's `cloud_busy_s` as the simulator does (its share:
    each batch's target time split among its NAVs, plus its prefill).
    `fleet_plan`: (a DiP-SD plan's batches, this edge's draft length), realrun.fleet's: a
    fleet-plan policy runs with that length and seats its sessions in the plan on the server
    (its last request's session retires the edge there).

    `transport`: the httpx transport of the edge's client (a software link shaper), closed
    with it. `link_info`: the manifest's `testbed.link` entry. `acceptance`: "real" or
    "synthetic" (ConfigError otherwise). `on_start`: called at the start of each (policy,
    seed) session, before its probes and first request. `cloud_timeout_s`: the client's
    timeout. `uplink_meter`: the link's count of uplink bytes so far in the simulator's units
    (ShapedLink.uplink_payload_bytes); where it gives one, each request's `uplink_bytes` is
    its difference over the request (bytes on the wire, as the simulator counts them) instead
    of the msgpack bodies' lengths. `speed_probe`: before each (policy, seed) session, time
    realrun.edge.speed_probe's reference workload, write OUT/speeds.csv and wait for the link's
    buckets to refill. `sampling`: speculative sampling (ConfigError with synthetic acceptance
    or bad values: `check_sampling`); the edge of request r under seed s samples with
    `EdgeSampling(temperature, top_k, s)` (realrun.edge.executor: its draws and the server session's
    seed come from (s, r)). The server must answer `/v1/health` at the start
    (httpx.HTTPError otherwise); later, a request that fails (a dead server, a timeout) is
    finished by the draft alone (realrun.edge.executor, `local_tokens` in results.csv), and the next
    request tries the cloud again.
    """
    if acceptance not in ACCEPTANCE:
        raise ConfigError("acceptance", "", f"must be one of {', '.join(ACCEPTANCE)} "
                          f"(got {acceptance!r})")  # fmt: skip
    scenario = point.scenario
    top_k = check_sampling(sampling, scenario, acceptance)
    import llama_cpp  # optional: llama-cpp-python runs the edge's draft

    from realrun.edge.client import CloudClient  # optional: httpx
    from realrun.edge.drafts import EdgeSampling  # loads msgpack (optional) when imported
    from realrun.edge.executor import run_edge  # httpx, llama_cpp
    from realrun.edge.speed_probe import SpeedProbe, probe_speeds  # the same
    from realrun.edge.startup_probes import startup_probes  # httpx
    from realrun.request_costs import (  # the same
        COMPUTE_COLUMNS,
        EDGE_SPLIT_COLUMNS,
        NAV_COLUMNS,
        cloud_share_s,
        compute_rows,
        nav_rows,
    )

    model = scenario.model
    n_new = model.prompts.max_new_tokens
    max_draft = tokens_per_message(scenario)
    synthetic = acceptance_model(scenario) if acceptance == "synthetic" else None
    prompts = [p.text for p in family_prompts(model.prompts.family, model.prompts.split)]
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
    speeds: list[dict[str, Any]] = []
    compute: dict[str, list[dict[str, Any]]] = {"edge": [], "cloud": []}  # COMPUTE_FILES
    skipped: dict[str, str] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes: list[Answer] = []  # each NAV's (batch size, batch's target ms, arrival)
    prefill_ms: list[float] = []
    batch_rows: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []  # OUTPUT_COLUMNS, for validation's lossless check

    class SizedClient(CloudClient):
        """The client, noting the batch size of every verification's answer."""

        def verify(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            answer = super().verify(*args, **kwargs)
            size, ms = int(answer.get("batch_size", 1)), float(answer.get("target_ms", 0.0))
            sizes.append((size, ms, time.perf_counter()))
            return answer

        def open(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            answer = super().open(*args, plan=seat.get("plan"), **kwargs)
            prefill_ms.append(float(answer.get("prefill_ms", 0.0)))
            return answer

    seat: dict[str, Any] = {}  # the current request's place in a DiP-SD plan, if any

    try:
        with SizedClient(server, token, timeout=cloud_timeout_s, transport=transport) as cloud:
            # an unreachable server at the start is the caller's error
            health = cloud.health()
            check_vocabularies(int(draft.n_vocab()), int(health["n_vocab"]), acceptance)
            settings = health.get("settings", {})
            check_body_limit(scenario, int(settings.get("max_body_bytes", 0)), server, sampling)
            runnable = []
            for index, entry in enumerate(scenario.policies):
                reason = entry_skip_reason(entry, sampling)
                if fleet_plan is not None and POLICIES[entry.name][1].uses_fleet_plan:
                    reason = None
                if reason:
                    skipped[entry.label] = reason
                else:
                    runnable.append((index, entry))
            # seeds outermost: the machine's speed drifts over a run, and policy after policy
            # would hand each policy its own stretch of it (and a ranking of the drift)
            for seed in model.seeds:
                for index, entry in runnable:
                    if only is not None and only != (seed, entry.label):
                        continue
                    policy = make_policy(
                        entry.name, entry.params, policy_seed(seed, entry.label, edge)
                    )
                    planned = fleet_plan is not None and policy.uses_fleet_plan
                    if planned:
                        policy.on_fleet_plan(fleet_plan[1])  # type: ignore[index]
                    if speed_probe:
                        probe = probe_speeds(
                            draft,
                            cloud,
                            format_prompt(draft, prompts[0]),
                            scenario.profile.profile.draft_latency,
                            scenario.profile.profile.target_latency,
                        )
                        row = {"point": point.index, **point.axes}
                        speeds.append(row | {"policy": entry.label, "seed": seed, **probe.row()})
                        time.sleep(refill_s(point))
                    if on_start is not None:
                        on_start()
                    edge_sampling = (
                        EdgeSampling(
                            float(sampling.temperature),
                            sampling_top_k(scenario, sampling.top_k, entry.payload)[0],
                            seed,
                            downlink_top_k=edge_top_k(entry, sampling),
                        )
                        if sampling is not None
                        else None
                    )
                    row_bytes = full_row_bytes(scenario, entry) if sampling is None else None
                    origin = time.perf_counter()
                    startup_probes(policy, cloud)
                    sizes.clear()  # probes are no NAVs of a request
                    prefill_ms.clear()
                    records, spans = [], []
                    for request in range(model.prompts.count):
                        last = request == model.prompts.count - 1
                        seat["plan"] = (
                            {"batches": fleet_plan[0], "edge": edge, "last": last}  # type: ignore[index]
                            if planned
                            else None
                        )
                        tokens = format_prompt(draft, prompts[request % len(prompts)])
                        stream = synthetic.stream(seed, edge, request, n_new) if synthetic else None
                        before = uplink_meter() if uplink_meter is not None else None
                        record, output, timeline = run_edge(
                            policy,
                            draft,
                            cloud,
                            tokens,
                            n_new,
                            request_index=request,
                            max_draft_tokens=max_draft,
                            clock_origin=origin,
                            acceptance_stream=stream,
                            sampling=edge_sampling,
                            full_rows=row_bytes,
                        )
                        record.edge = edge
                        session = {"point": point.index, **point.axes, "policy": entry.label}
                        session |= {"seed": seed, "request": request}
                        costs = compute_rows(session, record, timeline, scenario.profile.profile)
                        for side, row in costs.items():
                            compute[side].append(row)
                        batch_rows.extend(
                            {"policy": entry.label, "seed": seed, "edge": edge,
                             "request": request} | row
                            for row in nav_rows(sizes, timeline, origin, record.prompt_len)
                        )  # fmt: skip
                        if batch_sizes:  # the request's share of the cloud, as simulated
                            record.cloud_busy_s = cloud_share_s(sizes, prefill_ms)
                        sizes.clear()
                        prefill_ms.clear()
                        after = uplink_meter() if before is not None else None
                        if before is not None and after is not None:
                            record.uplink_bytes = round(after - before)
                        records.append(record)
                        outputs.append({"point": point.index, "policy": entry.label,
                                        "seed": seed, "request": request,
                                        "tokens": " ".join(map(str, output))})  # fmt: skip
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
                    k = edge_top_k(entry, sampling)
                    checked = {"verification": "edge_topk" if k else "server", "downlink_top_k": k}
                    task = Task(point, index, seed)
                    rows.extend(row | checked for row in request_rows(task, outcome))
                    name = f"timeline_p{point.index}_{index}_{entry.label}_s{seed}.csv"
                    write_table(
                        out_dir / "timelines" / name,
                        list(Span._fields),
                        (s._asdict() for s in spans),
                    )
    finally:
        draft.close()
    axes = list(point.axes)
    columns = ["point", *axes, "policy", "policy_name", "seed", *RECORD_FIELDS, "ttft_ms", "tpt_ms",
               *VERIFICATION_COLUMNS]  # fmt: skip
    write_table(out_dir / "results.csv", columns, rows)
    compute_columns = ["point", *axes, "policy", "seed", "request", *COMPUTE_COLUMNS]
    for side, rows_of_side in compute.items():
        extra = list(EDGE_SPLIT_COLUMNS) if side == "edge" else []
        write_table(out_dir / COMPUTE_FILES[side], compute_columns + extra, rows_of_side)
    write_table(out_dir / "outputs.csv", OUTPUT_COLUMNS, outputs)
    if batch_sizes:
        batch_columns = ["policy", "seed", "edge", "request", *NAV_COLUMNS]
        write_table(out_dir / "batches.csv", batch_columns, batch_rows)
    if speed_probe:
        speed_columns = ["point", *axes, "policy", "seed", *SpeedProbe.columns()]
        write_table(out_dir / "speeds.csv", speed_columns, speeds)
    summary = [r for r in summary_rows(point, outcomes) if r["seeds"]]
    write_table(out_dir / "summary.csv", summary_columns([point]), summary)
    data = manifest(scenario_path, [point], command, "complete", "")
    data["testbed"] = {
        "server": server,
        "draft": str(draft_path),
        "threads": threads,
        "acceptance": acceptance,
        "sampling": sampling_info(sampling, top_k),
        "verification": {
            entry.label: verification(entry, sampling, acceptance)
            for entry in scenario.policies
            if entry.label not in skipped
        },
        "full_rows": {
            entry.label: f"float{8 * size} rows over the vocabulary, every uploaded token"
            for entry in scenario.policies
            if sampling is None and (size := full_row_bytes(scenario, entry)) is not None
        },
        "cloud_timeout_s": cloud_timeout_s,
        "uplink_bytes": (
            "the link's counter over each request (wire bytes in payload units)"
            if uplink_meter is not None and uplink_meter() is not None
            else "msgpack request bodies (HTTP and TCP/IP headers not counted)"
        ),
        "skipped": skipped,
        "link": link_info or "not shaped: whatever lies between this edge and the server",
    }
    write_json(out_dir / "manifest.json", data)
    return summary
