"""A many-edge session's cloud compute trace (realrun/fleet_trace.py): NAVs regrouped into the
server's batches by their shared target-time float, each batch timed by the simulator's batch
cost over its NAVs."""

from __future__ import annotations

import pytest

from realrun.fleet_trace import batch_predicted_s, cloud_rows, group_batches, prefill_row
from simulator.profile import TargetLatency

TARGET = TargetLatency(
    prefill_base_s=0.01,
    prefill_per_token_s=0.001,
    forward_base_s=0.02,
    forward_per_token_s=0.001,
    forward_per_context_token_s=0.0001,
    forward_per_extra_sequence_s=0.005,
    forward_per_position_context_s=1e-6,
)


def nav(edge: int, size: int, ms: float, t_s: float, positions: int = 3, context: int = 40):
    return {"edge": edge, "batch_size": size, "target_ms": ms, "t_s": t_s,
            "positions": positions, "context": context}  # fmt: skip


def test_navs_sharing_a_target_time_form_one_batch_split_in_time_order():
    navs = [
        nav(0, 2, 41.123456789, 1.00),
        nav(1, 2, 41.123456789, 1.001),
        nav(0, 1, 30.0, 0.5),
        nav(0, 2, 41.123456789, 3.00),  # the same float again, later: another batch
        nav(1, 2, 41.123456789, 3.002),
        nav(1, 2, 41.12345679, 2.0, positions=5),  # a different float: its own batch
    ]
    batches = group_batches(navs)
    assert [[n["t_s"] for n in b] for b in batches] == [[0.5], [1.0, 1.001], [2.0], [3.0, 3.002]]
    assert [n["batch"] for n in navs] == [1, 1, 0, 3, 3, 2]


def test_a_batch_is_timed_as_the_simulator_serves_it():
    batch = [nav(0, 2, 50.0, 1.0, positions=3, context=40), nav(1, 2, 50.0, 1.0, 5, 60)]
    expected = TARGET.forward_s(8, 100, 2, 3 * 40 + 5 * 60)
    assert batch_predicted_s(batch, TARGET) == pytest.approx(expected)
    # a batch of 2 with one NAV recorded: that NAV counted twice
    assert batch_predicted_s(batch[:1], TARGET) == pytest.approx(
        TARGET.forward_s(6, 80, 2, 2 * 3 * 40)
    )


def test_cloud_rows_give_each_batch_its_factor():
    navs = [nav(0, 2, 50.0, 1.0), nav(1, 2, 50.0, 1.01), nav(0, 1, 20.0, 0.2)]
    rows = cloud_rows({"point": 0, "policy": "vanilla", "seed": 1}, navs, TARGET)
    assert [(r["batch"], r["batch_size"], r["navs"], r["t_s"]) for r in rows] == [
        (0, 1, 1, 0.2),
        (1, 2, 2, 1.0),
    ]
    assert rows[1]["measured_s"] == pytest.approx(0.05)
    assert rows[1]["factor"] == pytest.approx(TARGET.forward_s(6, 80, 2, 240) / 0.05)
    assert all(r["policy"] == "vanilla" and r["seed"] == 1 for r in rows)


def test_a_requests_prefill_is_its_cloud_share_less_its_navs():
    """The prefill's time is the request's cloud share (each batch's target time over its size,
    plus the prefill) less its NAVs' shares; it ended when the first message after the open
    was sent."""
    navs = [nav(0, 2, 50.0, 1.0), nav(0, 1, 20.0, 1.2)]
    row = prefill_row(40, 0.025 + 0.020 + 0.100, navs, sent_s=0.5, target=TARGET)
    assert row is not None
    assert row["measured_s"] == pytest.approx(0.100)
    assert row["t_s"] == pytest.approx(0.4)
    assert row["predicted_s"] == pytest.approx(TARGET.prefill_s(40))
    assert row["factor"] == pytest.approx(TARGET.prefill_s(40) / 0.100)
    assert prefill_row(40, 0.045, navs, sent_s=0.5, target=TARGET) is None  # no prefill left
