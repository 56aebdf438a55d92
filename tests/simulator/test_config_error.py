"""ConfigError crosses process boundaries intact (pipesd run's sweep workers raise it)."""

import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from simulator.errors import ConfigError


def _raise_config_error(field: str) -> None:
    raise ConfigError("scenarios/x.toml", field, "must be one of 'a', 'b'")


def test_config_error_pickles_with_its_fields() -> None:
    error = pickle.loads(pickle.dumps(ConfigError("p.json", "draft.decode_s", "must be > 0")))
    assert (error.source, error.field, error.problem) == ("p.json", "draft.decode_s", "must be > 0")
    assert str(error) == "p.json: draft.decode_s: must be > 0"


def test_config_error_raised_in_a_worker_reaches_the_parent_as_itself() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool, pytest.raises(ConfigError) as caught:
        pool.submit(_raise_config_error, "policies.dipsd.plan").result()
    assert caught.value.field == "policies.dipsd.plan"
    assert str(caught.value) == "scenarios/x.toml: policies.dipsd.plan: must be one of 'a', 'b'"
