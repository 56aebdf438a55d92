"""The many-edge validation's predictions execute the DiP-SD plan the testbed ran (from OUT/real's
manifest), whatever speeds they are given; a synthetic manifest stands in for a testbed run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from realrun.fleet import session_plan
from simulator.errors import ConfigError
from simulator.scenario import expand_sweep
from validation.fleet import per_edge, plan_notes, run_plans, simulate_into, split_point

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "dipsd_6users.toml"
SHORT = ["prompts.count=1", "prompts.max_new_tokens=120", "seeds=[1]", 'policies=[{name="dipsd"}]',
         'reference_policy="dipsd"']  # fmt: skip
RAN = {"batches": [[5, 0, 3], [1, 2, 4]], "lengths": [2, 9, 3, 5, 2, 9]}
KEY = (0, "dipsd", 1)
# three edges at a third of the speed: the simulator's own re-plan is not the run's
SLOW = per_edge({e: {"compute_factor": 0.3} for e in range(3)}, {})


def write_manifest(real: Path, plan: object) -> Path:
    """OUT/real/manifest.json as realrun.fleet writes it, with one DiP-SD session's plan."""
    real.mkdir(parents=True)
    session = {"plan": plan, "mean_batch_size": 3.0}
    data = {"testbed": {"points": {"0": {"sessions": {"dipsd_s1": session}}}}}
    (real / "manifest.json").write_text(json.dumps(data))
    return real


def rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_predictions_execute_the_plan_the_testbed_ran(tmp_path) -> None:
    split = split_point(expand_sweep(SCENARIO, SHORT)[0])
    ran = run_plans(write_manifest(tmp_path / "real", {**RAN, "throughput_tokens_per_s": 1.0}))
    used = simulate_into([split], {KEY: SLOW}, 1, tmp_path / "given", ran)
    assert used == {"p0_dipsd_s1": {**RAN, "source": "testbed"}}
    records = rows(tmp_path / "given")
    assert len(records) == 6
    for record in records:
        # each edge drafts the run's length (its last NAVs may be cut short by max_new_tokens)
        length, navs, verified = (
            RAN["lengths"][int(record["edge"])],
            int(record["navs"]),
            int(record["verified"]),
        )
        assert (navs - 2) * length <= verified <= navs * length
    own = simulate_into([split], {KEY: SLOW}, 1, tmp_path / "own")
    assert own["p0_dipsd_s1"]["source"] == "re-planned"
    assert {k: own["p0_dipsd_s1"][k] for k in RAN} != RAN
    assert rows(tmp_path / "own") != records
    notes = plan_notes({"replayed": used, "run_speed": own})
    assert notes[0] == ("recorded compute traces replayed: DiP-SD verified the plan the testbed "
                        "ran (its manifest's batches and draft lengths)")  # fmt: skip
    assert notes[1].startswith("mean run speed: the run's manifest has no DiP-SD plan for p0_dip")


def test_the_run_plan_equal_to_the_simulators_own_changes_nothing(tmp_path) -> None:
    split = split_point(expand_sweep(SCENARIO, SHORT)[0])
    computed = session_plan(split, 1)
    ran = run_plans(write_manifest(tmp_path / "real", computed))
    simulate_into([split], {KEY: per_edge({}, {})}, 1, tmp_path / "given", ran)
    simulate_into([split], {KEY: per_edge({}, {})}, 1, tmp_path / "own")
    given = (tmp_path / "given" / "results.csv").read_text()
    assert given == (tmp_path / "own" / "results.csv").read_text()


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        ({"batches": [[0, 1], [1]], "lengths": [2, 3]}, "sessions.dipsd_s1.plan: batches must"),
        ({"batches": [[0], [1]], "lengths": [2, 0]}, r"sessions.dipsd_s1.plan.lengths\[1\]"),
        ({"batches": [[0], [1]]}, "sessions.dipsd_s1.plan.lengths: required field is missing"),
        ([1, 2], "sessions.dipsd_s1.plan"),
    ],
)
def test_a_bad_plan_in_the_runs_manifest_is_one_line(tmp_path, plan, field) -> None:
    real = write_manifest(tmp_path / "real", plan)
    with pytest.raises(ConfigError, match=field) as error:
        run_plans(real)
    assert str(error.value).startswith(str(real / "manifest.json") + ": testbed.points.0.")
    assert "\n" not in str(error.value)


def test_the_testbed_runs_a_scenarios_fixed_plan() -> None:
    fixed = f"policies.dipsd.plan={{batches={RAN['batches']}, lengths={RAN['lengths']}}}"
    point = expand_sweep(SCENARIO, [*SHORT, fixed])[0]
    plan = session_plan(point, 1, "dipsd")
    # the run's batches in their order, each listing its edges in index order
    assert plan["batches"] == [sorted(b) for b in RAN["batches"]]
    assert plan["lengths"] == RAN["lengths"]
    assert {k: session_plan(point, 1)[k] for k in RAN} != RAN  # no label: the optimiser's
