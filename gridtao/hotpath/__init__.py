"""The hot path: a trigger in, caps on every GPU, an ack out, on a thread of its own.

The trigger chain, file by file, in the order a message travels it:

1. ``transport/receiver.py``: one of the lane's own receive-only broker connections
   (:class:`MqttReceiver`; one for ``{prefix}/frequency``, one for ``{prefix}/dispatch``)
   splits a socket read into messages (``transport/packets.py``) into its bounded inbox.
2. ``hotpath/lane.py``: :class:`IslandLane` runs those connections (and the acks' own) on a
   private uvloop in a dedicated thread, so nothing on the controller's loop can delay a
   trigger, and hands each message (waiting frequency samples before a waiting dispatch) to
3. ``hotpath/intake.py``: :class:`Intake`, synchronous and transport-agnostic, which
4. parses it (``wire/messages.py``) and passes it through the guard (``security/guard.py``:
   rate limit, signature ``security/auth.py``, duplicate check, freshness and replay
   ``security/replay.py``, bounds ``security/bounds.py``); a frequency sample goes to the
   enrolled products (``products/frequency.py``, ``products/portfolio.py``), which decide
   whether a step fires;
5. ``safety/island.py``: :class:`SafetyIsland` takes the caps armed in advance
   (``safety/armed.py``) or cuts them from its frozen draw (``safety/envelope.py``), latches
   (``safety/latch.py``) and hands them to
6. ``safety/writer.py``: :class:`ParallelWriter`, one pre-started thread per GPU, which calls
7. ``gpu/nvml.py``: :meth:`NvmlBackend.command_limit_mw`, the one NVML call per GPU
   (``gpu/sim/nvml.py`` stands in for the driver without GPUs). The batch is stamped
   ``commanded_at`` when the last call returned.
8. Back in the intake, the ack is built (``hotpath/acks.py``: what the GPUs really did;
   ``hotpath/events.py``: the events held and each accepted id's ack; ``wire/payloads.py``)
   and queued on the lane's outbox (``transport/outbox.py``); the verdict and what it caused
   (``hotpath/verdicts.py``) go to the audit trail and journal off the path
   (``records/ledger.py``). The response meter (``control/response.py``) then watches node
   power and the lane publishes the second ack with ``reached_at``.

No allocation beyond the message, no planning and no disk I/O happen before step 7 returns.
"""
