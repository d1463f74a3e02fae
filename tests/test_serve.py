"""gridtao/app/serve.py: a controller loop in a thread, stopped by its owner, errors surfaced."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from gridtao.app.serve import ServeThread, serving


class _Agent:
    """Serves until stopped, like ``Agent.serve``; or dies at once with ``fail``."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.served = threading.Event()
        self.stopped = False
        self.thread: str | None = None

    async def serve(self, stop: asyncio.Event) -> None:
        self.thread = threading.current_thread().name
        self.served.set()
        if self.fail is not None:
            raise self.fail
        await stop.wait()
        self.stopped = True


def test_serves_on_its_own_thread_until_stopped() -> None:
    agent = _Agent()
    with serving(agent, name="t-serve") as thread:
        assert agent.served.wait(5.0)
        assert thread.is_alive() and agent.thread == "t-serve"
    assert agent.stopped and not thread.is_alive() and thread.error is None


def test_stop_right_after_start_is_not_lost() -> None:
    agent = _Agent()
    thread = ServeThread(agent)
    thread.start()
    thread.stop(5.0)  # before serve() has even begun waiting
    assert agent.stopped
    thread.stop(5.0)  # again: nothing left to do


def test_stop_before_start_does_nothing() -> None:
    ServeThread(_Agent()).stop()


def test_stop_raises_what_serve_died_of() -> None:
    agent = _Agent(fail=RuntimeError("boom"))
    thread = ServeThread(agent)
    thread.start()
    assert agent.served.wait(5.0)
    with pytest.raises(RuntimeError, match="boom"):
        thread.stop(5.0)
    assert isinstance(thread.error, RuntimeError)


def test_an_exception_in_the_block_is_not_hidden_by_a_failed_serve(
        caplog: pytest.LogCaptureFixture) -> None:
    agent = _Agent(fail=RuntimeError("serve failed"))
    with caplog.at_level(logging.ERROR, "gridtao.app.serve"), \
            pytest.raises(KeyError), serving(agent, name="t-unwind"):
        assert agent.served.wait(5.0)
        raise KeyError("the block's own failure")
    assert "serve failed" in caplog.text


class _StuckAgent:
    """Its wind-down waits on a worker thread that hangs until released, as a stuck quiesce
    would (the worker is in its hanging call before the test stops it: ``entered``)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    async def serve(self, stop: asyncio.Event) -> None:
        hung = asyncio.get_running_loop().run_in_executor(None, self._quiesce_that_hangs)
        await stop.wait()
        await hung

    def _quiesce_that_hangs(self) -> None:
        self.entered.set()
        self.release.wait(30.0)


def test_a_stop_that_times_out_logs_where_every_thread_is(
        caplog: pytest.LogCaptureFixture) -> None:
    agent = _StuckAgent()
    thread = ServeThread(agent, name="t-stuck")
    thread.start()
    try:
        assert agent.entered.wait(10.0)
        with caplog.at_level(logging.ERROR, "gridtao.app.serve"), \
                pytest.raises(TimeoutError, match=r"t-stuck: agent\.serve\(\) did not return"):
            thread.stop(0.3)
        # the thread that holds the stop up, by the function it is in
        assert "_quiesce_that_hangs" in caplog.text
    finally:
        agent.release.set()
        thread.stop(5.0)
