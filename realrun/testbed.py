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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.prompts import family_prompts, format_prompt
from policies.base import Mode
from policies.registry import POLICIES, make_policy
from policies.seeding import policy_seed
from realrun.cloud.settings import ServerSettings, body_limit_bytes
from simulator.acceptance import AcceptanceModel
from simulator.errors import ConfigError
from simulator.payload import Payload, payload_for
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
from simulator.scenario import PayloadSection, PolicyEntry, Scenario, SweepPoint

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


NEEDS_FLEET = "needs a fleet of edges"
"""`skip_reason` of a fleet-plan policy (DiP-SD): a many-edge testbed runs it."""


def skip_reason(name: str) -> str | None:
    """Why a policy cannot run on the testbed (None: it can)."""
    policy_class = POLICIES[name][1]
    if getattr(policy_class, "mode", Mode.SPECULATIVE) != Mode.SPECULATIVE:
        return "not an edge-drafting policy"
    if getattr(policy_class, "is_oracle", False):
        return "needs future acceptance outcomes"
    if getattr(policy_class, "uses_fleet_plan", False):
        return NEEDS_FLEET
    return None


def check_vocabularies(draft_vocab: int, target_vocab: int, acceptance: str) -> None:
    """Refuse a draft the target cannot verify (one-line ConfigError): with real acceptance
    the two must share a tokenizer (equal vocabularies, at least); synthetic acceptance (e.g.
    random-weight models of the papers' shapes) needs only the draft's ids in the target's."""
    if acceptance == "real" and draft_vocab != target_vocab:
        raise ConfigError(
            "--draft",
            "",
            f"its vocabulary ({draft_vocab}) differs from the target's ({target_vocab}): real "
            "acceptance needs a pair sharing a tokenizer (or use --acceptance synthetic)",
        )
    if draft_vocab > target_vocab:
        raise ConfigError(
            "--draft",
            "",
            f"its vocabulary ({draft_vocab}) is larger than the target's ({target_vocab}): "
            "its tokens cannot all be verified",
        )


def refill_s(point: SweepPoint) -> float:
    """How long the point's link needs to refill its token buckets after a burst of use (the
    slower direction, at its rate at t = 0), so a session starts on an idle link as the
    simulator's does."""
    from realrun.link.shaping import LinkSpec  # loads httpx (optional) when imported

    spec = LinkSpec.from_point(point)
    rate = min(spec.uplink.at(0.0), spec.downlink.at(0.0)) * 1e6 / 8
    return spec.burst_bytes / rate + 2 * spec.one_way_latency_s


@dataclass(frozen=True)
class SamplingSpec:
    """Speculative sampling on the testbed (`--temperature`, `--top-k`): the draft samples at
    `temperature` from its top-`top_k` tokens (None: the scenario's default, `sampling_top_k`)."""

    temperature: float
    top_k: int | None = None


def sampling_top_k(
    scenario: Scenario, top_k: int | None, payload: PayloadSection | None = None
) -> tuple[int, str]:
    """(top-K of the edge's draft distributions, where it comes from) for `scenario` (and a
    policy's `payload`, default the scenario's `[payload]`).

    Default: the scenario's `payload.top_k` when `payload.kind` is "topk"; otherwise (full
    distributions, or token ids or probabilities only, which speculative sampling cannot use)
    the largest K whose distributions of a whole NAV fit one request body of the server
    (realrun.edge.drafts.max_sampling_top_k: the full vocabulary never does, 64 KiB bodies).
    One-line ConfigError if `top_k` (or the scenario's) is below 1 or does not fit.
    """
    from realrun.edge.drafts import max_sampling_top_k  # loads msgpack (optional) when imported
    from realrun.protocol import Limits  # loads msgpack (optional) when imported

    tokens = tokens_per_message(scenario)
    fits = max_sampling_top_k(tokens)
    body = Limits(n_vocab=1).max_body_bytes // 1024
    why = f"top-K distributions of {tokens} draft tokens must fit the server's {body} KiB body"
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= fits:
            raise ConfigError("--top-k", str(top_k), f"must be an integer in [1, {fits}] ({why})")
        return top_k, "--top-k"
    payload = payload if payload is not None else scenario.model.payload
    if payload.kind != "topk":
        return fits, f"largest fitting the body limit (payload.kind = {payload.kind!r})"
    if payload.top_k > fits:
        raise ConfigError(
            "--top-k",
            "",
            f"the scenario's payload.top_k = {payload.top_k} is too large: {why}; "
            f"pass --top-k in [1, {fits}]",
        )
    return payload.top_k, "payload.top_k"


