"""The island's lane: its own thread, its own event loop, its own broker connections.

The hot path (docs/architecture.md) must not wait for the controller's asyncio loop, so triggers
arrive on separate MQTT connections serviced by a separate (uvloop) loop on a dedicated thread,
and go straight from the socket through :class:`~gridtao.hotpath.intake.Intake` to the island's
writers.

Inbound traffic comes on receive-only connections (gridtao/transport/receiver.py) that split
every socket read into messages at once, so a flood of junk is drained into bounded inboxes
(newest kept, the excess dropped and counted) instead of queuing in socket buffers and at the
broker ahead of a genuine trigger; acks go out on a connection of their own (aiomqtt).

Frequency has a path of its own that no dispatch can queue ahead of: its own connection (the
broker keeps a queue per connection, so a dispatch backlog never sits in front of a sample), its
own inbox, and priority here: waiting samples are handled before a waiting dispatch, and the
lane lets the loop read the sockets at least every ``YIELD_S`` (0.5 ms) of handling, so a
sample waits at most about that long, however many dispatches are queued. The
priority is not absolute: after ``FREQUENCY_RUN`` samples in a row a waiting dispatch goes
next, so a storm on the frequency topic cannot starve dispatches either.

A message that finds the lane idle (nothing waiting, the receiving task asleep) is handled in
the very socket read that brought it, without waiting for the loop's next turn, when other
threads could take the interpreter first; only the first of a read's messages is, the rest go
through the inboxes in the order above. What escapes its handling ends the receiving task as it
would have (the lane fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable

from gridtao.hotpath.intake import Intake, Outgoing
from gridtao.transport.mqtt import InboundMessage, MqttLink, new_event_loop
from gridtao.transport.outbox import OutboundMessage
from gridtao.transport.supervision import Supervised

log = logging.getLogger("gridtao.lane")

TICK_S = 0.05
#: Samples handled in a row before a waiting dispatch gets its turn.
FREQUENCY_RUN = 3
#: The longest the lane handles messages before it lets its loop read the sockets again.
YIELD_S = 0.0005
CONNECT_POLL_S = 0.02  # how often start() looks at the connection (and its abort)
CANCEL_WAIT_S = 2.0  # how long a failed lane waits for its tasks to end


def _worth_keeping(messages: Iterable[OutboundMessage]) -> list[OutboundMessage]:
    """The acks a stop keeps for the next start: QoS >= 1, not expendable (a reject or a
    duplicate's answer is not worth a restart's while)."""
    return [m for m in messages if m.qos > 0 and not m.expendable]


def _ended(acks: list[Outgoing]) -> str:
    """", among them the end of event(s) 'a', 'b'" for the final acks, else ""."""
    ids = []
    for o in acks:
        with contextlib.suppress(ValueError, AttributeError):
            ids.append(repr(json.loads(o.payload).get("id")))
    return f", among them the end of event(s) {', '.join(ids)}" if ids else ""


class IslandLane:
    """Runs ``link`` (every ack published; dispatch too when ``dispatch_link`` is None),
    ``dispatch_link`` (dispatch and the node's inbox, received only), ``frequency_link``
    (frequency samples only, with priority; None: the dispatch connection carries them too) and
    ``intake`` on a private loop in a daemon thread. The intake is only ever called from that
    thread."""

    def __init__(self, link: MqttLink, intake: Intake, *,
                 dispatch_link: Supervised | None = None,
                 frequency_link: Supervised | None = None) -> None:
        self._link = link
        self._dispatch_link: Supervised = dispatch_link if dispatch_link is not None else link
        self._frequency_link = frequency_link
        self._intake = intake
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._main, name="gridtao-island-lane", daemon=True)
        self._stopping: asyncio.Event | None = None
        self._run = 0  # frequency samples handled in a row (lane thread only)
        self._idle = False  # the receive task waits for a message (lane thread only)
        self._failed: Exception | None = None  # what escaped a message handled inline
        self._ready = threading.Event()
        self.error: BaseException | None = None
        #: After :meth:`stop`: the acks (QoS >= 1, not expendable) the broker never took, for
        #: whoever runs the lane to keep for the next start (records/unsent.py).
        self.undelivered: list[OutboundMessage] = []
        #: Called on the lane's thread with the error when the lane ends with one: the node can
        #: no longer hear the grid, and whoever runs it must know (the agent stops, exit 4).
        self.on_failure: Callable[[BaseException], None] | None = None

    @property
    def link(self) -> MqttLink:
        """The connection every ack goes out on."""
        return self._link

    @property
    def dispatch_link(self) -> Supervised:
        """The connection dispatches arrive on (``link`` itself unless one was given)."""
        return self._dispatch_link

    @property
    def frequency_link(self) -> Supervised:
        """The connection frequency samples arrive on (the dispatch one unless one was
        given)."""
        return self._frequency_link if self._frequency_link is not None else self._dispatch_link

    @property
    def links(self) -> tuple[Supervised, ...]:
        """Every connection the lane runs (the acks' first, frequency last if any)."""
        out: list[Supervised] = [self._link]
        if self._dispatch_link is not self._link:
            out.append(self._dispatch_link)
        if self._frequency_link is not None:
            out.append(self._frequency_link)
        return tuple(out)

    @property
    def is_connected(self) -> bool:
        """Whether every connection of the lane is up."""
        return all(link.is_connected for link in self.links)

    def start(self, *, connect_timeout_s: float | None = None,
              abort: threading.Event | None = None) -> bool:
        """Start the thread; with a timeout, wait for the first broker connection (True if up).
        ``abort`` set from another thread (a signal handler) ends the wait at once; the lane
        keeps trying to connect in the background either way."""
        self._thread.start()
        self._ready.wait(timeout=5.0)
        if connect_timeout_s is None:
            return self.is_connected
        deadline = time.monotonic() + connect_timeout_s
        while not self.is_connected:
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

    def stop(self, *, flush_timeout_s: float = 2.0,
             final: Callable[[], list[Outgoing]] | None = None) -> None:
        """Publish what ``final`` returns (run on the lane's loop, after the last message was
        handled), flush pending acks, disconnect cleanly, and join the thread.

        A lane that is down (it failed, before or during this call, or never started) has no
        connection left: ``final`` still runs once, on the caller's thread after the lane's
        has ended (nothing else touches the intake then), so what it records is recorded; the
        acks it returns cannot be sent and are counted in an error line."""
        ran = threading.Event()

        def run_final() -> list[Outgoing]:
            ran.set()
            return final() if final is not None else []

        async def shutdown() -> None:
            last = run_final()
            self._publish(last)
            # The acks; the receive-only links send none.
            if not await self._link.flush(flush_timeout_s):
                self.undelivered = _worth_keeping(self._link.undelivered())
                log.warning("stopping with %d ack(s) not delivered (the broker is unreachable)"
                            "%s; kept for the next start", self._link.outbox_len,
                            _ended(last))
            if self._stopping is not None:
                self._stopping.set()

        if self.error is None and self._thread.is_alive():
            with contextlib.suppress(Exception):  # a loop that closed meanwhile: see below
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(
                    flush_timeout_s + 3.0)
        if self._thread.ident is not None:
            self._thread.join(timeout=5.0)
        if not ran.is_set() and not self._thread.is_alive():
            unsent = run_final()
            if unsent:
                log.error("island lane is down: %d final ack(s) not sent; kept for the next "
                          "start", len(unsent))
                self.undelivered = _worth_keeping(
                    OutboundMessage(o.topic, o.payload, o.qos, o.retain, o.expendable)
                    for o in unsent)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # surfaced to the agent, which fails safe
            self.error = e
            log.exception("island lane stopped")
            hook = self.on_failure
            if hook is not None:  # at once: the agent's stop waits for this thread's end
                hook(e)
            self._cancel_tasks()  # its connections close and say they are down
        finally:
            self._loop.close()

    def _cancel_tasks(self) -> None:
        """Cancel what is left on the failed loop, waiting at most ``CANCEL_WAIT_S`` (a
        connection's clean close may wait on a broker that will not answer)."""
        tasks = asyncio.all_tasks(self._loop)
        for t in tasks:
            t.cancel()
        with contextlib.suppress(BaseException):
            self._loop.run_until_complete(asyncio.wait(tasks, timeout=CANCEL_WAIT_S))

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        self._ready.set()
        tasks = [asyncio.create_task(link.run(), name=f"island-link-{k}")
                 for k, link in enumerate(self.links)]
        tasks += [
            asyncio.create_task(self._receive(), name="island-receive"),
            asyncio.create_task(self._tick(), name="island-tick"),
        ]
        # Every task runs until cancelled: one that ends (a bug past its own handlers) leaves
        # the node deaf to part of the grid, so the lane fails (``error``, ``on_failure``).
        stopping = asyncio.create_task(self._stopping.wait(), name="island-stopping")
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        for t in (*tasks, stopping):
            t.cancel()
        await asyncio.gather(*tasks, stopping, return_exceptions=True)
        ended = [t for t in done if t is not stopping]
        if ended:
            why = ended[0].exception() if not ended[0].cancelled() else None
            raise RuntimeError(f"island task {ended[0].get_name()} ended: {why!r}") from why

    async def _receive(self) -> None:
        wake = asyncio.Event()

        def inbound() -> None:
            # An idle lane handles the message at once, in the read that brought it: waiting
            # for the next loop iteration would let other threads take the interpreter first
            # (receive -> command 0.1 ms sooner at the median on 2 vCPUs). A lane with messages
            # waiting keeps its order (frequency first) and its pace.
            if self._idle and self._failed is None:
                # One message inline per wait (cleared first, so nothing inside re-enters):
                # the rest of a burst goes through the queue, at the lane's pace and in its
                # order.
                self._idle = False
                try:
                    msg = self._next()
                    if msg is not None:
                        self._handle(msg)
                except Exception as e:  # what would end the receiving task ends it still
                    self._failed = e
            wake.set()

        for link in self.links:
            link.on_inbound = inbound
        yielded = time.monotonic()
        while True:
            msg = self._next()
            if msg is None:
                wake.clear()
                msg = self._next()  # one may have landed between the poll and the clear
                if msg is None:
                    self._idle = True
                    try:
                        await wake.wait()
                    finally:
                        self._idle = False
                    if self._failed is not None:
                        raise self._failed
                    yielded = time.monotonic()
                    continue
            self._handle(msg)
            # Let the loop read the sockets at least every YIELD_S of handling: a backlog
            # handled without yielding would keep a new sample unread, and yielding after
            # every message would cost a loop iteration each in a flood.
            now = time.monotonic()
            if now - yielded >= YIELD_S:
                await asyncio.sleep(0)
                yielded = time.monotonic()

    def _handle(self, msg: InboundMessage) -> None:
        try:
            out = self._intake.on_message(
                msg.topic, msg.payload,
                received_at=msg.received_at, received_wall=msg.received_wall,
                retained=msg.retain,
            )
        except Exception:
            log.exception("message on %s could not be handled", msg.topic)
            out = []
        self._publish(out)

    def _next(self) -> InboundMessage | None:
        """The waiting message to handle next: a frequency sample before a dispatch, but a
        waiting dispatch after every ``FREQUENCY_RUN`` samples in a row."""
        if self._frequency_link is not None and self._run < FREQUENCY_RUN:
            sample = self._frequency_link.poll()
            if sample is not None:
                self._run += 1
                return sample
        self._run = 0
        dispatch = self._dispatch_link.poll()
        if dispatch is None and self._frequency_link is not None:
            return self._frequency_link.poll()
        return dispatch

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
