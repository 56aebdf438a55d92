"""The fleet validation's recorded compute rows (validation.fleet.read_costs): the cloud's
trace holds each request's prompt prefill beside its batches, in time order, so the replayed
simulator serves a prefill at the speed the server prefilled at, not at the batch's before it."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.scenario import expand_sweep
from validation.fleet import read_costs

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "scenarios" / "profiles" / "cpu-testbed.json"
TOML = f"""
name = "fleet_costs_test"
profile = "{PROFILE}"
seeds = [1]
[prompts]
count = 1
prompt_len = 40
max_new_tokens = 8
[cloud]
max_batch = 2
[[edge_groups]]
count = 1
[[policies]]
name = "vanilla"
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_cloud_trace_holds_each_prefill_in_time_order(tmp_path):
    (tmp_path / "s.toml").write_text(TOML)
    points = expand_sweep(tmp_path / "s.toml", [], [])
    target = points[0].scenario.profile.profile.target_latency
    real = tmp_path / "real"
    write(real / "points/p0/compute_cloud.csv",
          "point,policy,seed,batch,batch_size,navs,t_s,measured_s,predicted_s,factor\n"
          "0,vanilla,1,0,1,1,0.40,0.05,0.04,0.8\n")  # fmt: skip
    edge = real / "points/p0/edges/vanilla_s1/e0"
    # cloud_busy_s: the NAV's share (50 ms, alone) plus a 250 ms prefill
    write(edge / "results.csv", "request,prompt_len,cloud_busy_s\n0,40,0.3\n")
    write(edge / "batches.csv", "request,nav,batch_size,target_ms,t_s\n0,0,1,50.0,0.40\n")
    write(edge / "timelines/t.csv",
          "lane,start_s,end_s,label,request,first,last,ready_s,edge\n"
          "draft,0.01,0.03,prefill,0,0,0,0,0\n"
          "draft,0.03,0.04,draft,0,0,1,0,0\n"
          "cloud,0.35,0.45,NAV,0,0,1,0.04,0\n")  # fmt: skip
    cloud = read_costs(real, points)[(0, "vanilla", 1)]["cloud"]
    assert [float(r["t_s"]) for r in cloud] == pytest.approx([0.10, 0.40])
    assert cloud[0]["measured_s"] == pytest.approx(0.25)
    assert cloud[0]["factor"] == pytest.approx(target.prefill_s(40) / 0.25)
