"""Which figures a run folder supports, and writing them: the figure list in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from figures.energy import energy_figure
from figures.load import Run
from figures.style import save
from figures.sweeps import COMPUTE_AXIS, UPLINK_AXIS, bandwidth_figure, compute_figure
from figures.timeline import DEFAULT_ROUNDS, timeline_figure
from figures.trace import has_trace, trace_figure

UPLINK_STEM = "tpt_vs_uplink"
COMPUTE_STEM = "tpt_vs_compute"
ENERGY_STEM = "energy_per_token"
TIMELINE_STEM = "timeline"
TRACE_STEM = "bandwidth_trace"
VALIDATION_STEM = "sim_vs_real"
DIPSD_STEM = "dipsd_users"
PICOSPEC_STEM = "picospec_topk"


@dataclass(frozen=True)
class Options:
    """What the command line asked for beyond the run folders."""

    formats: tuple[str, ...] = ("png",)
    policies: tuple[str, ...] | None = None
    timeline_policies: tuple[str, ...] | None = None
    rounds: int = DEFAULT_ROUNDS
    real_timeline: Path | None = None


def run_figures(run: Run, out_dir: Path, options: Options, with_real: bool = False) -> list[Path]:
    """Write every figure `run` has the data for into `out_dir`; returns the files written.

    Sweeps over `link.uplink_mbps` / `edge.compute_factor` give TPT and speedup curves; every
    run gives energy per token (first sweep point); timelines give the Gantt chart (with the
    testbed timeline above when `with_real`); an uplink trace gives the trace figure.
    """
    formats = options.formats
    written: list[Path] = []
    if UPLINK_AXIS in run.axes:
        figure = bandwidth_figure(run, options.policies)
        written += save(figure, out_dir, UPLINK_STEM, formats)
    if COMPUTE_AXIS in run.axes:
        written += save(compute_figure(run, options.policies), out_dir, COMPUTE_STEM, formats)
    written += save(energy_figure(run), out_dir, ENERGY_STEM, formats)
    real = options.real_timeline if with_real else None
    if run.timelines() or real is not None or options.timeline_policies:
        figure = timeline_figure(run, options.timeline_policies, options.rounds, real)
        written += save(figure, out_dir, TIMELINE_STEM, formats)
    if has_trace(run):
        written += save(trace_figure(run, options.policies), out_dir, TRACE_STEM, formats)
    return written