def check_sampling(
    sampling: SamplingSpec | None, scenario: Scenario, acceptance: str = "real"
) -> tuple[int, str] | None:
    """Refuse bad sampling settings (one-line ConfigError naming the flag and the allowed
    range); returns `sampling_top_k` (None: greedy)."""
    from realrun.protocol import MAX_TEMPERATURE  # loads msgpack (optional) when imported

    if sampling is None:
        return None
    t = sampling.temperature
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= MAX_TEMPERATURE:
        raise ConfigError("--temperature", str(t), f"must be in (0, {MAX_TEMPERATURE:g}]")
    if acceptance == "synthetic":
        raise ConfigError(
            "--temperature",
            str(t),
            "cannot be combined with --acceptance synthetic (the acceptance stream, not "
            "sampling, decides what is accepted)",
        )
    for entry in scenario.policies:  # each policy's own payload must fit too
        sampling_top_k(scenario, sampling.top_k, entry.payload)
    check_edge_top_k(scenario, sampling)
    return sampling_top_k(scenario, sampling.top_k)


def policy_payload(scenario: Scenario, entry: PolicyEntry) -> Payload:
    """The byte sizes of what `entry` sends (its own payload, or the scenario's)."""
    return payload_for(scenario.profile.profile.payload, entry.payload)


def states_full(scenario: Scenario, entry: PolicyEntry) -> bool:
    """Whether the scenario states `entry`'s payload kind as "full" (its own `payload` table
    or the scenario's `[payload]`): the schema's default kind is "full" too, but scenarios
    that leave it out are run greedily with one probability per token, as before."""
    raw_entries = [e for e in scenario.raw.get("policies", []) if isinstance(e, dict)]
    own = next((e for e in raw_entries if e.get("label", e.get("name")) == entry.label), {})
    stated = own.get("payload", {}).get("kind") or scenario.raw.get("payload", {}).get("kind")
    return entry.payload.kind == "full" and stated == "full"


def full_row_bytes(scenario: Scenario, entry: PolicyEntry) -> int | None:
    """Bytes per probability of `entry`'s full draft distributions on the wire (None unless
    the scenario states its payload kind as "full": `states_full`): the profile's
    `row_probability_bytes` (what the simulator charges then too), else its
    `probability_bytes` rounded down to a float width (2, 4 or 8: float16/32/64; msgpack's
    9-byte float64 travels as 8, one byte less than the simulator charges)."""
    from realrun.protocol import ROW_DTYPES  # msgpack, as the other protocol imports here

    if not states_full(scenario, entry):
        return None
    payload = scenario.profile.profile.payload
    if payload.row_probability_bytes is not None:
        return payload.row_probability_bytes
    size = max(payload.probability_bytes, 2)
    return max(b for b in ROW_DTYPES if b <= size)


def body_limit(scenario: Scenario, sampling: SamplingSpec | None = None) -> int:
    """The server's request-body limit this scenario needs: the largest message any of its
    full-row policies (`full_row_bytes`) that a testbed edge runs can send (tokens_per_message
    drafts of its payload, with the header), with the margin of
    realrun.cloud.settings.body_limit_bytes (one-line ConfigError past its ceiling, naming the
    policy's payload); the default 64 KiB otherwise (ids and probabilities, or top-K
    distributions sized to fit it: `sampling_top_k`; a sampling run sends no full rows).
    Policies no testbed edge runs (cloud-only, split, oracles) send nothing and count not."""
    tokens = tokens_per_message(scenario)
    limit = ServerSettings.max_body_bytes
    if sampling is not None:
        return limit
    for entry in scenario.policies:
        if skip_reason(entry.name) not in (None, NEEDS_FLEET):
            continue
        if full_row_bytes(scenario, entry) is None:
            continue
        largest = policy_payload(scenario, entry).batch_bytes(tokens)
        field = f"policies.{entry.label}.payload ({entry.payload.kind}, {tokens} tokens)"
        limit = max(limit, body_limit_bytes(largest, str(scenario.path), field))
    return limit


def check_body_limit(
    scenario: Scenario,
    server_max_body_bytes: int,
    server: str,
    sampling: SamplingSpec | None = None,
) -> None:
    """One-line ConfigError if the server's body limit is below what `scenario` needs."""
    needed = body_limit(scenario, sampling)
    if server_max_body_bytes < needed:
        raise ConfigError(
            server,
            "max_body_bytes",
            f"the server takes request bodies up to {server_max_body_bytes} bytes, this "
            f"scenario's payloads need {needed}: start it with --max-body-bytes {needed}",
        )


