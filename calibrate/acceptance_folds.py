"""K-fold acceptance models for a testbed run over a whole prompt family (issue 14, item 6).

A run whose request r ran the split's r-th prompt can be predicted request by request by a model
that never saw that prompt: prompt r goes to fold r % K, fold k's model is fitted on the other
folds' traces (`fit_hmm`, the settings of `acceptance-fit`), and the result is one
`ByRequestAcceptance` giving request r its fold's model (`simulator.acceptance`). Traces are
matched to prompts by the prompt ids `calibrate traces` records, so any set of trace files
covering the split will do, in any order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from calibrate.acceptance_hmm import Pair, fit_hmm
from calibrate.acceptance_trace import read_provenance
from models.prompts import family_prompts
from simulator.acceptance import ReplayTraces
from simulator.acceptance_spec import ByRequestAcceptance
from simulator.errors import ConfigError


@dataclass(frozen=True)
class FoldModels:
    """The per-request acceptance and, per fold, the (start states, regimes) chosen."""

    acceptance: ByRequestAcceptance
    chosen: list[tuple[int, int]]


def family_sequences(
    traces: Sequence[Path], family: str, split: str
) -> tuple[list[str], list[Pair]]:
    """(prompt ids, their recorded sequences) in the order of the family's split, the order a
    testbed run gives its requests. ConfigError if a trace lacks its prompt ids or a prompt of
    the split has no trace."""
    recorded: dict[str, Pair] = {}
    for path in traces:
        provenance = read_provenance(path)
        sequences = ReplayTraces.load(path).sequences
        ids = provenance.get("prompt_ids")
        if not isinstance(ids, list) or len(ids) != len(sequences):
            raise ConfigError(
                path, "prompt_ids", f"the provenance must name the {len(sequences)} recorded "
                "prompts in order (traces written by `pipesd calibrate traces`)"
            )  # fmt: skip
        if provenance.get("family") != family:
            raise ConfigError(
                path, "family", f"{provenance.get('family')!r}, not the run's {family!r}"
            )
        recorded.update(zip((str(i) for i in ids), sequences, strict=True))
    try:
        prompts = family_prompts(family, split)
    except ValueError as exc:
        raise ConfigError("--family/--split", "", str(exc)) from None
    missing = [p.id for p in prompts if p.id not in recorded]
    if missing:
        raise ConfigError(
            traces[0], "prompt_ids", f"no trace of {len(missing)} of the {len(prompts)} prompts "
            f"of {family}/{split} (first: {missing[0]}); give every split's traces"
        )  # fmt: skip
    return [p.id for p in prompts], [recorded[p.id] for p in prompts]


def fit_folds(
    prompt_ids: Sequence[str],
    sequences: Sequence[Pair],
    folds: int,
    states: Sequence[int],
    bins: int,
    seed: int = 0,
    start_states: Sequence[int] = (0,),
    say: Callable[[str], None] | None = None,
) -> FoldModels:
    """One model per fold, each fitted on every sequence outside it (sequence r is in fold
    r % `folds`), as one `ByRequestAcceptance`. ValueError for a bad fold count or a fitting
    side too small for `fit_hmm`."""
    if not 2 <= folds <= len(sequences):
        raise ValueError(f"folds must be in [2, {len(sequences)}] (got {folds})")
    models, chosen = [], []
    for k in range(folds):
        fitting = [s for r, s in enumerate(sequences) if r % folds != k]
        source = f"fold {k + 1} of {folds}: every prompt r with r % {folds} != {k}"
        fit = fit_hmm(fitting, states, bins, seed, source=source, start_states=start_states)
        models.append(fit.model)
        chosen.append((fit.start_states, fit.states))
        if say is not None:
            say(
                f"fold {k + 1}/{folds}: fitted on {len(fitting)} prompts, "
                f"{fit.start_states} start states + {fit.states} regimes"
            )
    acceptance = ByRequestAcceptance(
        kind="by_request",
        models=models,
        assignment=[r % folds for r in range(len(sequences))],
        prompt_ids=list(prompt_ids),
        source=f"{folds}-fold hidden Markov models: request r predicted by the model fitted "
        f"without prompt r ({len(sequences)} prompts)",
    )
    return FoldModels(acceptance, chosen)


__all__ = ["FoldModels", "family_sequences", "fit_folds"]
