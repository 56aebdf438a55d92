"""Target profiler on the "tiny" random model (CPU) (the shapes themselves: tests/models)."""

from __future__ import annotations

import pytest
from noise_checks import assert_runs_accounted

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from calibrate.fit import fit_target_latency  # noqa: E402
from calibrate.samples import ForwardSample, PrefillSample  # noqa: E402
from calibrate.target import profile_target  # noqa: E402
from calibrate.target_results import TargetMeasurements  # noqa: E402
from models.shapes import build_random_model  # noqa: E402
from realrun.cloud.energy import NvmlEnergyMeter, PowerUnavailable  # noqa: E402
from simulator.profile import TargetLatency  # noqa: E402

TOKENS = (1, 4)
BATCHES = (1, 2)
CONTEXTS = (16, 32)
PROMPTS = (8, 16, 32)
REPETITIONS = 2


class FakeMeter:
    """A meter whose counter advances by a fixed amount per reading (for the energy window)."""

    def __init__(self, joules_per_read: float) -> None:
        self.step = joules_per_read
        self.total = 0.0

    def read_j(self) -> float:
        self.total += self.step
        return self.total

    def name(self) -> str:
        return "fake meter"


@pytest.fixture(scope="module")
def tiny() -> object:
    return build_random_model("tiny", torch.float32, "cpu", seed=0)


@pytest.fixture(scope="module")
def measured(tiny: object) -> TargetMeasurements:
    return profile_target(
        tiny,
        "cpu",
        token_counts=TOKENS,
        batch_sizes=BATCHES,
        context_lengths=CONTEXTS,
        prompt_lengths=PROMPTS,
        repetitions=REPETITIONS,
        warmup=1,
        energy_meter=NvmlEnergyMeter,
    )


def test_tiny_profile_has_every_configuration(measured: TargetMeasurements) -> None:
    noise = measured.noise
    assert len(noise["prefill"]) == len(PROMPTS)
    assert len(noise["forward"]) == len(TOKENS) * len(BATCHES) * len(CONTEXTS)
    assert_runs_accounted(
        measured.prefill, measured.prefill_rejected, noise["prefill"], REPETITIONS
    )
    assert_runs_accounted(
        measured.forward, measured.forward_rejected, noise["forward"], REPETITIONS
    )
    assert all(row["statistic"] == "min" for row in (*noise["prefill"], *noise["forward"]))
    assert all(isinstance(s, PrefillSample) and s.seconds > 0 for s in measured.prefill)
    assert all(isinstance(s, ForwardSample) and s.seconds > 0 for s in measured.forward)
    assert len(measured.runs) == len(TOKENS) * len(BATCHES) * len(CONTEXTS)
    assert set(measured.prefill_stats) == set(PROMPTS)


def test_forward_samples_sum_positions_and_context_over_the_batch(
    measured: TargetMeasurements,
) -> None:
    expected = {(n * b, c * b, b) for n in TOKENS for b in BATCHES for c in CONTEXTS}
    seen = {(s.new_positions, s.context_len, s.batch) for s in measured.forward}
    assert seen == expected


def test_fit_on_tiny_gives_a_valid_target_latency(measured: TargetMeasurements) -> None:
    latency, reports = fit_target_latency(measured.prefill, measured.forward)
    assert isinstance(latency, TargetLatency)
    assert latency.forward_base_s > 0
    TargetLatency.model_validate(latency.model_dump())
    assert set(reports) == {"prefill", "forward"}
    assert reports["forward"].n_samples == len(measured.forward)
    assert measured.fit()[0] == latency


def _nvml_works() -> bool:
    try:
        NvmlEnergyMeter().close()
    except PowerUnavailable:
        return False
    return True


@pytest.mark.skipif(_nvml_works(), reason="NVML works here (a GPU machine)")
def test_nvml_absent_leaves_energy_none_with_the_reason(measured: TargetMeasurements) -> None:
    assert measured.energy_method is None
    assert measured.energy_unavailable is not None
    assert measured.energy_unavailable.startswith("NVML: ")
    assert measured.idle_w is None
    assert measured.idle_unavailable == measured.energy_unavailable
    assert all(r.energy_j is None for r in measured.runs)
    assert any("energy: not measured (NVML: " in line for line in measured.lines())


def test_provenance_fields(measured: TargetMeasurements) -> None:
    assert measured.device == "cpu"
    assert measured.device_name
    assert measured.dtype == "float32"
    assert measured.model_name == "random:tiny"
    assert measured.shape["layers"] == 2
    assert measured.shape["hidden"] == 64
    assert measured.torch_version == torch.__version__
    assert measured.transformers_version


def test_energy_is_integrated_over_a_window(tiny: object) -> None:
    meter = FakeMeter(joules_per_read=0.5)
    result = profile_target(
        tiny,
        "cpu",
        token_counts=(1,),
        batch_sizes=(1,),
        context_lengths=(8,),
        prompt_lengths=(8,),
        repetitions=1,
        warmup=0,
        energy_meter=meter,
        min_window_s=0.02,
        idle_window_s=0.01,
    )
    (run,) = result.runs
    assert result.energy_method is not None and "fake meter" in result.energy_method
    assert run.window_s is not None and run.window_s >= 0.02
    assert run.window_count is not None and run.window_count >= 1
    assert run.energy_j == pytest.approx(0.5 / run.window_count)  # one step over the window
    assert result.idle_w is not None and result.idle_w > 0
    assert result.energy_per_verification() == [(1, 1, 8, run.energy_j)]


def test_energy_meter_none_switches_energy_off(tiny: object) -> None:
    result = profile_target(
        tiny,
        "cpu",
        token_counts=(1,),
        batch_sizes=(1,),
        context_lengths=(8,),
        prompt_lengths=(8,),
        repetitions=1,
        warmup=0,
        energy_meter=None,
    )
    assert result.energy_method is None
    assert "switched off" in (result.energy_unavailable or "")


@pytest.mark.parametrize(
    ("argument", "value", "match"),
    [
        ("token_counts", (), "must not be empty"),
        ("batch_sizes", (0,), "integer >= 1"),
        ("context_lengths", (8, 8), "repeated"),
        ("repetitions", 0, "repetitions"),
        ("context_lengths", (100_000,), "max_position_embeddings"),
    ],
)
def test_bad_arguments_are_named(tiny: object, argument: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        profile_target(tiny, "cpu", **{argument: value})
