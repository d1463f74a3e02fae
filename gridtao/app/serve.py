"""An agent's controller loop (``Agent.serve``) in a background thread, on a uvloop of its own.

For callers whose own thread does something else meanwhile: the demo and the compliance bench
play the grid from it, the end-to-end tests drive and assert. ``gridtao run`` does not use this:
it serves on the main thread's loop, where the signal handlers are (gridtao/app/run.py).

Threads: :meth:`ServeThread.start` and :meth:`ServeThread.stop` are called from the owner's
thread; ``agent.serve(stop)`` runs on the serving thread, whose loop alone touches the stop
event (``stop()`` hops onto it with ``call_soon_threadsafe``). Stopping lets ``serve`` finish as
it does under ``gridtao run``: quiesce (limits restored), then the offline status. The agent is
started before and closed after by the caller.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from gridtao.transport.mqtt import new_event_loop

__all__ = ["Servable", "ServeThread", "serving"]

log = logging.getLogger("gridtao.app.serve")

#: What serve's wind-down may take, each step bounded: the lane's stop (its final acks' flush,
#: 2 s, within 5 s; its thread, 5 s), tier 1's join (2 s), the restore's writes (the island's
#: write timeout) and the offline status's flush (2 s).
STOP_TIMEOUT_S = 20.0


class Servable(Protocol):
    """What is served: ``Agent.serve`` runs until ``stop`` is set, then winds down."""

    async def serve(self, stop: asyncio.Event) -> None: ...


class ServeThread:
    """``agent.serve()`` on a uvloop event loop in a daemon thread named ``name``.

    ``start()`` once, then ``stop()``: it raises what the loop died of, if it did (an exception
    out of ``serve``, also logged when it happens), or ``TimeoutError`` if ``serve`` has not
    returned ``timeout_s`` seconds after being told to stop.
    """

    def __init__(self, agent: Servable, *, name: str = "gridtao-controller") -> None:
        self._agent = agent
        self._stop_event = asyncio.Event()  # set on the serving loop only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = threading.Lock()  # a stop() hop never lands on a closed loop
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._error: BaseException | None = None

    @property
    def error(self) -> BaseException | None:
        """What ``serve`` raised, once it has (None while it runs, or if it returned)."""
        return self._error

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        """Create the loop (here, so :meth:`stop` can reach it at once) and start serving."""
        if self._loop is not None:
            raise RuntimeError("a ServeThread starts once")
        self._loop = new_event_loop()
        try:
            self._thread.start()
        except BaseException:
            self._loop.close()
            raise

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            loop.run_until_complete(self._agent.serve(self._stop_event))
        except BaseException as e:  # surfaced by stop()
            self._error = e
            log.error("%s: agent.serve() died of %r", self._thread.name, e)
        finally:
            with self._closing:
                loop.close()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Tell ``serve`` to stop and wait for it. A no-op before :meth:`start`; safe to repeat."""
        loop = self._loop
        if loop is None:
            return
        with self._closing:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            # Where every thread is: the stop waits on a quiesce in another thread (an executor
            # worker), so the serving thread's own stack would say only that it waits.
            log.error("%s: agent.serve() still running %g s after being stopped; threads:\n%s",
                      self._thread.name, timeout_s, _thread_stacks())
            raise TimeoutError(f"{self._thread.name}: agent.serve() did not return within "
                               f"{timeout_s:g} s of being stopped (threads' stacks logged)")
        if self._error is not None:
            raise self._error


def _thread_stacks(depth: int = 6) -> str:
    """The innermost ``depth`` frames of every live thread, by name."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(
        f"  {names.get(ident, ident)}:\n" + "".join(
            "    " + line for line in traceback.format_stack(frame)[-depth:])
        for ident, frame in sys._current_frames().items())


@contextmanager
def serving(agent: Servable, *, name: str = "gridtao-controller",
            timeout_s: float = STOP_TIMEOUT_S) -> Iterator[ServeThread]:
    """Serve ``agent`` (started) for the ``with`` block, then stop (:meth:`ServeThread.stop`).

    When the block raises, that exception goes on and a failure to stop is only logged, so it
    never hides the first one."""
    thread = ServeThread(agent, name=name)
    thread.start()
    try:
        yield thread
    except BaseException:
        try:
            thread.stop(timeout_s)
        except BaseException as e:
            log.error("%s: while unwinding: %r", name, e)
        raise
    thread.stop(timeout_s)
