"""The lossless check of a real-acceptance validation: every request's output equals the
target's own greedy output through the same evaluation path.

The testbed writes each request's output tokens to OUT/real/outputs.csv (realrun.testbed);
request r's prompt is the scenario's prompt family's r-th (cycling). The reference is
`calibrate.acceptance.target_greedy` (the target loaded as the server loads it, with flash
attention, one token per step, no stop at end of generation, as the testbed's edge), computed
once per distinct (prompt, max_new_tokens). Greedy verification by a llama.cpp target only:
synthetic acceptance keeps only positions, and sampling is lossless in distribution, not
token for token. A request the edge finished with its draft alone after losing the cloud
(`local_tokens`, realrun/edge/offline.py: availability over losslessness, by design) passes
when its cloud-verified tokens equal the reference, and is counted apart.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from calibrate.acceptance import first_mismatch, target_greedy
from models.prompts import family_prompts
from realrun.local import LocalOptions
from simulator.results import write_table
from simulator.scenario import SweepPoint

LOSSLESS_COLUMNS = ("point", "policy", "seed", "request", "prompt_id", "tokens", "equal",
                    "first_mismatch", "local_tokens", "verified_equal")  # fmt: skip
"""OUT/lossless.csv: each request's verdict; `first_mismatch` is the first output position
where it parts from the reference (empty when equal); `local_tokens` the output the edge's
draft finished alone after the cloud was lost (results.csv), `verified_equal` whether the
tokens before them (the cloud-verified ones) equal the reference."""

MAX_LISTED = 10
"""Mismatching requests listed in the manifest (all are in lossless.csv)."""


def not_checked(options: LocalOptions) -> str | None:
    """Why this run's outputs cannot be checked token for token (None: they can)."""
    if options.acceptance != "real":
        return "synthetic acceptance: the cloud accepts what the scenario's stream says"
    if options.sampling is not None:
        return "speculative sampling is lossless in distribution, not token for token"
    if options.target_backend != "llama":
        return "the reference (calibrate.acceptance.target_greedy) runs a llama.cpp target only"
    return None


def read_outputs(path: Path) -> list[dict[str, str]]:
    """OUT/real/outputs.csv as rows of text."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_local_tokens(results: Path) -> dict[tuple[str, str, str, str], int]:
    """Per (point, policy, seed, request), the tokens its edge finished alone (results.csv)."""
    if not results.is_file():
        return {}
    with results.open(newline="") as handle:
        return {(r["point"], r["policy"], r["seed"], r["request"]): int(r.get("local_tokens") or 0)
                for r in csv.DictReader(handle)}  # fmt: skip


def check_lossless(
    real_dir: Path,
    points: Sequence[SweepPoint],
    options: LocalOptions,
    out_dir: Path,
    say: Callable[[str], None] = lambda _line: None,
    reference: Callable[[Path, str, int, int], list[int]] | None = None,
) -> dict[str, Any]:
    """Compare every output in `real_dir`/outputs.csv with the target's greedy output; write
    OUT/lossless.csv and return the manifest's `lossless` entry. `reference(target, prompt,
    n, threads)`: the reference output (default: target_greedy without stopping at EOS)."""
    reason = not_checked(options)
    if reason is not None:
        return {"checked": False, "reason": reason}
    outputs_path = real_dir / "outputs.csv"
    if not outputs_path.is_file():
        return {"checked": False, "reason": f"{outputs_path} not written by the testbed"}
    if reference is None:

        def reference(target: Path, prompt: str, n: int, threads: int) -> list[int]:
            return target_greedy(target, prompt, n, threads, stop_at_eos=False)

    local = read_local_tokens(real_dir / "results.csv")
    by_index = {point.index: point for point in points}
    cache: dict[tuple[str, int], list[int]] = {}
    rows: list[dict[str, Any]] = []
    for out in read_outputs(outputs_path):
        prompts_section = by_index[int(out["point"])].scenario.model.prompts
        prompts = family_prompts(prompts_section.family, prompts_section.split)
        prompt = prompts[int(out["request"]) % len(prompts)]
        n = prompts_section.max_new_tokens
        if (prompt.id, n) not in cache:
            say(f"lossless reference: {prompt.id}, {n} tokens")
            cache[(prompt.id, n)] = reference(Path(options.target), prompt.text, n,
                                              options.target_threads)  # fmt: skip
        tokens = [int(t) for t in out["tokens"].split()]
        expected = cache[(prompt.id, n)]
        mismatch = first_mismatch(tokens, expected)
        equal = mismatch is None
        key = (out["point"], out["policy"], out["seed"], out["request"])
        n_local = local.get(key, 0)
        verified_equal = equal or (n_local > 0 and mismatch >= len(tokens) - n_local)
        rows.append({**{k: out[k] for k in ("point", "policy", "seed", "request")},
                     "prompt_id": prompt.id, "tokens": len(tokens), "equal": int(equal),
                     "first_mismatch": "" if equal else mismatch, "local_tokens": n_local,
                     "verified_equal": int(verified_equal)})  # fmt: skip
    write_table(out_dir / "lossless.csv", LOSSLESS_COLUMNS, rows)
    failed = [row for row in rows if not row["verified_equal"]]
    finished_locally = [row for row in rows if row["local_tokens"]]
    return {
        "checked": True,
        "requests": len(rows),
        "equal": sum(row["equal"] for row in rows),
        "passed": bool(rows) and not failed,
        "finished_locally": len(finished_locally),
        "finished_locally_rows": finished_locally[:MAX_LISTED],
        "mismatches": failed[:MAX_LISTED],
        "references": len(cache),
        "reference": "calibrate.acceptance.target_greedy: the target loaded as the server "
        "loads it (flash attention), the prompt but its last token prefilled, then one token "
        "per step, argmax, no stop at end of generation",
    }


def lossless_line(entry: dict[str, Any]) -> str:
    """One line for the terminal."""
    if not entry.get("checked"):
        return f"lossless check: not run ({entry.get('reason', 'no outputs')})"
    verdict = "passed" if entry["passed"] else "FAILED"
    local = entry.get("finished_locally", 0)
    note = (f"; {local} finished by the draft alone after the cloud was lost, their "
            "cloud-verified tokens checked" if local else "")  # fmt: skip
    return (f"lossless check: {entry['equal']} of {entry['requests']} requests equal the "
            f"target's own greedy output{note} ({verdict}; OUT/lossless.csv)")  # fmt: skip
