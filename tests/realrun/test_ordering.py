"""realrun.cloud.ordering: in-order admission per session, and the conditional-upload rule."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realrun.cloud.ordering import Chain, Sequencer, follow_up
from realrun.protocol import ProtocolError


def test_sequencer_admits_in_order_whatever_the_arrival_order():
    async def main() -> list[int]:
        sequencer = Sequencer(timeout_s=10, max_parked=12)
        sequencer.begin("s")
        applied: list[int] = []
        order = list(range(12))
        random.Random(3).shuffle(order)

        async def request(seq: int) -> None:
            async with sequencer.turn("s", seq):
                await asyncio.sleep(0.001)
                applied.append(seq)

        tasks = []
        for seq in order:
            tasks.append(asyncio.create_task(request(seq)))
            await asyncio.sleep(0.002)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return applied

    assert asyncio.run(main()) == list(range(12))


def test_sequencer_refusals():
    async def main() -> None:
        sequencer = Sequencer(timeout_s=0.2, window=4)
        sequencer.begin("s")
        with pytest.raises(ProtocolError) as unknown:
            async with sequencer.turn("other", 0):
                pass
        assert unknown.value.status == 404
        async with sequencer.turn("s", None) as waited:  # unordered, session free: no wait
            assert waited < 0.01
        with pytest.raises(RuntimeError):
            async with sequencer.turn("s", 0):
                raise RuntimeError("a request that got its turn still uses its number")
        for seq, status in [(0, 409), (6, 409)]:  # used; too far ahead
            with pytest.raises(ProtocolError) as refused:
                async with sequencer.turn("s", seq):
                    pass
            assert refused.value.status == status
        start = time.perf_counter()
        with pytest.raises(ProtocolError) as late:  # seq 1 never comes
            async with sequencer.turn("s", 2):
                pass
        assert late.value.status == 409 and time.perf_counter() - start >= 0.2
        async with sequencer.turn("s", 1) as waited:
            assert waited < 0.2

    asyncio.run(main())


def test_sequencer_parks_a_bounded_number_without_threads():
    """Requests ahead of their turn wait as coroutines (no thread), at most `max_parked` per
    session; more are refused at once (429); a closed session's waiters get 404."""

    async def main() -> None:
        sequencer = Sequencer(timeout_s=5, max_parked=3)
        sequencer.begin("s")
        outcomes: list[int] = []

        async def early(seq: int) -> None:
            try:
                async with sequencer.turn("s", seq):
                    outcomes.append(200)
            except ProtocolError as exc:
                outcomes.append(exc.status)

        tasks = [asyncio.create_task(early(seq)) for seq in (1, 2, 3, 4, 5)]
        await asyncio.sleep(0.05)
        assert sequencer.parked("s") == 3 and sorted(outcomes) == [429, 429]
        assert threading.active_count() == threads_before
        async with sequencer.turn("s", 0):  # the turn passes to 1, 2, 3 in order
            pass
        await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(*tasks), 1)
        assert outcomes[2:] == [200, 200, 200]
        waiting = asyncio.create_task(early(5))
        await asyncio.sleep(0.05)
        sequencer.forget("s")
        await asyncio.wait_for(waiting, 1)
        assert outcomes[-1] == 404 and sequencer.parked("s") == 0

    threads_before = threading.active_count()
    asyncio.run(main())


def test_sequencer_serialises_unnumbered_requests_of_a_session():
    """An unnumbered request waits while another request of its session holds the turn."""

    async def main() -> list[str]:
        sequencer = Sequencer(timeout_s=5)
        sequencer.begin("s")
        events: list[str] = []

        async def hold() -> None:
            async with sequencer.turn("s", 0):
                events.append("numbered in")
                await asyncio.sleep(0.05)
                events.append("numbered out")

        async def plain() -> None:
            async with sequencer.turn("s", None):
                events.append("plain")

        first = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        await asyncio.gather(first, plain())
        return events

    assert asyncio.run(main()) == ["numbered in", "numbered out", "plain"]


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
