"""Why a broker connection failed or ended, for the connections gridtao drives itself
(gridtao/transport/receiver.py); aiomqtt's links raise ``aiomqtt.MqttError`` instead, and
transport/diagnose.py reads both."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["ConnectRefused", "ConnectionLost"]


class ConnectionLost(Exception):
    """A connection ended or could not be made, for the reason given (one line)."""


class ConnectRefused(ConnectionLost):
    """The broker answered CONNECT with a failure; ``rc``: its reason code (paho's public
    ``ReasonCode``, whose ``value`` is the code and ``str`` its name, as aiomqtt reports it)."""

    def __init__(self, code: int) -> None:
        self.rc: ReasonCode | int
        try:
            self.rc = ReasonCode(PacketTypes.CONNACK, identifier=code)
            name = str(self.rc)
        except (KeyError, ValueError):  # not an MQTT v5 CONNACK code: keep the number
            self.rc = code
            name = ("not an MQTT v5 reason code: does the broker speak MQTT v5?" if code < 0x80
                    else "unknown reason code")
        super().__init__(f"[code:{code}] {name}")
