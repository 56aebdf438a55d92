"""Sweeps: parallel backends give identical results, interrupted runs resume without redoing
finished work, and no table is ever half-written."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from simulator.backends import InlineBackend, ProcessBackend, RayBackend
from simulator.errors import ConfigError
from simulator.runner import plan_tasks, run_scenario
from simulator.scenario import expand_sweep

POLICIES = [{"name": "vanilla"}, {"name": "pipesd", "autotune": False}, {"name": "oracle"}]


class StopAfter:
    """Runs tasks inline and raises KeyboardInterrupt after `limit` of them (a Ctrl-C)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        for count, task in enumerate(tasks):
            if count == self.limit:
                raise KeyboardInterrupt
            yield task, fn(task)


class Counting(InlineBackend):
    """Inline, counting the tasks it is given."""

    executed = 0

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        self.executed += len(tasks)
        yield from super().map_unordered(fn, tasks)


@pytest.fixture
def sweep(write_scenario) -> tuple[Path, list[Any]]:
    path = write_scenario(
        policies=POLICIES,
        seeds=[1, 2],
        sweep={"link.uplink_mbps": [5.0, 20.0, 80.0]},
        prompts={"count": 2, "prompt_len": 16, "max_new_tokens": 32},
    )
    return path, expand_sweep(path)


def tables(out: Path) -> dict[str, str]:
    return {name: (out / name).read_text() for name in ("summary.csv", "results.csv", "edges.csv")}


def test_process_pool_gives_identical_tables(sweep, tmp_path: Path) -> None:
    path, points = sweep
    run_scenario(path, points, tmp_path / "inline", backend=InlineBackend())
    run_scenario(path, points, tmp_path / "pool", backend=ProcessBackend(2))
    assert tables(tmp_path / "inline") == tables(tmp_path / "pool")


def test_interrupted_run_resumes_without_recomputing(sweep, tmp_path: Path) -> None:
    path, points = sweep
    total = len(plan_tasks(points))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_scenario(path, points, out, backend=StopAfter(total // 2 + 1))
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert 0 < len(summary) < len(points) * len(POLICIES)  # finished points only
    for name in ("summary.csv", "results.csv", "edges.csv"):
        rows = list(csv.reader((out / name).open()))
        assert all(len(row) == len(rows[0]) for row in rows), f"{name} is half-written"
    counter = Counting()
    run_scenario(path, points, out, backend=counter, resume=True)
    assert counter.executed == total - (total // 2 + 1)
    run_scenario(path, points, tmp_path / "whole", backend=InlineBackend())
    assert tables(out) == tables(tmp_path / "whole")


def test_resume_refuses_a_different_run(sweep, write_scenario, tmp_path: Path) -> None:
    path, points = sweep
    out = tmp_path / "run"
    run_scenario(path, points, out, backend=InlineBackend())
    other = expand_sweep(path, ["prompts.max_new_tokens=40"])
    with pytest.raises(ConfigError, match="different scenario"):
        run_scenario(path, other, out, backend=InlineBackend(), resume=True)
    with pytest.raises(ConfigError, match="resume"):
        run_scenario(path, points, tmp_path / "empty", resume=True)


def test_ray_backend_gives_identical_tables(sweep, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the 'ray' extra is not installed")
    path, points = sweep
    run_scenario(path, points, tmp_path / "inline", backend=InlineBackend())
    run_scenario(path, points, tmp_path / "ray", backend=RayBackend(None, num_cpus=2))
    assert tables(tmp_path / "inline") == tables(tmp_path / "ray")