def tokens_per_message(scenario: Scenario) -> int:
    """Most draft tokens the edge sends in one request (its per-NAV cap)."""
    from realrun.protocol import Limits  # loads msgpack (optional) when imported

    return min(scenario.model.edge.max_draft_tokens, Limits(n_vocab=1).max_upload)


def acceptance_model(scenario: Scenario) -> AcceptanceModel:
    """The single edge's acceptance model, built as simulator.engine.simulate builds it."""
    model, profile = scenario.model, scenario.profile.profile
    spec = model.acceptance or profile.acceptance
    base_dir = scenario.base_dir if model.acceptance else scenario.profile.path.parent
    return AcceptanceModel(spec, base_dir)


def sampling_info(
    sampling: SamplingSpec | None, top_k: tuple[int, str] | None
) -> dict[str, Any] | None:
    """The manifest's `sampling` entry (None: greedy drafting and verification)."""
    if sampling is None or top_k is None:
        return None
    return {
        "temperature": float(sampling.temperature),
        "top_k": top_k[0],
        "top_k_from": top_k[1],
        "confidence": "max q (the top-1 probability of the draft distribution drawn from)",
        "seeds": "per (scenario seed, request): realrun.edge.drafts.EdgeSampling (edge draws, "
        "and the server session's seed)",
    }


EXACT_P_SKIP = (
    "downlink_scheme 'exact_p_then_topk' is simulated only: the testbed's edge-side "
    "verification sends the target's top-K at every verified position"
)
"""Why a PicoSpec variant whose answer carries exact p(x) is skipped in a sampling run."""


def edge_top_k(entry: PolicyEntry, sampling: SamplingSpec | None) -> int:
    """K of `entry`'s edge-side top-K verification on the testbed (PicoSpec), 0: the server
    verifies.

    The rule: a policy whose payload sets `downlink_top_k` = K > 0 (scheme
    "topk_every_position") verifies at the edge, by separate rejection sampling on the
    target's top-K (realrun.edge.topk_verify), when the run samples (`--temperature`).
    Greedy runs keep server verification for every policy: greedy verification keeps a draft
    iff it is the target's argmax, which is always in the top-K, so the edge would decide
    exactly as the server does. Synthetic acceptance never samples (`check_sampling`).
    """
    payload = entry.payload
    if sampling is None or not payload.downlink_top_k:
        return 0
    if payload.downlink_scheme != "topk_every_position":
        return 0
    return int(payload.downlink_top_k)


def entry_skip_reason(entry: PolicyEntry, sampling: SamplingSpec | None) -> str | None:
    """Why the testbed cannot run `entry` in this run (None: it can): `skip_reason`, and in
    a sampling run a top-K downlink whose scheme the testbed does not implement
    (`EXACT_P_SKIP`)."""
    reason = skip_reason(entry.name)
    if reason is not None or sampling is None or not entry.payload.downlink_top_k:
        return reason
    return EXACT_P_SKIP if entry.payload.downlink_scheme != "topk_every_position" else None


def check_edge_top_k(scenario: Scenario, sampling: SamplingSpec | None) -> None:
    """Refuse a `downlink_top_k` the server cannot send in a sampling run (one-line
    ConfigError naming the policy's field and the allowed range)."""
    from realrun.protocol import Limits  # loads msgpack (optional) when imported

    most = Limits(n_vocab=1).max_top_k
    for entry in scenario.policies:
        k = edge_top_k(entry, sampling)
        if k > most and entry_skip_reason(entry, sampling) is None:
            raise ConfigError(
                scenario.path,
                f"policies.{entry.label}.payload.downlink_top_k",
                f"edge-side top-K verification (--temperature) takes 1..{most} (the server's "
                f"largest top-K answer; got {k})",
            )


def verification(entry: PolicyEntry, sampling: SamplingSpec | None, acceptance: str) -> str:
    """Where and how `entry`'s drafts are verified in this run (results.csv's
    `verification` and the manifest's `testbed.verification`)."""
    k = edge_top_k(entry, sampling)
    if k:
        return f"edge: separate rejection sampling on the target's top-{k} (edge_topk)"
    if acceptance == "synthetic":
        return "server: the scenario's synthetic acceptance stream"
    if sampling is not None:
        return "server: speculative rejection sampling"
    return "server: greedy"


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
    from realrun.request_costs import NAV_COLUMNS, cloud_share_s, compute_rows, nav_rows  # same

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
    compute_columns = ["point", *axes, "policy", "seed", "request", "t_s", "measured_s",
                       "predicted_s", "factor"]  # fmt: skip
    for side, rows_of_side in compute.items():
        write_table(out_dir / COMPUTE_FILES[side], compute_columns, rows_of_side)
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
