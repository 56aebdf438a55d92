"""Energy meters the cloud server and the profilers read: NVML for a GPU, RAPL for CPU packages.

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

Why here: the testbed's cloud server reports the energy of every verification with them, and
`calibrate` (above realrun) measures with the same meters.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

POWERCAP_ROOT = Path("/sys/class/powercap")
"""Where Linux exposes RAPL energy counters."""


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
            import pynvml  # optional (extra 'models'): absent without an NVIDIA stack
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


__all__ = [
    "POWERCAP_ROOT",
    "EnergyMeter",
    "NvmlEnergyMeter",
    "PowerUnavailable",
    "RaplMeter",
    "nvml_index_for_cuda",
]
