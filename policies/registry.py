"""Maps the policy names used in scenario files to policy classes and their parameter models."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from policies.base import Policy
from policies.baselines.adaptive import HFHeuristic, HFHeuristicParams, PMin, PMinParams
from policies.baselines.fixed import (
    HSL,
    CloudARParams,
    CloudAutoregressive,
    EdgeLLM,
    EdgeLLMParams,
    HSLParams,
    SplitInference,
    SplitParams,
    Vanilla,
    VanillaParams,
)
from policies.baselines.oracle import Oracle, OracleParams
from policies.dipsd.policy import DipSD, DipSDParams
from policies.params import PolicyParams
from policies.picospec.policy import PicoSpec, PicoSpecParams
from policies.pipesd.policy import PipeSD, PipeSDParams

PolicyFactory = Callable[[Any, int], Policy]

POLICIES: Mapping[str, tuple[type[PolicyParams], PolicyFactory]] = {
    "cloud_ar": (CloudARParams, CloudAutoregressive),
    "split": (SplitParams, SplitInference),
    "vanilla": (VanillaParams, Vanilla),
    "hsl": (HSLParams, HSL),
    "edgellm": (EdgeLLMParams, EdgeLLM),
    "pipesd": (PipeSDParams, PipeSD),
    "pmin": (PMinParams, PMin),
    "hf_heuristic": (HFHeuristicParams, HFHeuristic),
    "picospec": (PicoSpecParams, PicoSpec),
    "dipsd": (DipSDParams, DipSD),
    "oracle": (OracleParams, Oracle),
}


def policy_names() -> list[str]:
    """Every registered policy name, in a stable order."""
    return list(POLICIES)


def make_policy(name: str, params: PolicyParams, seed: int) -> Policy:
    """Build a fresh policy instance from validated parameters."""
    return POLICIES[name][1](params, seed)


def params_model(name: str) -> type[PolicyParams]:
    """The parameter model for a policy name (KeyError if unknown)."""
    return POLICIES[name][0]
