"""One edge of a many-edge testbed run: `python -m realrun.fleet_edge ...` (started by
realrun.fleet, inside the edge's network namespace where the link is kernel-shaped).

It runs one (seed, policy) session of the sweep point `--point` (pickled by the fleet, with
every `--set` applied) as edge `--edge` (realrun.testbed:
its own synthetic acceptance stream, its records' `edge`), against the server at `--server`,
writing the testbed's files into `--out`. Each edge, once its draft is loaded, writes
`OUT/ready` and waits for the `--go` file: the start time on the machine's real-time clock
(which all edges here share); it records when it started
(`clock.json`: the start they were given and the one they saw), so the fleet can check how far
apart the edges' clocks began. With `--shaping software` the edge shapes its own link in
process (realrun.link.softlink, from the scenario's spec of this edge); with "tbf" the
namespace's qdiscs shape it. With `--plan` (realrun.fleet.session_plan's JSON) a DiP-SD policy
drafts its planned length and seats its sessions in the plan on the server.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

from realrun.link.edge_link import uplink_meter
from realrun.link.shaping import LinkSpec
from realrun.testbed import run_testbed
from simulator.errors import ConfigError
from simulator.fleet import edge_specs

GO_POLL_S = 0.005
"""How often a ready edge looks for the go file."""


def edge_link_spec(point, seed: int, edge: int) -> LinkSpec:  # type: ignore[no-untyped-def]
    """Edge `edge`'s link at `point` under `seed`, as the simulator resolves it."""
    spec = edge_specs(point.scenario, seed)[edge]
    return LinkSpec(
        uplink=spec.uplink,  # type: ignore[arg-type]
        downlink=spec.downlink,  # type: ignore[arg-type]
        one_way_latency_s=spec.one_way_latency_s,
        uplink_overhead_s=spec.uplink_overhead_s,
        downlink_overhead_s=spec.downlink_overhead_s,
        burst_bytes=spec.burst_bytes,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the edge's session (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m realrun.fleet_edge")
    parser.add_argument("--scenario", type=Path, required=True)
    parser.add_argument("--point", type=Path, required=True, help="the sweep point (pickle)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--policy", required=True, help="the policy's label")
    parser.add_argument("--edge", type=int, required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--draft", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--acceptance", default="real")
    parser.add_argument("--shaping", choices=("tbf", "software", "none"), default="tbf")
    parser.add_argument("--go", type=Path, required=True, help="file holding the start time")
    parser.add_argument("--uplink-device", help="the namespace's veth end (tbf: its counter)")
    parser.add_argument("--plan", type=Path, help="a DiP-SD plan (JSON: batches, lengths)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        with args.point.open("rb") as handle:  # written by realrun.fleet for this run
            point = pickle.load(handle)
        transport, fleet_plan = None, None
        if args.plan is not None:
            plan = json.loads(args.plan.read_text())  # written by realrun.fleet for this run
            batches = tuple(tuple(int(e) for e in batch) for batch in plan["batches"])
            fleet_plan = (batches, int(plan["lengths"][args.edge]))
        if args.shaping == "software":
            from realrun.link.softlink import LinkClock, ShapedTransport  # imports httpx

            spec = edge_link_spec(point, args.seed, args.edge)
            clock = LinkClock(spec.uplink, spec.downlink, spec.one_way_latency_s, spec.burst_bytes)
            transport = ShapedTransport(clock)
        started: dict[str, float] = {}

        def wait_for_start() -> None:
            (args.out / "ready").touch()  # the draft is loaded, the server answered
            while not args.go.is_file():
                time.sleep(GO_POLL_S)
            started["given_s"] = float(args.go.read_text())
            time.sleep(max(0.0, started["given_s"] - time.time()))
            started["epoch_s"] = time.time()
            if transport is not None:
                clock.start()

        run_testbed(
            args.scenario,
            point,
            args.server,
            args.draft,
            args.threads,
            args.out,
            [sys.executable, "-m", "realrun.fleet_edge", *(argv or sys.argv[1:])],
            transport=transport,
            acceptance=args.acceptance,
            on_start=wait_for_start,
            cloud_timeout_s=60.0,
            edge=args.edge,
            only=(args.seed, args.policy),
            batch_sizes=True,
            fleet_plan=fleet_plan,
            uplink_meter=(
                (lambda: uplink_meter(args.uplink_device)) if args.uplink_device else None
            ),
        )
        clock_info = {"start_epoch_s": started["given_s"], "started_epoch_s": started["epoch_s"]}
        (args.out / "clock.json").write_text(json.dumps(clock_info) + "\n")
    except ConfigError as exc:
        print(f"pipesd: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
