"""The bridge's outgoing dispatches: paced, signed at the moment they leave, in order.

Cuts (``dr``) are published at least ``dispatch.min_interval_s`` apart: a node takes one cut per
``limits.min_event_interval_s`` and refuses the next one sooner, so successive dispatches of
one event (or a modification's replacement) must not arrive together. Releases are never
held back, but keep their place in the queue (a release never overtakes the cut it names).
A release of a cut still waiting in the queue removes the cut instead: nothing is published
for it. Each message is signed (``issued_at`` is the time it leaves, so the nodes' freshness
window counts from then) and handed to the MQTT link on ``{prefix}/dispatch``, QoS 1.

Not thread-safe: used on the bridge's event loop; :meth:`DispatchOutbox.pump` is synchronous,
so tests drive it with a virtual clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Mapping
from typing import Final

from gridtao.clock import Clock

__all__ = ["DispatchOutbox"]

#: Ids of published cuts remembered for their releases (oldest forgotten first).
MAX_REMEMBERED: Final = 10_000

Body = dict[str, object]


class DispatchOutbox:
    """``sign(body) -> payload bytes`` adds ``issued_at`` and the signature; ``publish(payload)``
    hands it to the link; ``on_published(body)`` is told of each (audit, metrics)."""

    def __init__(self, *, clock: Clock, min_interval_s: float,
                 sign: Callable[[Mapping[str, object]], bytes],
                 publish: Callable[[bytes], None],
                 on_published: Callable[[Mapping[str, object]], None]) -> None:
        self._clock = clock
        self.min_interval_s = min_interval_s
        self._sign = sign
        self._publish = publish
        self._on_published = on_published
        self._queue: collections.deque[Body] = collections.deque()
        self._published: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._last_cut_at: float | None = None  # monotonic s
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def pending_ids(self) -> list[str]:
        return [str(body["id"]) for body in self._queue]

    def was_published(self, dispatch_id: str) -> bool:
        return dispatch_id in self._published

    def cut(self, body: Body) -> None:
        """Queue a ``dr`` dispatch (its ``id`` must be new)."""
        self._queue.append(dict(body))
        self._wake.set()

    def release(self, ref: str, release_id: str) -> bool:
        """End cut ``ref``: drop it if it is still queued (False: nothing to publish), else
        queue a ``release`` naming it (True). A cut never published is not released."""
        for k, body in enumerate(self._queue):
            if body.get("id") == ref and body.get("kind") == "dr":
                del self._queue[k]
                return False
        if ref not in self._published:
            return False
        self._queue.append({"id": release_id, "kind": "release", "ref": ref})
        self._wake.set()
        return True

    def pump(self) -> float | None:
        """Publish what is due now; returns the seconds until the next cut is due (None when
        the queue is empty)."""
        while self._queue:
            body = self._queue[0]
            if body.get("kind") == "dr" and self._last_cut_at is not None:
                wait = self._last_cut_at + self.min_interval_s - self._clock.now()
                if wait > 0:
                    return wait
            self._queue.popleft()
            payload = self._sign(body)
            self._publish(payload)
            if body.get("kind") == "dr":
                self._last_cut_at = self._clock.now()
                self._published[str(body["id"])] = None
                while len(self._published) > MAX_REMEMBERED:
                    self._published.popitem(last=False)
            self._on_published(body)
        return None

    async def run(self) -> None:
        """Pump until cancelled, sleeping until the next cut is due or something is queued."""
        while True:
            self._wake.clear()
            wait = self.pump()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
