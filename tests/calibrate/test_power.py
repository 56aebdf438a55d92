"""Edge power: RAPL measured where present, else the declared-power model; one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibrate.power import EdgePower, edge_power, measured_utilisation
from realrun.cloud.energy import PowerUnavailable


def fake_proc_stat(path: Path) -> Path:
    path.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n")
    return path


def test_measured_utilisation_is_a_fraction() -> None:
    utilisation = measured_utilisation(0.05)
    assert 0.0 <= utilisation <= 1.0


def test_edge_power_without_rapl_uses_declared_power(tmp_path: Path) -> None:
    power = edge_power(
        28.0,
        sample_s=0.05,
        rapl_root=tmp_path / "no-powercap",
        proc_stat=fake_proc_stat(tmp_path / "stat"),
    )
    assert isinstance(power, EdgePower)
    assert power.busy_w == 28.0
    assert 0.0 <= power.idle_w <= 28.0  # declared x utilisation of the (static) fake file
    assert "declared" in power.method
    assert "no RAPL" in power.method


def test_edge_power_idle_is_declared_times_measured_utilisation(tmp_path: Path) -> None:
    power = edge_power(15.0, sample_s=0.05, rapl_root=tmp_path / "none")
    assert power.busy_w == 15.0
    assert 0.0 <= power.idle_w <= 15.0
    assert "/proc/stat" in power.method


def test_edge_power_without_rapl_or_declared_power_says_pass_package_watts(
    tmp_path: Path,
) -> None:
    with pytest.raises(PowerUnavailable) as info:
        edge_power(None, sample_s=0.05, rapl_root=tmp_path / "no-powercap")
    message = str(info.value)
    assert "--package-watts" in message
    assert "RAPL" in message
    assert "\n" not in message


def test_edge_power_rejects_a_bad_declared_power(tmp_path: Path) -> None:
    for bad in (0.0, -5.0, float("nan"), True):
        with pytest.raises(ValueError, match="declared_package_w"):
            edge_power(bad, sample_s=0.05, rapl_root=tmp_path / "none")


def test_edge_power_with_rapl_measures_idle_and_busy(tmp_path: Path) -> None:
    """A fake RAPL tree whose counter does not move: measured (0 W) and says RAPL."""
    package = tmp_path / "intel-rapl:0"
    package.mkdir()
    for name, text in (
        ("name", "package-0"),
        ("energy_uj", "1000"),
        ("max_energy_range_uj", "9999"),
    ):
        (package / name).write_text(f"{text}\n")
    power = edge_power(None, sample_s=0.05, threads=1, rapl_root=tmp_path)
    assert power.method.startswith("measured: RAPL")
    assert power.busy_w == 0.0
    assert power.idle_w == 0.0
