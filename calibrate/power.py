"""The edge CPU's busy and idle package power, for the profile's power section.

`edge_power` measures it with RAPL where it is present (`realrun.cloud.energy.RaplMeter`), else
uses the documented model (busy = declared package power, idle = declared x the CPU
utilisation measured from /proc/stat over a quiet window), and `method` says which. The energy
meters themselves (NVML, RAPL) live in `realrun.cloud.energy`: the testbed's server reads them.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realrun.cloud.energy import POWERCAP_ROOT, PowerUnavailable, RaplMeter

PROC_STAT = Path("/proc/stat")
"""Where Linux exposes cumulative CPU time (for the utilisation model)."""


# --------------------------------------------------------------------------------------------
# Edge power
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgePower:
    """The edge CPU package's power while drafting (`busy_w`) and waiting (`idle_w`), and how
    they were obtained (`method`: measured with RAPL, or the declared-power model)."""

    busy_w: float
    idle_w: float
    method: str


def _cpu_times(proc_stat: Path) -> tuple[float, float]:
    """(idle, total) CPU time from the `cpu` line of /proc/stat (any unit)."""
    try:
        first = proc_stat.read_text().splitlines()[0].split()
        if first[0] != "cpu":
            raise ValueError("first line is not the 'cpu' total")
        values = [float(v) for v in first[1:]]
    except (OSError, ValueError, IndexError) as exc:
        raise PowerUnavailable(f"CPU utilisation: cannot read {proc_stat} ({exc})") from None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    total = sum(values[:8])
    return idle, total


def measured_utilisation(seconds: float, proc_stat: Path = PROC_STAT) -> float:
    """The machine's CPU utilisation (0..1, all cores) over the next `seconds`, from /proc/stat."""
    idle0, total0 = _cpu_times(proc_stat)
    time.sleep(seconds)
    idle1, total1 = _cpu_times(proc_stat)
    elapsed = total1 - total0
    if elapsed <= 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - (idle1 - idle0) / elapsed))


def _spin(ready: Any, stop: Any) -> None:
    """Busy loop (pure integer arithmetic) until `stop` is set; one per measured thread."""
    ready.set()
    x = 1
    while not stop.is_set():
        for _ in range(20000):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def _busy_energy_w(meter: RaplMeter, threads: int, seconds: float) -> float:
    """Package power (W) measured over `seconds` while `threads` processes spin."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    readies = [context.Event() for _ in range(threads)]
    workers = [context.Process(target=_spin, args=(r, stop), daemon=True) for r in readies]
    for worker in workers:
        worker.start()
    try:
        for ready in readies:
            if not ready.wait(timeout=30.0):
                raise PowerUnavailable("RAPL: busy-loop workers did not start within 30 s")
        time.sleep(0.1)  # let the cores reach their busy frequency
        start_j, start_t = meter.read_j(), time.perf_counter()
        time.sleep(seconds)
        energy, elapsed = meter.read_j() - start_j, time.perf_counter() - start_t
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=5.0)
            if worker.is_alive():
                worker.terminate()
    return energy / elapsed


def _idle_energy_w(meter: RaplMeter, seconds: float) -> float:
    start_j, start_t = meter.read_j(), time.perf_counter()
    time.sleep(seconds)
    return (meter.read_j() - start_j) / (time.perf_counter() - start_t)


def edge_power(
    declared_package_w: float | None,
    sample_s: float = 2.0,
    threads: int | None = None,
    rapl_root: Path = POWERCAP_ROOT,
    proc_stat: Path = PROC_STAT,
) -> EdgePower:
    """The edge CPU's busy and idle package power, measured where possible.

    With RAPL (`rapl_root` readable): idle = package energy over a quiet window of `sample_s`
    seconds / its length; busy = the same over a window while `threads` processes (default:
    the CPUs this process may use) run a CPU-bound loop, i.e. measured at that many busy
    threads, not assumed. `declared_package_w` is then ignored.

    Without RAPL, the documented model: busy_w = `declared_package_w` (the package power at
    full load, e.g. the CPU's TDP, as the user declares it), idle_w = declared x the CPU
    utilisation measured from /proc/stat over a quiet window of `sample_s`. `method` says which
    was used and why. Without RAPL and without a declared power: PowerUnavailable, one line
    saying to pass --package-watts.
    """
    if not isinstance(sample_s, int | float) or not math.isfinite(sample_s) or sample_s <= 0:
        raise ValueError(f"edge_power: sample_s must be a number > 0 (got {sample_s!r})")
    if declared_package_w is not None and (
        isinstance(declared_package_w, bool)
        or not isinstance(declared_package_w, int | float)
        or not math.isfinite(declared_package_w)
        or declared_package_w <= 0
    ):
        raise ValueError(
            f"edge_power: declared_package_w must be a number > 0 or None "
            f"(got {declared_package_w!r})"
        )
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"edge_power: threads must be an integer >= 1 (got {threads!r})")

    try:
        meter = RaplMeter(rapl_root)
    except PowerUnavailable as exc:
        rapl_reason = str(exc)
    else:
        idle_w = _idle_energy_w(meter, sample_s)
        busy_w = _busy_energy_w(meter, threads, sample_s)
        return EdgePower(
            busy_w=busy_w,
            idle_w=idle_w,
            method=(
                f"measured: {meter.name()}; idle over a {sample_s:g} s quiet window, busy over "
                f"a {sample_s:g} s window with {threads} thread(s) in a CPU-bound loop"
            ),
        )

    if declared_package_w is None:
        raise PowerUnavailable(
            f"edge power: {rapl_reason}, and no package power was declared: pass "
            f"--package-watts W (the CPU package power at full load, e.g. its TDP)"
        )
    utilisation = measured_utilisation(sample_s, proc_stat)
    declared = float(declared_package_w)
    return EdgePower(
        busy_w=declared,
        idle_w=declared * utilisation,
        method=(
            f"model (no RAPL: {rapl_reason}): busy = declared package power {declared:g} W; "
            f"idle = declared x CPU utilisation {100 * utilisation:.1f}% measured from "
            f"{proc_stat} over a {sample_s:g} s quiet window"
        ),
    )


__all__ = ["PROC_STAT", "EdgePower", "edge_power", "measured_utilisation"]
