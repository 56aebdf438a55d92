"""realrun.cloud.ordering: in-order admission per session, and the conditional-upload rule."""

from __future__ import annotations

import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realrun.cloud.ordering import Chain, Sequencer, follow_up
from realrun.protocol import ProtocolError


def test_sequencer_admits_in_order_whatever_the_arrival_order():
    sequencer = Sequencer(timeout_s=10)
    sequencer.begin("s")
    applied: list[int] = []
    order = list(range(12))
    random.Random(3).shuffle(order)

    def request(seq: int) -> None:
        with sequencer.turn("s", seq):
            applied.append(seq)

    threads = [threading.Thread(target=request, args=(seq,)) for seq in order]
    for thread in threads:
        thread.start()
        time.sleep(0.002)
    for thread in threads:
        thread.join(timeout=10)
    assert applied == list(range(12))


def test_sequencer_refusals():
    sequencer = Sequencer(timeout_s=0.2, window=4)
    sequencer.begin("s")
    with pytest.raises(ProtocolError) as unknown, sequencer.turn("other", 0):
        pass
    assert unknown.value.status == 404
    with sequencer.turn("s", None) as waited:  # unordered: no wait
        assert waited == 0.0
    with pytest.raises(RuntimeError), sequencer.turn("s", 0):
        raise RuntimeError("a refused request still uses its number")
    for seq, status in [(0, 409), (6, 409)]:  # used; too far ahead
        with pytest.raises(ProtocolError) as refused, sequencer.turn("s", seq):
            pass
        assert refused.value.status == status
    start = time.perf_counter()
    with pytest.raises(ProtocolError) as late, sequencer.turn("s", 2):  # seq 1 never comes
        pass
    assert late.value.status == 409 and time.perf_counter() - start >= 0.2
    with sequencer.turn("s", 1) as waited:
        assert waited < 0.2


def _greedy(pending: int):
    return lambda _pos, tok: tok == pending


def test_follow_up_rules():
    chain = Chain()
    with pytest.raises(ProtocolError):  # no verify yet
        follow_up(chain, 1, 0, [5], [9], 0, _greedy(9))
    chain.verified(3, 3)
    assert follow_up(chain, 1, 4, [9, 1, 2], [9], 4, _greedy(9)) == (1, 2)
    assert follow_up(chain, 1, 5, [1, 2, 3], [9, 1, 2], 4, _greedy(9)) == (2, 1)
    assert follow_up(chain, 1, 7, [3], [9, 1, 2], 4, _greedy(9)) == (0, 1)
    with pytest.raises(ProtocolError):  # a gap
        follow_up(chain, 1, 8, [3], [9, 1, 2], 4, _greedy(9))
    assert follow_up(chain, 1, 4, [8, 1], [9], 4, _greedy(9)) is None  # wrong guess
    assert follow_up(chain, 1, 5, [1], [9], 4, _greedy(9)) is None  # stale chain
    chain.verified(1, 2)
    assert follow_up(chain, 2, 6, [4], [7], 6, _greedy(7)) is None  # not wholly accepted
    synthetic = Chain()
    synthetic.verified(2, 2)
    verdicts = {4: True, 6: False}
    match = lambda pos, _tok: verdicts.get(pos, False)  # noqa: E731
    assert follow_up(synthetic, 1, 4, [123, 5], [77], 4, match) == (1, 1)


@settings(max_examples=300, deadline=None)
@given(
    held=st.lists(st.integers(0, 3), min_size=1, max_size=5),
    offset=st.integers(0, 6),
    tokens=st.lists(st.integers(0, 3), min_size=1, max_size=6),
    whole=st.booleans(),
)
def test_follow_up_matches_a_sequence_model(held, offset, tokens, whole):
    """Kept tokens = the upload laid over the held sequence, when it agrees with it."""
    first = 10
    chain = Chain()
    chain.verified(2 if whole else 1, 2)
    at = first + offset
    if not whole:  # stale whatever it holds
        assert follow_up(chain, 1, at, tokens, held, first, _greedy(held[0])) is None
        return
    if offset > len(held):
        with pytest.raises(ProtocolError):
            follow_up(chain, 1, at, tokens, held, first, _greedy(held[0]))
        return
    result = follow_up(chain, 1, at, tokens, held, first, _greedy(held[0]))
    overlap = held[offset : offset + len(tokens)]
    if tokens[: len(overlap)] != overlap:
        assert result is None and chain.stale == 1
        return
    assert result == (len(overlap), len(tokens) - len(overlap))
