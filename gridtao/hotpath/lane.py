"""The island's lane: its own thread, its own event loop, its own broker connection.

The hot path (docs/architecture.md) must not wait for the controller's asyncio loop, so triggers
arrive on a separate MQTT connection serviced by a separate (uvloop) loop on a dedicated thread,
and go straight from the socket through :class:`~gridtao.hotpath.intake.Intake` to the island's
writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from gridtao.hotpath.intake import Intake, Outgoing
from gridtao.transport.mqtt import MqttLink, new_event_loop

log = logging.getLogger("gridtao.lane")

TICK_S = 0.05
CONNECT_POLL_S = 0.02  # how often start() looks at the connection (and its abort)


class IslandLane:
    """Runs ``link`` and ``intake`` on a private loop in a daemon thread."""

    def __init__(self, link: MqttLink, intake: Intake) -> None:
        self._link = link
        self._intake = intake
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._main, name="gridtao-island-lane", daemon=True)
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    @property
    def link(self) -> MqttLink:
        return self._link

    def start(self, *, connect_timeout_s: float | None = None,
              abort: threading.Event | None = None) -> bool:
        """Start the thread; with a timeout, wait for the first broker connection (True if up).
        ``abort`` set from another thread (a signal handler) ends the wait at once; the lane
        keeps trying to connect in the background either way."""
        self._thread.start()
        self._ready.wait(timeout=5.0)
        if connect_timeout_s is None:
            return self._link.is_connected
        deadline = time.monotonic() + connect_timeout_s
        while not self._link.is_connected:
            left = deadline - time.monotonic()
            if left <= 0 or (abort is not None and abort.is_set()):
                return False
            # Polled: the connection event lives on the lane's loop, the abort on this thread.
            if abort is not None:
                abort.wait(min(CONNECT_POLL_S, left))
            else:
                time.sleep(min(CONNECT_POLL_S, left))
        return True

    def call(self, fn: Callable[[], list[Outgoing] | None]) -> None:
        """Run ``fn`` on the lane's loop (thread-safe) and publish what it returns."""

        def run() -> None:
            self._publish(fn() or [])

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError:  # the lane has stopped: there is no connection left to publish on
            log.debug("island lane closed; dropping a late call")

    def stop(self, *, flush_timeout_s: float = 2.0) -> None:
        """Flush pending acks, disconnect cleanly, and join the thread."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            await self._link.flush(flush_timeout_s)
            if self._stopping is not None:
                self._stopping.set()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(flush_timeout_s + 3.0)
        self._thread.join(timeout=5.0)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # surfaced to the agent, which fails safe
            self.error = e
            log.exception("island lane stopped")
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        self._ready.set()
        tasks = [
            asyncio.create_task(self._link.run(), name="island-link"),
            asyncio.create_task(self._receive(), name="island-receive"),
            asyncio.create_task(self._tick(), name="island-tick"),
        ]
        await self._stopping.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _receive(self) -> None:
        async for msg in self._link.messages():
            try:
                out = self._intake.on_message(
                    msg.topic, msg.payload,
                    received_at=msg.received_at, received_wall=msg.received_wall,
                    retained=msg.retain,
                )
            except Exception:
                log.exception("message on %s could not be handled", msg.topic)
                continue
            self._publish(out)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._publish(self._intake.on_tick())
            except Exception:
                log.exception("island tick failed")

    def _publish(self, out: list[Outgoing]) -> None:
        for o in out:
            self._link.publish_nowait(o.topic, o.payload, o.qos, o.retain,
                                      expendable=o.expendable)
