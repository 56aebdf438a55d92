"""The edges of a scenario: one default edge, or `[[edge_groups]]` of many heterogeneous ones.

Each edge gets its compute factor, link (bandwidth model, latency, overheads), request count,
start offset and, for open-loop groups, its request arrival times. Random draws (spreads,
offsets, Poisson arrivals) come from the run's seed, so a fleet is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.compute import ComputeTrace
from simulator.link import Bandwidth, ConstantBandwidth, TraceBandwidth
from simulator.link_jitter import UplinkJitter
from simulator.profile import LoadedProfile
from simulator.scenario import Scenario
from simulator.scenario_sections import EdgeGroup


@dataclass(frozen=True)
class EdgeSpec:
    """One edge's hardware, link and request stream."""

    index: int
    group: str
    profile: LoadedProfile
    compute_factor: float
    uplink: Bandwidth
    downlink: Bandwidth
    one_way_latency_s: float
    uplink_overhead_s: float
    downlink_overhead_s: float
    burst_bytes: float
    requests: int
    start_s: float
    arrivals: tuple[float, ...] | None
    """Request arrival times for open-loop edges; None: requests run back to back."""
    compute_trace: ComputeTrace | None = None
    """The draft's speed over time (x compute_factor); None: constant (a constant trace is
    folded into compute_factor)."""
    prefill_trace: ComputeTrace | None = None
    """The draft's prompt prefill speed over time (x compute_factor) where it has its own;
    None: the prefill runs as the draft steps."""
    uplink_jitter: UplinkJitter | None = None
    """Each uplink message's extra delay, drawn from these samples; None: none."""


class _Links:
    """Resolves bandwidths (caching traces) and link constants for a scenario."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._traces: dict[str, TraceBandwidth] = {}
        self._compute: dict[str, ComputeTrace] = {}
        self._jitter: UplinkJitter | None = None

    def compute(
        self, group: EdgeGroup | None, factor: float
    ) -> tuple[float, ComputeTrace | None, ComputeTrace | None]:
        """(compute factor, trace, prefill trace) of an edge: a constant trace folds into the
        factor where the prefill has no trace of its own (the edge section's, for edges
        without a group trace)."""
        edge = self.scenario.model.edge
        own = getattr(group, "compute_trace", None)
        prefill = self._trace(edge.prefill_compute_trace) if own is None else None
        trace = self._trace(own or edge.compute_trace)
        if trace is None or prefill is not None:
            return factor, trace, prefill
        constant = trace.constant
        return (factor * constant, None, None) if constant is not None else (factor, trace, None)

    def _trace(self, name: str | None) -> ComputeTrace | None:
        """The compute trace of file `name` (read once), None for none."""
        if name is None:
            return None
        if name not in self._compute:
            path = self.scenario.resolve(name)
            repeat = self.scenario.model.edge.compute_trace_repeat
            self._compute[name] = ComputeTrace.from_csv(path, repeat)
        return self._compute[name]

    def jitter(self) -> UplinkJitter | None:
        """The link's uplink jitter samples (read once), None for none."""
        name = self.scenario.model.link.uplink_jitter
        if name is None:
            return None
        if self._jitter is None:
            self._jitter = UplinkJitter.from_csv(self.scenario.resolve(name))
        return self._jitter

    def bandwidth(
        self, direction: str, group: EdgeGroup | None, profile: LoadedProfile
    ) -> Bandwidth:
        link = self.scenario.model.link
        trace = getattr(group, f"{direction}_trace", None) or getattr(link, f"{direction}_trace")
        if trace is not None:
            if trace not in self._traces:
                path = self.scenario.resolve(trace)
                self._traces[trace] = TraceBandwidth.from_csv(path, link.trace_repeat)
            return self._traces[trace]
        mbps = getattr(group, f"{direction}_mbps", None) or getattr(link, f"{direction}_mbps")
        if mbps is None:
            mbps = getattr(profile.profile.link, f"{direction}_mbps")
        return ConstantBandwidth(mbps)

    def value(self, name: str, profile: LoadedProfile, group: EdgeGroup | None = None) -> float:
        grouped = getattr(group, name, None) if group is not None else None
        if grouped is not None:
            return grouped
        value = getattr(self.scenario.model.link, name)
        return getattr(profile.profile.link, name) if value is None else value


def edge_specs(scenario: Scenario, seed: int) -> list[EdgeSpec]:
    """Every edge of the scenario, in index order."""
    model = scenario.model
    links = _Links(scenario)
    if not model.edge_groups:
        profile = scenario.profile
        factor, trace, prefill = links.compute(None, model.edge.compute_factor)
        return [
            EdgeSpec(
                index=0,
                group="",
                profile=profile,
                compute_factor=factor,
                uplink=links.bandwidth("uplink", None, profile),
                downlink=links.bandwidth("downlink", None, profile),
                one_way_latency_s=links.value("one_way_latency_s", profile),
                uplink_overhead_s=links.value("uplink_overhead_s", profile),
                downlink_overhead_s=links.value("downlink_overhead_s", profile),
                burst_bytes=links.value("burst_bytes", profile),
                requests=model.prompts.count,
                start_s=0.0,
                arrivals=None,
                compute_trace=trace,
                prefill_trace=prefill,
                uplink_jitter=links.jitter(),
            )
        ]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xED6E]))
    specs: list[EdgeSpec] = []
    for number, group in enumerate(model.edge_groups):
        profile = scenario.edge_profile(number)
        base_factor = group.compute_factor or model.edge.compute_factor
        requests = group.requests or model.prompts.count
        for _ in range(group.count):
            drawn = base_factor * rng.uniform(1 - group.compute_spread, 1 + group.compute_spread)
            factor, trace, prefill = links.compute(group, float(drawn))
            start = float(rng.uniform(0.0, group.start_spread_s)) if group.start_spread_s else 0.0
            arrivals = None
            if group.arrival == "poisson":
                assert group.rate_per_s is not None
                gaps = rng.exponential(1.0 / group.rate_per_s, size=requests)
                arrivals = tuple(float(t) for t in start + np.cumsum(gaps))
            specs.append(
                EdgeSpec(
                    index=len(specs),
                    group=group.label or f"group{number}",
                    profile=profile,
                    compute_factor=float(factor),
                    uplink=links.bandwidth("uplink", group, profile),
                    downlink=links.bandwidth("downlink", group, profile),
                    one_way_latency_s=links.value("one_way_latency_s", profile, group),
                    uplink_overhead_s=links.value("uplink_overhead_s", profile),
                    downlink_overhead_s=links.value("downlink_overhead_s", profile),
                    burst_bytes=links.value("burst_bytes", profile),
                    requests=requests,
                    start_s=start,
                    arrivals=arrivals,
                    compute_trace=trace,
                    prefill_trace=prefill,
                    uplink_jitter=links.jitter(),
                )
            )
    return specs
