"""gridtao.transport.outbox.Outbox on its own: bound, drop order, at-least-once requeue, flush."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridtao.transport import mqtt
from gridtao.transport.outbox import DropReason, OutboundMessage, Outbox

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), 5.0)

    return asyncio.run(bounded())


def msg(name: str, qos: int) -> OutboundMessage:
    return OutboundMessage(f"t/{name}", name.encode(), qos, False)


def recording(max_len: int) -> tuple[Outbox, list[tuple[str, DropReason]]]:
    drops: list[tuple[str, DropReason]] = []
    box = Outbox(max_len, on_drop=lambda m, reason: drops.append((m.payload.decode(), reason)))
    return box, drops


async def drain(box: Outbox) -> list[str]:
    """Take and deliver everything queued, in order."""
    names = []
    while len(box):
        names.append((await box.take()).payload.decode())
        box.settle(delivered=True)
    return names


def test_outbound_message_still_importable_from_mqtt() -> None:
    assert mqtt.OutboundMessage is OutboundMessage


def test_full_outbox_drops_oldest_qos0_first_then_the_oldest() -> None:
    box, drops = recording(3)
    for name, qos in [("a", 1), ("b", 0), ("c", 0), ("d", 1), ("e", 0), ("f", 1), ("g", 1)]:
        box.push(msg(name, qos))
        assert len(box) <= 3
    # a,b,c,d -> drop b; +e -> drop c; +f -> drop e; +g -> no QoS 0 left, drop a.
    assert drops == [("b", "full"), ("c", "full"), ("e", "full"), ("a", "full")]
    assert run(lambda: drain(box)) == ["d", "f", "g"]


def test_front_push_is_next_to_send_and_first_to_go_when_full() -> None:
    box, drops = recording(2)
    box.push(msg("a", 1))
    box.push(msg("b", 1))
    box.push(msg("hello", 0), front=True)  # the only QoS 0: it goes, not a QoS 1 message
    assert drops == [("hello", "full")]
    box.push(msg("hi", 1), front=True)  # all QoS 1: the front one goes, which is the new one
    assert drops[-1] == ("hi", "full")
    box2, _ = recording(3)
    box2.push(msg("x", 0))
    box2.push(msg("y", 1), front=True)
    assert run(lambda: drain(box2)) == ["y", "x"]


@settings(max_examples=200, deadline=None)
@given(
    max_len=st.integers(1, 5),
    pushes=st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.booleans()), max_size=30),
)
def test_qos1_never_dropped_while_a_qos0_is_queued(
    max_len: int, pushes: list[tuple[int, bool]]
) -> None:
    box, drops = recording(max_len)
    queued: list[OutboundMessage] = []  # a model of the queue, front first
    for i, (qos, front) in enumerate(pushes):
        m = msg(str(i), qos)
        if front:
            queued.insert(0, m)
        else:
            queued.append(m)
        before = len(drops)
        box.push(m, front=front)
        if len(queued) > max_len:
            assert len(drops) == before + 1
            dropped = drops[-1][0]
            victim = next((q for q in queued if q.qos == 0), queued[0])
            assert dropped == victim.payload.decode()
            if any(q.qos == 0 for q in queued):
                assert victim.qos == 0
            queued.remove(victim)
        else:
            assert len(drops) == before
        assert len(box) == len(queued) <= max_len
    assert run(lambda: drain(box)) == [q.payload.decode() for q in queued]


def test_failed_qos1_goes_back_to_the_front_and_qos0_is_lost() -> None:
    async def main() -> None:
        box, drops = recording(10)
        box.push(msg("a", 1))
        box.push(msg("b", 0))
        assert (await box.take()).payload == b"a"
        assert box.in_flight is not None and len(box) == 1
        box.push(msg("c", 1))
        box.settle(delivered=False)  # connection lost mid-publish
        assert box.in_flight is None and drops == []
        assert (await box.take()).payload == b"a"  # ahead of b and c
        box.settle(delivered=True)
        assert (await box.take()).payload == b"b"
        box.settle(delivered=False)
        assert drops == [("b", "lost")]
        assert await drain(box) == ["c"]
        assert box.idle

    run(main)


def test_requeue_into_a_full_outbox_keeps_the_bound() -> None:
    async def main() -> None:
        box, drops = recording(2)
        box.push(msg("a", 1))
        await box.take()
        box.push(msg("b", 0))
        box.push(msg("c", 1))
        box.settle(delivered=False)  # a back at the front: [a, b, c] -> b (QoS 0) goes
        assert drops == [("b", "full")]
        assert len(box) == 2
        assert await drain(box) == ["a", "c"]

    run(main)


def test_take_waits_for_a_push() -> None:
    async def main() -> None:
        box = Outbox(4)
        taker = asyncio.ensure_future(box.take())
        for _ in range(3):
            await asyncio.sleep(0)
        assert not taker.done()
        box.push(msg("a", 0))
        assert (await taker).payload == b"a"

    run(main)


def test_flush_waits_for_the_queue_and_the_message_in_flight() -> None:
    async def main() -> None:
        box = Outbox(4)
        assert box.idle and await box.flush(1.0)
        box.push(msg("a", 1))
        assert not box.idle
        assert not await box.flush(0.01)
        flusher = asyncio.ensure_future(box.flush(5.0))
        await box.take()
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(box) == 0 and not flusher.done()  # empty, but "a" is not delivered yet
        box.settle(delivered=False)  # QoS 1 back in the queue: still not flushed
        for _ in range(3):
            await asyncio.sleep(0)
        assert not flusher.done() and not box.idle
        await box.take()
        box.settle(delivered=True)
        assert await flusher is True
        assert box.idle

    run(main)


def test_flush_completes_when_the_last_qos0_is_lost() -> None:
    async def main() -> None:
        box, drops = recording(4)
        box.push(msg("a", 0))
        flusher = asyncio.ensure_future(box.flush(5.0))
        await box.take()
        box.settle(delivered=False)
        assert await flusher is True
        assert drops == [("a", "lost")]

    run(main)


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError):
        Outbox(0)
    box = Outbox(2)
    with pytest.raises(RuntimeError):
        box.settle(delivered=True)

    async def main() -> None:
        box.push(msg("a", 0))
        box.push(msg("b", 0))
        await box.take()
        with pytest.raises(RuntimeError):
            await box.take()

    run(main)


def test_a_flood_of_reject_acks_never_pushes_an_activation_ack_out() -> None:
    dropped: list[OutboundMessage] = []
    box = Outbox(3, on_drop=lambda m, _why: dropped.append(m))
    activation = OutboundMessage("ack", b"accepted", 1, False)
    box.push(activation)
    for k in range(50):
        box.push(OutboundMessage("ack", f"rejected {k}".encode(), 1, False, expendable=True))
    assert len(box) == 3 and len(dropped) == 48
    assert activation not in dropped and all(m.expendable for m in dropped)
    # With nothing expendable left, the bound still holds: the front goes.
    box.push(OutboundMessage("ack", b"a2", 1, False))
    box.push(OutboundMessage("ack", b"a3", 1, False))
    box.push(OutboundMessage("ack", b"a4", 1, False))
    assert len(box) == 3 and activation in dropped
