"""The agent's three broker connections, built from ``mqtt.*`` (docs/architecture.md):

* the island's, for ``dispatch`` and the node's own inbox (and every ack it sends);
* the frequency feed's, on a connection of its own so that no dispatch backlog can sit in
  front of a sample; it keeps only the newest samples (a sample that waited behind hundreds is
  stale anyway);
* the controller's (``ctl``): status, tier 2 and tier 3, with the node's last will.

All share every transport setting (TLS, credentials, timeouts); only identity and role differ.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from gridtao.app.planning import subscriptions as tier3_subscriptions
from gridtao.clock import Clock
from gridtao.config.agent import Config
from gridtao.hotpath.intake import Intake
from gridtao.hotpath.lane import IslandLane
from gridtao.transport.mqtt import MqttLink, Will
from gridtao.wire import messages as wire

__all__ = ["FREQUENCY_INBOX", "PACKET_OVERHEAD_BYTES", "node_links"]

#: Frequency samples that may wait for the island lane (a meter sends 10-50 a second).
FREQUENCY_INBOX = 256
PACKET_OVERHEAD_BYTES = 1024  # fixed header, topic name, MQTT v5 properties


def node_links(config: Config, node_id: str, topics: wire.Topics, intake: Intake, *,
               tls: ssl.SSLContext | None, password: str | None,
               clock: Clock) -> tuple[IslandLane, MqttLink]:
    """The island lane (its dispatch and frequency connections, feeding ``intake``) and the
    controller's connection; nothing connects before they are started."""
    m = config.mqtt
    pid = os.getpid()

    def link(role: str, **extra: Any) -> MqttLink:
        return MqttLink.for_broker(m, client_id=f"gridtao-{node_id}-{role}-{pid}", tls=tls,
                                   password=password, clock=clock, **extra)

    # The largest payload accepted, plus room for the topic and the headers: the broker is told
    # (MQTT v5 Maximum Packet Size) and never sends more.
    max_packet = m.max_payload_bytes + PACKET_OVERHEAD_BYTES
    lane = IslandLane(
        link("island", subscriptions=[(topics.dispatch, 1), (topics.node_dispatch, 1)],
             max_packet_bytes=max_packet),
        intake,
        frequency_link=link("frequency", subscriptions=[(topics.frequency, 0)],
                            max_packet_bytes=max_packet, max_inbound=FREQUENCY_INBOX),
    )
    status = link(
        "ctl", subscriptions=tier3_subscriptions(config, topics),
        retained_topics=[topics.signals],  # a state document, not a command
        will=Will(topics.status, wire.offline_payload(node_id), qos=1, retain=True),
    )
    return lane, status
