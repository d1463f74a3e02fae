"""The agent's four broker connections, built from ``mqtt.*`` (docs/architecture.md), each
named (in its log lines, ``[dispatch]``..., as in the ``link`` label of its metrics):

* ``dispatch``: the island's dispatch connection, for ``dispatch`` and the node's own inbox,
  received only (gridtao/transport/receiver.py: it keeps up with a flood and keeps the newest
  messages);
* ``frequency``: the frequency feed's, received only too and on a connection of its own so that
  no dispatch backlog can sit in front of a sample; it keeps only the newest samples (a sample
  that waited behind hundreds is stale anyway);
* ``island``: the island's acks (every ack it sends);
* ``status``: the controller's: status, tier 2 and tier 3, with the node's last will.

All share every transport setting (TLS, credentials, timeouts); only identity and role differ.
"""

from __future__ import annotations

import os
import ssl
from typing import Any, TypeVar

from gridtao.app.planning import subscriptions as tier3_subscriptions
from gridtao.clock import Clock
from gridtao.config.agent import Config
from gridtao.hotpath.intake import Intake
from gridtao.hotpath.lane import IslandLane
from gridtao.tier3.signals import MAX_SIGNALS_MESSAGE_BYTES
from gridtao.transport.mqtt import MqttLink, Will
from gridtao.transport.receiver import MqttReceiver
from gridtao.transport.supervision import Supervised
from gridtao.wire import messages as wire

__all__ = ["FREQUENCY_INBOX", "PACKET_OVERHEAD_BYTES", "STATUS_INBOX", "node_links"]

#: Frequency samples that may wait for the island lane (a meter sends 10-50 a second).
FREQUENCY_INBOX = 256
#: Awards and signals that may wait for the controller loop (they come a few an hour).
STATUS_INBOX = 16
PACKET_OVERHEAD_BYTES = 1024  # fixed header, topic name, MQTT v5 properties
_Conn = TypeVar("_Conn", bound=Supervised)


def node_links(config: Config, node_id: str, topics: wire.Topics, intake: Intake, *,
               tls: ssl.SSLContext | None, password: str | None,
               clock: Clock) -> tuple[IslandLane, MqttLink]:
    """The island lane (its acks, dispatch and frequency connections, feeding ``intake``) and the
    controller's connection; nothing connects before they are started."""
    m = config.mqtt
    pid = os.getpid()

    def link(role: str, kind: type[_Conn], **extra: Any) -> _Conn:
        return kind.for_broker(m, client_id=f"gridtao-{node_id}-{role}-{pid}", tls=tls,
                               password=password, clock=clock, name=role, **extra)

    # The largest payload accepted, plus room for the topic and the headers: the broker is told
    # (MQTT v5 Maximum Packet Size) and never sends more.
    max_packet = m.max_payload_bytes + PACKET_OVERHEAD_BYTES
    lane = IslandLane(
        link("island", MqttLink),
        intake,
        dispatch_link=link("dispatch", MqttReceiver, max_packet_bytes=max_packet,
                           subscriptions=[(topics.dispatch, 1), (topics.node_dispatch, 1)]),
        frequency_link=link("frequency", MqttReceiver, subscriptions=[(topics.frequency, 0)],
                            max_packet_bytes=max_packet, max_inbound=FREQUENCY_INBOX),
    )
    status = link(
        "status", MqttLink, subscriptions=tier3_subscriptions(config, topics),
        retained_topics=[topics.signals],  # a state document, not a command
        # Awards and signals: a few an hour, none larger than a signals document, so a flood
        # of huge publishes on them costs a bounded few megabytes, never the node's memory.
        max_packet_bytes=max(m.max_payload_bytes, MAX_SIGNALS_MESSAGE_BYTES)
        + PACKET_OVERHEAD_BYTES, max_inbound=STATUS_INBOX,
        will=Will(topics.status, wire.offline_payload(node_id), qos=1, retain=True),
    )
    return lane, status
