"""gridtao.transport.supervision: a supervised connection ends when it is cancelled, whatever
error its library raises while closing, so a lane or an agent that stops never leaves a link
reconnecting behind it (on a loop that is then closed under it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gridtao.transport.errors import ConnectionLost
from gridtao.transport.supervision import Supervised


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout_s)


class _ClosesWithItsOwnError(Supervised):
    """A session whose library turns the cancellation of a stop into a connection error of its
    own while closing (a disconnect that fails on the way out), as a client library may."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(host="127.0.0.1", port=9, client_id="test", reconnect_min_s=0.01,
                         reconnect_max_s=0.01)
        self.sessions = 0
        self._error = error

    async def _session(self) -> None:
        self.sessions += 1
        try:
            await asyncio.sleep(3600.0)
        except asyncio.CancelledError:
            if self.sessions == 1:  # once: a second stop (the test's clean-up) goes through
                raise self._error from None
            raise


@pytest.mark.parametrize("error", [ConnectionLost("disconnect failed"),
                                   RuntimeError("a bug on the way out")],
                         ids=["lost", "unexpected"])
def test_a_cancelled_link_ends_even_if_its_session_closes_with_an_error(
        error: BaseException) -> None:
    async def scenario() -> tuple[bool, int]:
        link = _ClosesWithItsOwnError(error)
        task = asyncio.create_task(link.run())
        await _until(lambda: link.sessions == 1)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=0.5)
        if not done:  # the link went on reconnecting: stop it for good before failing
            await _until(lambda: link.sessions == 2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return bool(done) and task.cancelled(), link.sessions

    ended, sessions = asyncio.run(scenario())
    assert ended, "the cancelled link did not end"
    assert sessions == 1  # no reconnect after the stop


def test_a_lost_connection_still_reconnects() -> None:
    """The other side of it: a connection error that is not a stop is retried."""

    class _Flaky(Supervised):
        def __init__(self) -> None:
            super().__init__(host="127.0.0.1", port=9, client_id="test", reconnect_min_s=0.01,
                             reconnect_max_s=0.01)
            self.sessions = 0

        async def _session(self) -> None:
            self.sessions += 1
            raise ConnectionLost("refused")

    async def scenario() -> int:
        link = _Flaky()
        task = asyncio.create_task(link.run())
        while link.sessions < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return link.sessions

    assert asyncio.run(scenario()) >= 3


def test_a_link_collected_after_its_loop_closed_ends_quietly() -> None:
    """Its coroutine is closed by the garbage collector (GeneratorExit thrown in, no loop
    running) while a library's clean-up raises on the closed loop: it must end, not raise
    "no running event loop" out of close() (an 'exception ignored' at every such teardown)."""

    class Stuck(Supervised):
        async def _session(self) -> None:
            try:
                await asyncio.Event().wait()
            finally:  # a disconnect on the way out, as aiomqtt's on a closed uvloop
                raise RuntimeError("Event loop is closed")

    link = Stuck(host="127.0.0.1", port=1, client_id="t")
    loop = asyncio.new_event_loop()
    coro = link.run()
    task = loop.create_task(coro)
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()  # the task is still pending: what a test's or a process's teardown leaves
    coro.close()  # what collecting it does
    assert not link.is_connected
    del task
