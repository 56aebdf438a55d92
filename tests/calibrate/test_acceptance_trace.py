"""Acceptance trace files: round trip, replay in the simulator, and bad files (one line, exit 2)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from calibrate.acceptance_recording import PositionRecord
from calibrate.acceptance_trace import COLUMNS, MAGIC, read_trace, write_trace_gz
from pipesd.cli import main
from simulator.acceptance import AcceptanceModel, ReplayTraces
from simulator.acceptance_spec import ReplayAcceptance
from simulator.errors import ConfigError

PROVENANCE = {"recipe": "quant:Q4_0", "family": "humaneval", "split": "heldout", "command": "x"}


def records(n_sequences: int = 3, length: int = 20, seed: int = 0) -> list[PositionRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_sequences):
        for p in range(length):
            conf = float(rng.uniform(0.05, 1.0))
            probs = tuple(sorted(rng.dirichlet(np.ones(4)), reverse=True))
            out.append(
                PositionRecord(
                    s,
                    p,
                    conf,
                    bool(rng.random() < conf),
                    int(rng.integers(49152)),
                    float(rng.random()),
                    tuple(int(i) for i in rng.integers(49152, size=4)),
                    probs,
                )
            )
    return out


def test_round_trip(tmp_path: Path) -> None:
    written = records()
    path = write_trace_gz(written, tmp_path / "t.csv.gz", PROVENANCE)
    provenance, read = read_trace(path)
    assert provenance == PROVENANCE
    assert len(read) == len(written)
    for a, b in zip(written, read, strict=True):
        assert (a.sequence, a.position, a.token, a.accepted) == (
            b.sequence,
            b.position,
            b.token,
            b.accepted,
        )
        assert a.confidence == b.confidence and a.accept_prob == b.accept_prob
        assert a.top_ids == b.top_ids
        assert np.allclose(a.top_probs, b.top_probs, rtol=1e-3)
    with pytest.raises(ValueError, match="never overwritten"):
        write_trace_gz(written, path, PROVENANCE)
    # the same records give the same bytes
    again = write_trace_gz(written, tmp_path / "u.csv.gz", PROVENANCE)
    assert again.read_bytes() == path.read_bytes()


def test_simulator_replays_and_bootstraps_the_trace(tmp_path: Path) -> None:
    written = records()
    write_trace_gz(written, tmp_path / "t.csv.gz", PROVENANCE)
    traces = ReplayTraces.load(tmp_path / "t.csv.gz")
    assert len(traces.sequences) == 3
    assert np.array_equal(traces.sequences[1][0], [r.confidence for r in written[20:40]])
    spec = ReplayAcceptance(kind="replay", trace="t.csv.gz", block=5)
    model = AcceptanceModel(spec, tmp_path)
    stream = model.stream(seed=1, edge=0, request=2, n_positions=33)
    again = model.stream(seed=1, edge=0, request=2, n_positions=33)
    assert stream.confidence == again.confidence and len(stream.confidence) == 33
    # every block of 5 is 5 consecutive recorded positions of one sequence
    index = {r.confidence: i for i, r in enumerate(written)}
    for start in range(0, 30, 5):
        first = index[stream.confidence[start]]
        block = written[first : first + 5]
        assert len({r.sequence for r in block}) == 1
        assert [r.confidence for r in block] == stream.confidence[start : start + 5]
        assert [r.accepted for r in block] == list(stream.accepted[start : start + 5])
    with pytest.raises(ConfigError, match="longer than the longest"):
        AcceptanceModel(ReplayAcceptance(kind="replay", trace="t.csv.gz", block=21), tmp_path)


def test_replay_in_request_order_gives_request_r_sequence_r(tmp_path: Path) -> None:
    """order = "request": request r replays sequence r (cycling), whatever the seed: the trace
    of the very prompts a testbed run used, in its order; whole sequences only."""
    written = records()
    write_trace_gz(written, tmp_path / "t.csv.gz", PROVENANCE)
    spec = ReplayAcceptance(kind="replay", trace="t.csv.gz", order="request")
    model = AcceptanceModel(spec, tmp_path)
    for request in range(5):
        sequence = [r for r in written if r.sequence == request % 3]
        for seed in (1, 7):
            stream = model.stream(seed=seed, edge=0, request=request, n_positions=20)
            assert stream.confidence == [r.confidence for r in sequence]
            assert list(stream.accepted) == [r.accepted for r in sequence]
    with pytest.raises(ValueError, match="whole sequences"):
        ReplayAcceptance(kind="replay", trace="t.csv.gz", order="request", block=5)


def _gz(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    return path


HEADER = ",".join(COLUMNS)
GOOD_ROW = "0,0,5,0.9,1,1.0,5 7,0.8 0.1"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not a gzip file"),
        ("sequence,position\n", "expected the trace header"),
        (MAGIC + "{not json\n" + HEADER + "\n" + GOOD_ROW + "\n", "provenance is not JSON"),
        (MAGIC + "{}\nsequence,position\n", "header must be"),
        (MAGIC + "{}\n" + HEADER + "\n", "holds no rows"),
        (MAGIC + "{}\n" + HEADER + "\n0,0,5,0.9,yes,1.0,5,0.8\n", "accepted must be 0 or 1"),
        (MAGIC + "{}\n" + HEADER + "\n0,0,5,1.5,1,1.0,5,0.8\n", "confidence 1.5 not in"),
        (MAGIC + "{}\n" + HEADER + "\n0,0,5,0.9,1,1.0,5 6,0.8\n", "differ in length"),
        (MAGIC + "{}\n" + HEADER + "\n0,0,x,0.9,1,1.0,5,0.8\n", "not numbers"),
        (MAGIC + "{}\n" + HEADER + "\n0,0,5,0.9,1\n", "expected 8 columns"),
    ],
)
def test_bad_trace_files(tmp_path: Path, capsys, content: str | None, message: str) -> None:
    path = tmp_path / "bad.csv.gz"
    if content is None:
        path.write_text("plain text, not gzip\n")
    else:
        _gz(path, content)
    with pytest.raises(ConfigError, match=message):
        read_trace(path)
    code = main(
        [
            "calibrate",
            "acceptance-fit",
            "--traces",
            str(path),
            "--heldout",
            str(path),
            "--out",
            str(tmp_path / "model.json"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "bad.csv.gz" in err and message.split()[0] in err
    assert not (tmp_path / "model.json").exists()


def test_fit_command_writes_a_model_with_provenance(tmp_path: Path, capsys) -> None:
    from calibrate.acceptance_check_cli import load_model

    fit = write_trace_gz(records(8, 40, seed=1), tmp_path / "fit.csv.gz", PROVENANCE)
    held = write_trace_gz(records(4, 40, seed=2), tmp_path / "held.csv.gz", PROVENANCE)
    out = tmp_path / "model.json"
    argv = [
        "calibrate",
        "acceptance-fit",
        "--traces",
        str(fit),
        "--heldout",
        str(held),
        "--states",
        "1,2",
        "--bins",
        "4",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "acceptance rate" in printed and "P(accept | prev rejected)" in printed
    data = json.loads(out.read_text())
    assert data["provenance"]["trace_provenance"] == [PROVENANCE]
    assert data["fit"]["states"] in (1, 2)
    assert load_model(out).kind == "hmm"
    assert main(argv) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err
    assert math.isfinite(data["report"]["heldout"]["rate"])


def test_traces_can_be_recorded_in_shards_of_a_split() -> None:
    """`--start N --limit M`: the split's prompts N .. N+M-1 (the fitting split recorded in
    shards on two cores); a start past the split's end is refused in one line."""
    import argparse

    from calibrate.acceptance_cli import _prompts
    from models.prompts import family_prompts

    def chosen(start: int, limit: int | None) -> list[str]:
        args = argparse.Namespace(family="humaneval", split="fit", start=start, limit=limit)
        return [p.id for p in _prompts(args)]

    every = [p.id for p in family_prompts("humaneval", "fit")]
    assert chosen(0, None) == every and chosen(0, 5) == every[:5]
    assert chosen(48, 37) + chosen(85, 37) == every[48:122]
    assert chosen(len(every) - 2, 10) == every[-2:]
    with pytest.raises(ConfigError, match="--start"):
        chosen(len(every), None)
    with pytest.raises(ConfigError, match="--start"):
        chosen(-1, None)
    with pytest.raises(ConfigError, match="--limit"):
        chosen(0, 0)
