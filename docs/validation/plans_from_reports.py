"""Which batch plan PipeSD's fit would hold over a recorded session (docs/validation.md, "Runs
27-29"): the upload durations the edge heard (timeline lane `report`) and its draft steps,
replayed in the order they ended through PipeSD's own upload fit (α, β) and γ average, from
its priors; per plan of an N̂-token window (default 3, the sessions' N̂), the seconds it held.
Approximate: the start-up probes are not in the timeline, and N̂ is held fixed.

    python docs/validation/plans_from_reports.py TIMELINE.csv [WINDOW]
"""

from __future__ import annotations

import sys
from pathlib import Path

from figures.load import read_timeline
from policies.pipesd.batch_plan import batch_boundaries, plan_batches
from policies.pipesd.estimators import ExponentialAverage, UploadCostEstimator
from policies.pipesd.policy import PipeSDParams


def main() -> None:
    timeline, window = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3
    params = PipeSDParams()
    fit = UploadCostEstimator(params.initial_alpha_s, params.initial_beta_s)
    gamma = ExponentialAverage(params.initial_gamma_s, weight=1.0 / 32.0)
    heard = [s for s in read_timeline(timeline) if s.lane == "report"]
    steps = [s for s in read_timeline(timeline) if s.lane == "draft" and s.label == "draft"]
    events = sorted([(s.end_s, 0, s) for s in heard] + [(s.end_s, 1, s) for s in steps])
    held: dict[tuple[int, ...], float] = {}
    last_s = None
    for t_s, kind, span in events:
        if last_s is not None:
            batches = plan_batches(window, fit.alpha_s, fit.beta_s, gamma.value)
            plan = tuple(sorted(batch_boundaries(batches)))
            held[plan] = held.get(plan, 0.0) + t_s - last_s
        last_s = t_s
        if kind == 0:
            fit.observe(span.last, span.end_s - span.start_s)
        else:
            gamma.observe(span.end_s - span.start_s)
    for plan, seconds in sorted(held.items(), key=lambda item: -item[1]):
        print(f"boundaries {plan}: {seconds:.1f} s")
    print(
        f"at the end: alpha {fit.alpha_s * 1e3:.1f} ms, beta {fit.beta_s * 1e3:.2f} ms, "
        f"gamma {gamma.value * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
