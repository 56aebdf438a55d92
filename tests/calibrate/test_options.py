"""calibrate.options: measurement options are checked when made, one line naming the flag."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from calibrate.measure import PART_KINDS
from calibrate.options import (
    AcceptanceOptions,
    DraftOptions,
    LinkOptions,
    MeasureOptions,
    PowerOptions,
    TargetOptions,
    WireOptions,
)
from simulator.errors import ConfigError


def one_line_error(make: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        make()
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("make", "flag"),
    [
        (lambda: DraftOptions("smollm2-135m", threads=0), "--threads"),
        (lambda: DraftOptions("m", threads=1, prompt_lengths=()), "--prompt-lengths"),
        (lambda: DraftOptions("m", threads=1, context_lengths=(64, -1)), "--context-lengths"),
        (lambda: DraftOptions("m", threads=1, warmup=-1), "--warmup"),
        (lambda: DraftOptions("m", threads=1, pause_ms=float("nan")), "--pause-ms"),
        (lambda: TargetOptions("m", backend="onnx"), "--backend"),
        (lambda: TargetOptions("tiny", threads=2), "--threads"),
        (lambda: TargetOptions("m", backend="llama"), "--threads"),
        (lambda: TargetOptions("m", backend="torch-served", batch_sizes=(1, 2)), "--batch"),
        (lambda: TargetOptions("m", backend="llama", threads=1, device="cuda"), "--device"),
        (lambda: TargetOptions("m", backend="llama", threads=1, dtype="float32"), "--dtype"),
        (lambda: TargetOptions("m", backend="torch-served", device="gpu"), "--device"),
        (lambda: TargetOptions("m", repetitions=0), "--repetitions"),
        (lambda: PowerOptions(package_watts=-5.0), "--package-watts"),
        (lambda: PowerOptions(seconds=0.0), "--seconds"),
        (lambda: LinkOptions(), "--server"),
        (lambda: LinkOptions(server="http://x", testbed=Path("s.toml")), "--testbed"),
        (lambda: LinkOptions(server="http://x", emulated_latency_s=-1.0), "--emulated-latency-s"),
        (lambda: LinkOptions(server="http://x", testbed_shaping="netem"), "--testbed-shaping"),
        (lambda: WireOptions(tokens=0), "--tokens"),
        (lambda: WireOptions(session=Path("s.toml")), "--draft"),
        (lambda: AcceptanceOptions("d", "t", Path("x.csv"), bins=0), "--bins"),
    ],
)
def test_bad_options_are_one_line_naming_the_flag(make: Any, flag: str) -> None:
    assert flag in one_line_error(make)


def test_a_session_scenario_must_exist(tmp_path: Path) -> None:
    message = one_line_error(lambda: WireOptions(session=tmp_path / "no.toml", draft="d"))
    assert "not found" in message


def test_grids_are_stored_as_tuples_and_options_are_frozen() -> None:
    options = DraftOptions("smollm2-135m", threads=2, prompt_lengths=[8, 16])  # type: ignore[arg-type]
    assert options.prompt_lengths == (8, 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.threads = 3  # type: ignore[misc]


def test_served_backends_take_a_numbered_cuda_device() -> None:
    assert TargetOptions("tiny", backend="torch-served", device="cuda:1").device == "cuda:1"
    assert TargetOptions("m", backend="llama", threads=1, batch_sizes=(1,)).batch_sizes == (1,)


def test_every_options_type_names_the_part_it_measures() -> None:
    assert set(PART_KINDS) == set(typing.get_args(MeasureOptions))
