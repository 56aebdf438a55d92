"""The figures of README.md and docs/results.md: run the shipped scenarios in-process into a
temporary folder and write the main figures to docs/figures/.

The scenarios run at their own sizes (all four take about 20 s on one core), so the figures
show the same runs as docs/results.md's tables; only the Gantt chart's S1 run is cut to two
requests and one seed, since it only shows the first rounds of one request.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from figures.build import (
    COMPUTE_STEM,
    DIPSD_STEM,
    ENERGY_STEM,
    PICOSPEC_STEM,
    TIMELINE_STEM,
    TRACE_STEM,
    UPLINK_STEM,
)
from figures.dipsd_users import dipsd_figure
from figures.energy import energy_figure
from figures.load import load_run
from figures.picospec_topk import picospec_figure
from figures.style import save
from figures.sweeps import bandwidth_figure, compute_figure
from figures.timeline import timeline_figure
from figures.trace import trace_figure
from simulator.runner import run_scenario
from simulator.scenario import expand_sweep

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"
README_FIGURES = REPO / "docs" / "figures"


@dataclass(frozen=True)
class ReadmeRun:
    """A scenario to run for the README: file name, `--set` overrides, whether to record
    timelines."""

    scenario: str
    overrides: tuple[str, ...] = ()
    timeline: bool = False


RUNS = {
    "bandwidth": ReadmeRun("bandwidth_sweep.toml"),
    "compute": ReadmeRun("edge_compute_sweep.toml"),
    "s1": ReadmeRun("pipesd_s1.toml"),
    "s1_timeline": ReadmeRun("pipesd_s1.toml", ("prompts.count=2", "seeds=[1]"), True),
    "s4": ReadmeRun("pipesd_s4.toml"),
}


def simulate(spec: ReadmeRun, out_dir: Path) -> Path:
    """Run one README scenario into `out_dir` (as `pipesd run` would); returns the folder."""
    path = SCENARIOS / spec.scenario
    points = expand_sweep(path, list(spec.overrides))
    command = ("figures.readme_figures", spec.scenario, *spec.overrides)
    run_scenario(path, points, out_dir, command, record_timeline=spec.timeline)
    return out_dir


def readme_figures(out_dir: Path = README_FIGURES, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Simulate the README scenarios and write its figures to `out_dir`; returns the files."""
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="pipesd-readme-") as tmp:
        runs = {name: load_run(simulate(spec, Path(tmp) / name)) for name, spec in RUNS.items()}
        figures = (
            (UPLINK_STEM, bandwidth_figure(runs["bandwidth"])),
            (COMPUTE_STEM, compute_figure(runs["compute"])),
            (ENERGY_STEM, energy_figure(runs["s1"])),
            (TIMELINE_STEM, timeline_figure(runs["s1_timeline"])),
            (TRACE_STEM, trace_figure(runs["s4"])),
        )
        for stem, figure in figures:
            written += save(figure, out_dir, stem, formats)
    written += save(dipsd_figure(), out_dir, DIPSD_STEM, formats)
    written += save(picospec_figure(), out_dir, PICOSPEC_STEM, formats)
    return written
