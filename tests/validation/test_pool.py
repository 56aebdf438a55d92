"""`pipesd pool` (validation/pool.py): validations of one sweep judged as one. A committed run
split by policy into two folders, as a campaign split into runs would leave it, pools back to
the very figures the whole run gave."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from pipesd.cli import main

REPO = Path(__file__).resolve().parents[2]
RUN22 = REPO / "docs/validation/cpu-run22-real164"
FIRST = {"vanilla", "hsl"}
"""The policies the first half of the split run keeps (the second keeps edgellm and pipesd)."""


def keep_rows(source: Path, target: Path, wanted) -> None:
    """Copy the CSV `source` to `target` with only the rows whose policy `wanted` accepts."""
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if wanted(row["policy"])]
        columns = reader.fieldnames or []
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


def split_run(root: Path) -> tuple[Path, Path]:
    """Run 22 as two runs: validation.csv and real/results.csv split by policy."""
    halves = root / "a", root / "b"
    for half, wanted in zip(halves, (FIRST.__contains__, lambda p: p not in FIRST), strict=True):
        keep_rows(RUN22 / "validation.csv", half / "validation.csv", wanted)
        keep_rows(RUN22 / "real" / "results.csv", half / "real" / "results.csv", wanted)
    return halves


def test_a_run_split_by_policy_pools_back_to_its_own_figures(tmp_path, capsys):
    first, second = split_run(tmp_path)
    out = tmp_path / "pooled"
    assert main(["pool", str(first), str(second), "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "over 12 rows" in printed and "TPT predictions of these 2 validations" in printed
    whole = json.loads((RUN22 / "manifest.json").read_text())
    pooled = json.loads((out / "manifest.json").read_text())
    assert pooled["kind"] == "pool" and pooled["rows"] == 12
    assert [s["rows"] for s in pooled["sources"]] == [6, 6]
    for key in ("calibration", "replayed_compute_traces", "mean_run_speed"):
        for figure in ("tpt_abs_error_median", "tpt_abs_error_p90"):
            expected = whole["predictions"][key][figure]
            assert pooled["predictions"][key][figure] == pytest.approx(expected, rel=1e-4)
        assert (
            pooled["predictions"][key]["ranking_mismatches"]
            == whole["predictions"][key]["ranking_mismatches"]
        )
    for metric in ("nav_count", "mean_accepted_len"):
        assert pooled["abs_error_median_p90"][metric] == pytest.approx(
            whole["abs_error_median_p90"][metric], rel=1e-4
        )
    # a pair is tested only within the run that measured both policies: the whole run's
    # separated pairs, less those across the halves
    across = [
        pair
        for pair in whole["ranking_of_separated_pairs"]["mismatches"]
        if (pair["faster"] in FIRST) != (pair["slower"] in FIRST)
    ]
    separated = pooled["ranking_of_separated_pairs"]
    assert separated["pairs"] == whole["ranking_of_separated_pairs"]["pairs"] == 18
    assert 0 < separated["separated_pairs"] < whole["ranking_of_separated_pairs"]["separated_pairs"]
    assert len(separated["mismatches"]) <= len(whole["ranking_of_separated_pairs"]["mismatches"])
    assert all(m not in separated["mismatches"] for m in across)
    with (out / "validation.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["source"] for row in rows} == {str(first), str(second)}
    assert sorted(row["policy"] for row in rows) == sorted(
        row["policy"] for row in csv.DictReader((RUN22 / "validation.csv").open(newline=""))
    )


def rewrite(path: Path, change) -> None:
    """Rewrite the CSV at `path` with `change` applied to each row."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows, columns = list(reader), reader.fieldnames or []
    for row in rows:
        change(row)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


def test_sweep_points_are_matched_by_their_values_not_their_numbers(tmp_path, capsys):
    first, second = split_run(tmp_path / "reordered")

    def swap(row: dict[str, str]) -> None:  # the second run swept the uplinks in reverse
        row["point"] = str(2 - int(row["point"]))

    rewrite(second / "validation.csv", swap)
    rewrite(second / "real" / "results.csv", swap)
    plain_first, plain_second = split_run(tmp_path / "plain")
    reordered, plain = tmp_path / "pooled-reordered", tmp_path / "pooled-plain"
    assert main(["pool", str(first), str(second), "--quiet", "--out", str(reordered)]) == 0
    assert main(["pool", str(plain_first), str(plain_second), "--quiet", "--out", str(plain)]) == 0
    capsys.readouterr()
    got = json.loads((reordered / "manifest.json").read_text())
    expected = json.loads((plain / "manifest.json").read_text())
    for key in ("ranking_mismatches", "ranking_of_separated_pairs", "predictions"):
        assert got[key] == expected[key]


def test_bad_pools_are_one_line_exit_2(tmp_path, capsys):
    first, second = split_run(tmp_path)
    out = str(tmp_path / "out")

    def refused(*args: str) -> str:
        assert main(["pool", *args, "--out", out]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1
        return err

    assert "two or more" in refused(str(first))
    assert "validation.csv" in refused(str(first), str(tmp_path / "nothing"))
    assert "also in" in refused(str(first), str(RUN22))
    assert "given twice" in refused(str(first), str(first))
    assert main(["pool", str(first), str(second), "--out", str(first)]) == 2
    assert "must differ" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(second, other)
    text = (other / "validation.csv").read_text()
    (other / "validation.csv").write_text(text.replace("link.uplink_mbps", "link.downlink_mbps", 1))
    assert "axes" in refused(str(first), str(other))
    (other / "validation.csv").write_text("point,policy,tpt_ms_real\n0,vanilla,1\n")
    assert "columns" in refused(str(first), str(other))
    assert not Path(out).exists()
