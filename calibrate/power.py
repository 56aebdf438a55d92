"""Energy meters for the calibration: NVML for the GPU, RAPL for the CPU, and the edge power model.

A meter has `read_j()` (a cumulative energy reading in joules: only differences between two
readings mean anything) and `name()`. Where a meter cannot work (no library, no GPU, no RAPL,
no permission) its constructor raises `PowerUnavailable` with a one-line reason starting with
the meter's name ("NVML: ...", "RAPL: ..."), never a crash from deep inside a library.

- `NvmlEnergyMeter`: the GPU's total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`,
  mJ since the driver loaded) and its power reading (`nvmlDeviceGetPowerUsage`, mW). The
  counter advances in steps of tens of milliseconds, so energy is only meaningful over windows
  much longer than that (the target profiler integrates over >= 1 s per configuration).
- `RaplMeter`: the CPU packages' energy counters under /sys/class/powercap (`energy_uj`),
  summed over package domains, with wrap-around handled through `max_energy_range_uj`.
- `edge_power`: the edge CPU's busy and idle package power: measured with RAPL where it is
  present, else the documented model (busy = declared package power, idle = declared x the
  CPU utilisation measured from /proc/stat over a quiet window), and `method` says which.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

POWERCAP_ROOT = Path("/sys/class/powercap")
"""Where Linux exposes RAPL energy counters."""

PROC_STAT = Path("/proc/stat")
"""Where Linux exposes cumulative CPU time (for the utilisation model)."""


class PowerUnavailable(Exception):
    """An energy or power source cannot be used here; the message is one line saying why."""


class EnergyMeter(Protocol):
    """What the profilers need from a meter."""

    def read_j(self) -> float:
        """A cumulative energy reading in joules (differences are the energy used)."""

    def name(self) -> str:
        """What is measured, in words (for provenance)."""


# --------------------------------------------------------------------------------------------
# NVML (GPU)
# --------------------------------------------------------------------------------------------


def _nvml_text(value: Any) -> str:
    """NVML strings are bytes in older bindings, str in newer ones."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class NvmlEnergyMeter:
    """The energy counter and power reading of NVIDIA GPU `device_index` (NVML's numbering).

    Raises PowerUnavailable("NVML: <reason>") if nvidia-ml-py is not installed, the NVIDIA
    driver library is absent (no GPU), the index does not exist, or the GPU has no energy
    counter (GPUs before Volta).
    """

    def __init__(self, device_index: int = 0) -> None:
        if isinstance(device_index, bool) or not isinstance(device_index, int) or device_index < 0:
            raise ValueError(
                f"NvmlEnergyMeter: device_index must be an integer >= 0 (got {device_index!r})"
            )
        try:
            import pynvml
        except ImportError:
            raise PowerUnavailable(
                "NVML: the nvidia-ml-py package is not installed (pip install nvidia-ml-py)"
            ) from None
        self._nvml = pynvml
        self.device_index = device_index
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            raise PowerUnavailable(
                "NVML: the NVIDIA driver library (libnvidia-ml) was not found: no NVIDIA GPU or "
                "driver on this machine"
            ) from None
        except pynvml.NVMLError_DriverNotLoaded:
            raise PowerUnavailable("NVML: the NVIDIA driver is not loaded") from None
        except pynvml.NVMLError_NoPermission:
            raise PowerUnavailable("NVML: no permission to open the NVIDIA driver") from None
        except pynvml.NVMLError as exc:
            raise PowerUnavailable(f"NVML: initialisation failed ({exc})") from None
        try:
            count = pynvml.nvmlDeviceGetCount()
            if device_index >= count:
                raise PowerUnavailable(
                    f"NVML: no GPU with index {device_index} ({count} GPU(s) visible to NVML)"
                )
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            self._name = _nvml_text(pynvml.nvmlDeviceGetName(self._handle))
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            except pynvml.NVMLError_NotSupported:
                raise PowerUnavailable(
                    f"NVML: {self._name} (GPU {device_index}) has no total-energy counter "
                    f"(needs Volta or newer)"
                ) from None
        except PowerUnavailable:
            self.close()
            raise
        except pynvml.NVMLError as exc:
            self.close()
            raise PowerUnavailable(f"NVML: cannot query GPU {device_index} ({exc})") from None

    def read_j(self) -> float:
        """The GPU's total-energy counter in joules (mJ since the driver loaded / 1000)."""
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0

    def power_w(self) -> float:
        """The GPU's current power draw in watts (NVML's reading, averaged by the driver)."""
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0

    def name(self) -> str:
        return f"NVML total-energy counter of GPU {self.device_index} ({self._name})"

    def close(self) -> None:
        """Release NVML (safe to call more than once)."""
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()

    def __enter__(self) -> NvmlEnergyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def nvml_index_for_cuda(cuda_index: int) -> int:
    """NVML's index of the GPU that CUDA (torch) calls `cuda_index`.

    CUDA numbers only the GPUs in CUDA_VISIBLE_DEVICES, NVML numbers all of them; when that
    variable lists integers, the i-th entry is the NVML index. Otherwise the two agree (CUDA's
    default ordering), which this assumes.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if entries and all(e.isdigit() for e in entries) and cuda_index < len(entries):
        return int(entries[cuda_index])
    return cuda_index


# --------------------------------------------------------------------------------------------
# RAPL (CPU packages)
# --------------------------------------------------------------------------------------------


@dataclass
class _RaplDomain:
    path: Path
    label: str
    max_range_uj: int
    last_uj: int


def _read_int(path: Path, what: str) -> int:
    try:
        return int(path.read_text().strip())
    except PermissionError:
        raise PowerUnavailable(
            f"RAPL: cannot read {path} (permission denied: {what} is readable by root only)"
        ) from None
    except (OSError, ValueError) as exc:
        raise PowerUnavailable(f"RAPL: cannot read {path} ({exc})") from None


class RaplMeter:
    """The summed energy counters of the CPU package domains under `root` (Linux powercap).

    Package domains are the top-level zones (`intel-rapl:N`, also used by AMD CPUs) whose
    `name` starts with "package". `read_j()` returns the joules used since the meter was made,
    adding each domain's counter difference; a counter that went down has wrapped around at
    `max_energy_range_uj`, so the difference is max_range - last + current. Call it at least
    once per wrap period (minutes to hours, depending on the CPU's power) to keep it exact.
    Raises PowerUnavailable("RAPL: ...") if `root` is absent, holds no package domain, or its
    counters cannot be read.
    """

    def __init__(self, root: Path = POWERCAP_ROOT) -> None:
        root = Path(root)
        if not root.is_dir():
            raise PowerUnavailable(f"RAPL: {root} not present")
        self.root = root
        self._domains: list[_RaplDomain] = []
        for zone in sorted(root.iterdir()):
            name_file, energy_file = zone / "name", zone / "energy_uj"
            if zone.name.count(":") != 1 or not name_file.is_file() or not energy_file.is_file():
                continue
            try:
                label = name_file.read_text().strip()
            except OSError:
                continue
            if not label.startswith("package"):
                continue
            max_range = _read_int(zone / "max_energy_range_uj", "max_energy_range_uj")
            if max_range <= 0:
                raise PowerUnavailable(f"RAPL: {zone}/max_energy_range_uj is {max_range}")
            current = _read_int(energy_file, "energy_uj")
            self._domains.append(_RaplDomain(zone, label, max_range, current))
        if not self._domains:
            raise PowerUnavailable(f"RAPL: no package domain (intel-rapl:N, package-*) in {root}")
        self._total_j = 0.0

    def read_j(self) -> float:
        """Joules the package domains used since this meter was made (wrap-around handled)."""
        for domain in self._domains:
            current = _read_int(domain.path / "energy_uj", "energy_uj")
            delta = current - domain.last_uj
            if delta < 0:
                delta += domain.max_range_uj
            domain.last_uj = current
            self._total_j += delta / 1e6
        return self._total_j

    def domains(self) -> list[str]:
        """The labels of the summed domains (e.g. ["package-0", "package-1"])."""
        return [d.label for d in self._domains]

    def name(self) -> str:
        return f"RAPL package energy ({' + '.join(self.domains())}) under {self.root}"


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


__all__ = [
    "POWERCAP_ROOT",
    "EdgePower",
    "EnergyMeter",
    "NvmlEnergyMeter",
    "PowerUnavailable",
    "RaplMeter",
    "edge_power",
    "measured_utilisation",
    "nvml_index_for_cuda",
]
