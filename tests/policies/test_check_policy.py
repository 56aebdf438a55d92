"""`check_policy` passes every registered policy and PipeSD ablation, and catches broken ones."""

from __future__ import annotations

import random
from typing import Any

import pytest

from policies.base import Decision, Policy, VerifyOutcome
from policies.baselines.fixed import Vanilla, VanillaParams
from policies.checker import PolicyCheckError, check_policy
from policies.registry import make_policy, params_model, policy_names

SEEDS = (0, 1, 7)

PIPESD_ABLATIONS: dict[str, dict[str, Any]] = {
    "no_pipeline": {"pipeline": False},
    "fixed_batch_2": {"fixed_batch": 2},
    "token_trigger": {"trigger": "token"},
    "sequence_trigger": {"trigger": "sequence"},
    "no_autotune": {"autotune": False},
    "no_proactive": {"proactive": False},
    "autotune_small": {"tune_calls": 6, "tune_initial_points": 3, "tune_window_tokens": 10},
}


def factory(name: str, params: dict[str, Any], seed: int):
    """A zero-argument factory building fresh instances with validated parameters."""
    validated = params_model(name).model_validate(params)
    return lambda: make_policy(name, validated, seed)


def test_every_policy_is_registered_once() -> None:
    names = policy_names()
    assert len(names) == len(set(names))
    expected = {"cloud_ar", "vanilla", "hsl", "edgellm", "pipesd", "pmin", "hf_heuristic", "oracle"}
    assert set(names) >= expected


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", policy_names())
def test_registered_policy_with_defaults_passes(name: str, seed: int) -> None:
    check_policy(factory(name, {}, seed), seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("params", PIPESD_ABLATIONS.values(), ids=PIPESD_ABLATIONS.keys())
def test_pipesd_ablation_passes(params: dict[str, Any], seed: int) -> None:
    check_policy(factory("pipesd", params, seed), seed=seed)


def test_autotuned_pipesd_actually_tunes_during_the_check() -> None:
    """The small-budget autotune case is not vacuous: the tuner is told objectives."""
    params = params_model("pipesd").model_validate(PIPESD_ABLATIONS["autotune_small"])
    fresh = [make_policy("pipesd", params, 3) for _ in range(2)]
    used = iter(fresh)
    check_policy(lambda: next(used), seed=3)
    assert all(p.state()["bo_evaluations"] >= 1.0 for p in fresh)


# -- deliberately broken policies ---------------------------------------------------------------


class GlobalRandomVanilla(Vanilla):
    """Decides with the unseeded global `random` module: not reproducible."""

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        self._drafted += 1
        return random.choice([Decision.CONTINUE, Decision.VERIFY])


class IntVanilla(Vanilla):
    """Returns a plain int instead of a Decision."""

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        decision = super().on_draft(confidence, draft_time_s, pending)
        return int(decision)  # type: ignore[return-value]


class DropLastResultVanilla(Vanilla):
    """Answers a verification with VERIFY_DROP_LAST, which on_result may not return."""

    def on_result(self, outcome: VerifyOutcome) -> Decision:
        super().on_result(outcome)
        return Decision.VERIFY_DROP_LAST


class IntStateVanilla(Vanilla):
    """state() maps a name to an int, not a float."""

    def state(self) -> dict[str, float]:
        return {"draft_len": self.params.draft_len}  # type: ignore[dict-item]


class ZeroProbeVanilla(Vanilla):
    """Asks for an empty start-up probe."""

    def startup_probe_sizes(self) -> tuple[int, ...]:
        return (1, 0)


class SharedCounterVanilla(Vanilla):
    """Keeps state in a class attribute, so a second fresh instance behaves differently."""

    instances = 0

    def __init__(self, params: VanillaParams, seed: int) -> None:
        super().__init__(params, seed)
        type(self).instances += 1
        self._length = 2 + type(self).instances

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        self._drafted += 1
        return Decision.VERIFY if self._drafted >= self._length else Decision.CONTINUE


BROKEN = {
    "global_random": (GlobalRandomVanilla, "not deterministic"),
    "returns_int": (IntVanilla, "not a Decision"),
    "result_drop_last": (DropLastResultVanilla, "VERIFY_DROP_LAST"),
    "int_state": (IntStateVanilla, "state"),
    "zero_probe": (ZeroProbeVanilla, "probe size"),
    "shared_state": (SharedCounterVanilla, "not deterministic"),
}


@pytest.mark.parametrize(("cls", "message"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_policy_is_caught(cls: type[Vanilla], message: str) -> None:
    random.seed()  # whatever state earlier tests left, the choice stays unseeded here
    with pytest.raises(PolicyCheckError, match=message):
        check_policy(lambda: cls(VanillaParams(), 0), seed=0)


def test_policy_check_error_is_an_assertion_error() -> None:
    assert issubclass(PolicyCheckError, AssertionError)


class BadWhilePending(Policy):
    """A proactive policy that breaks the contract only on tokens drafted while pending."""

    drafts_while_pending = True

    def __init__(self) -> None:
        self._drafted = 0

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        if pending:
            return 2  # type: ignore[return-value]
        self._drafted += 1
        if self._drafted >= 4:
            self._drafted = 0
            return Decision.VERIFY
        return Decision.CONTINUE

    def on_result(self, outcome: VerifyOutcome) -> Decision:
        return Decision.CONTINUE


def test_misbehaviour_while_pending_is_caught() -> None:
    with pytest.raises(PolicyCheckError):
        check_policy(BadWhilePending, seed=0)
