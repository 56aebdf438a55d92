"""Energy meters: NVML and RAPL absent give one-line PowerUnavailable; RAPL sums and unwraps."""

from __future__ import annotations

from pathlib import Path

import pytest

from realrun.cloud.energy import (
    NvmlEnergyMeter,
    PowerUnavailable,
    RaplMeter,
    nvml_index_for_cuda,
)

MAX_RANGE_UJ = 262_143_328_850
"""A real Intel package's max_energy_range_uj (the counter wraps to 0 after it)."""


def zone(root: Path, name: str, label: str, energy_uj: int, max_uj: int = MAX_RANGE_UJ) -> Path:
    """A fake powercap zone folder with its name, energy and range files."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "name").write_text(f"{label}\n")
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return folder


def set_energy(folder: Path, energy_uj: int) -> None:
    (folder / "energy_uj").write_text(f"{energy_uj}\n")


def nvml_works() -> bool:
    try:
        NvmlEnergyMeter().close()
    except PowerUnavailable:
        return False
    return True


@pytest.mark.skipif(nvml_works(), reason="NVML works here (a GPU machine)")
def test_nvml_absent_raises_one_line_power_unavailable() -> None:
    with pytest.raises(PowerUnavailable) as info:
        NvmlEnergyMeter(0)
    message = str(info.value)
    assert message.startswith("NVML: ")
    assert "\n" not in message


def test_nvml_rejects_a_negative_index() -> None:
    with pytest.raises(ValueError, match="device_index"):
        NvmlEnergyMeter(-1)


def test_nvml_index_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert nvml_index_for_cuda(0) == 3
    assert nvml_index_for_cuda(1) == 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert nvml_index_for_cuda(2) == 2


def test_rapl_sums_package_domains_in_joules(tmp_path: Path) -> None:
    p0 = zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    p1 = zone(tmp_path, "intel-rapl:1", "package-1", 5_000_000)
    zone(tmp_path, "intel-rapl:0:0", "core", 0)  # a subzone: not summed
    zone(tmp_path, "intel-rapl:2", "psys", 0)  # not a package
    (tmp_path / "intel-rapl").mkdir()  # the control-type folder, no counters
    meter = RaplMeter(tmp_path)
    assert meter.domains() == ["package-0", "package-1"]
    assert meter.read_j() == 0.0
    set_energy(p0, 3_500_000)  # +2.5 J
    set_energy(p1, 6_000_000)  # +1.0 J
    assert meter.read_j() == pytest.approx(3.5)
    set_energy(p0, 4_000_000)  # +0.5 J
    assert meter.read_j() == pytest.approx(4.0)
    assert "package-0 + package-1" in meter.name()


def test_rapl_handles_wrap_around(tmp_path: Path) -> None:
    near_top = MAX_RANGE_UJ - 2_000_000
    package = zone(tmp_path, "intel-rapl:0", "package-0", near_top)
    meter = RaplMeter(tmp_path)
    set_energy(package, 3_000_000)  # 2 J to the top, then 3 J after wrapping
    assert meter.read_j() == pytest.approx(5.0)
    set_energy(package, 4_000_000)
    assert meter.read_j() == pytest.approx(6.0)


def test_rapl_missing_root_is_power_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "powercap"
    with pytest.raises(PowerUnavailable, match=r"^RAPL: .*powercap not present$"):
        RaplMeter(missing)


def test_rapl_without_package_domain_is_power_unavailable(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0:0", "core", 0)
    with pytest.raises(PowerUnavailable, match="RAPL: no package domain"):
        RaplMeter(tmp_path)


def test_rapl_unreadable_counter_says_so(tmp_path: Path) -> None:
    package = zone(tmp_path, "intel-rapl:0", "package-0", 0)
    (package / "energy_uj").write_text("not a number\n")
    with pytest.raises(PowerUnavailable, match="RAPL: cannot read"):
        RaplMeter(tmp_path)
