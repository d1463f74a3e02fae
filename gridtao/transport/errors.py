"""Why a broker connection failed or ended, for the connections gridtao drives itself
(gridtao/transport/receiver.py); aiomqtt's links raise ``aiomqtt.MqttError`` instead, and
transport/diagnose.py reads both."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["ConnectRefused", "ConnectionLost", "named_code"]


class ConnectionLost(Exception):
    """A connection ended or could not be made, for the reason given (one line)."""


class ConnectRefused(ConnectionLost):
    """The broker answered CONNECT with a failure; ``rc``: its reason code (paho's public
    ``ReasonCode``, whose ``value`` is the code and ``str`` its name, as aiomqtt reports it)."""

    def __init__(self, code: int) -> None:
        rc = named_code(PacketTypes.CONNACK, code)
        self.rc: ReasonCode | int = code if rc is None else rc  # unknown: keep the number
        if rc is not None:
            name = str(rc)
        elif code < 0x80:
            name = "not an MQTT v5 reason code: does the broker speak MQTT v5?"
        else:
            name = "unknown reason code"
        super().__init__(f"[code:{code}] {name}")


def named_code(packet_type: int, code: int) -> ReasonCode | None:
    """paho's public ``ReasonCode`` for ``code`` in a packet of ``packet_type``
    (``PacketTypes``), or None when MQTT v5 gives that packet no such code."""
    try:
        return ReasonCode(packet_type, identifier=code)
    except (KeyError, ValueError):
        return None
