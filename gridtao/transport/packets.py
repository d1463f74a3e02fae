"""The few MQTT v5 packets a receive-only connection exchanges, encoded and decoded by hand.

Why by hand: the island's inbound connections must read faster than an attacker can publish
junk. Through paho and aiomqtt a message costs about 130 us of CPU before gridtao sees it (one
read call per packet, MQTT v5 properties decoded into objects, three hand-overs between queues);
:class:`PacketReader` splits a whole socket read into packets in about 8 us each, so a backlog is
drained into the lane's bounded inboxes at once, where the newest messages are kept and the
excess is counted, instead of waiting in socket buffers and at the broker ahead of a genuine
trigger (BENCHMARKS.md, "Triggers under a flood"; MQTT v5.0, OASIS Standard, sections 2-3).

Only what a subscriber needs: CONNECT (clean start, keepalive, user name and password, Maximum
Packet Size), SUBSCRIBE with retain handling, PUBACK, PINGREQ, DISCONNECT out; CONNACK, SUBACK,
PUBLISH (QoS 0 and 1), PINGRESP and DISCONNECT in. Properties of received packets are skipped,
never decoded. Anything else is a protocol error (:class:`ProtocolError`), which ends the
connection as a real client would.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "CONNACK",
    "DISCONNECT",
    "PINGREQ",
    "PINGREQ_PACKET",
    "PINGRESP",
    "PUBACK",
    "PUBLISH",
    "SUBACK",
    "Connack",
    "Packet",
    "PacketReader",
    "ProtocolError",
    "Publish",
    "connack",
    "connect_packet",
    "disconnect_packet",
    "puback_packet",
    "reason_code",
    "suback_codes",
    "subscribe_packet",
]

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

_MAX_REMAINING = 268_435_455  # the largest length four variable-length bytes can say
_PROP_MAX_PACKET_SIZE = 0x27
_PROP_SERVER_KEEPALIVE = 0x13
# Each MQTT v5 property's value type (section 2.2.2.2), to walk past the ones not read.
_BYTE_PROPS = frozenset((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A))
_TWO_BYTE_PROPS = frozenset((0x13, 0x21, 0x22, 0x23))
_FOUR_BYTE_PROPS = frozenset((0x02, 0x11, 0x18, 0x27))
_VARINT_PROPS = frozenset((0x0B,))
_STRING_PROPS = frozenset((0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F))  # + binary
_PAIR_PROPS = frozenset((0x26,))


class ProtocolError(Exception):
    """The broker sent something a conforming MQTT v5 server would not (or more than we
    allowed): the connection is closed. ``reason`` says what; ``parsed``: the packets of the
    same read that came complete before the bad one (still to be handled and acknowledged)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.parsed: list[Publish | Packet] = []


class Publish(NamedTuple):
    """A received PUBLISH: ``topic`` as sent (UTF-8 decoded), ``packet_id`` None for QoS 0.
    A named tuple: one is made for every message of a flood."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    packet_id: int | None


@dataclass(frozen=True, slots=True)
class Packet:
    """Any other received packet: its type and the variable header + payload, undecoded."""

    kind: int
    body: bytes


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > 0xFFFF:
        raise ValueError("an MQTT string holds at most 65,535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + _varint(len(body)) + body


def connect_packet(client_id: str, *, keepalive_s: int, username: str | None = None,
                   password: str | None = None, max_packet_bytes: int | None = None) -> bytes:
    """CONNECT, MQTT v5, clean start, no session kept after the connection, no will."""
    flags = 0x02  # clean start
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    props = b""
    if max_packet_bytes is not None:
        props = bytes((_PROP_MAX_PACKET_SIZE,)) + struct.pack("!I", max_packet_bytes)
    body = (_string("MQTT") + bytes((5, flags)) + struct.pack("!H", keepalive_s)
            + _varint(len(props)) + props + _string(client_id))
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)
    return _packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, subscriptions: Sequence[tuple[str, int, int]]) -> bytes:
    """SUBSCRIBE ``(topic filter, QoS, retain handling)``: retain handling 2 asks the broker
    for no retained message when the subscription is made, 0 for the one it holds."""
    body = struct.pack("!H", packet_id) + _varint(0)
    for topic, qos, retain_handling in subscriptions:
        body += _string(topic) + bytes((qos | (retain_handling << 4),))
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def puback_packet(packet_id: int) -> bytes:
    """PUBACK, reason Success (the short form: no reason code, no properties)."""
    return bytes((PUBACK << 4, 2)) + struct.pack("!H", packet_id)


PINGREQ_PACKET = bytes((PINGREQ << 4, 0))


def disconnect_packet() -> bytes:
    """DISCONNECT, normal disconnection (the will, if any, is not sent)."""
    return bytes((DISCONNECT << 4, 0))


class PacketReader:
    """Splits a byte stream into packets: :meth:`feed` what the socket gave, get every packet
    complete so far (the rest waits for the next read).

    ``max_packet_bytes``: the Maximum Packet Size told to the broker; a larger packet (which
    the broker must never send) is a :class:`ProtocolError` before its body is buffered, so
    memory stays bounded whatever arrives. Not thread-safe: one reader per connection, used on
    the connection's event loop.
    """

    def __init__(self, max_packet_bytes: int | None = None) -> None:
        self._buf = bytearray()
        self._max = max_packet_bytes if max_packet_bytes is not None else _MAX_REMAINING + 5

    def feed(self, data: bytes) -> list[Publish | Packet]:
        """Every packet complete so far. A malformed one raises :class:`ProtocolError`, whose
        ``parsed`` holds the good packets before it (the reader is then unusable)."""
        out: list[Publish | Packet] = []
        try:
            self._split(data, out)
        except ProtocolError as e:
            e.parsed = out
            raise
        return out

    def _split(self, data: bytes, out: list[Publish | Packet]) -> None:
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            first = buf[pos]
            i, length, shift = pos + 1, 0, 0
            while True:
                if i >= end:
                    length = -1  # the length is not all here yet
                    break
                digit = buf[i]
                i += 1
                length |= (digit & 0x7F) << shift
                if not digit & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise ProtocolError("malformed remaining length")
            if length < 0:
                break
            if i - pos + length > self._max:
                raise ProtocolError(f"packet of {i - pos + length} bytes is larger than the "
                                    f"{self._max} bytes allowed")
            if i + length > end:
                break
            kind = first >> 4
            if kind == PUBLISH:
                out.append(_publish(first, bytes(buf[i:i + length])))
            else:
                out.append(Packet(kind, bytes(buf[i:i + length])))
            pos = i + length
        del buf[:pos]


def _publish(first: int, body: bytes) -> Publish:
    qos = (first >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    try:
        (topic_len,) = struct.unpack_from("!H", body, 0)
        j = 2 + topic_len
        topic = body[2:j].decode()
        packet_id = None
        if qos:
            (packet_id,) = struct.unpack_from("!H", body, j)
            j += 2
        props, j = _property_length(body, j)
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise ProtocolError(f"malformed PUBLISH ({e})") from None
    if j + props > len(body):
        raise ProtocolError("PUBLISH properties longer than the packet")
    if not topic:  # a topic alias: this client allows none (no Topic Alias Maximum sent)
        raise ProtocolError("PUBLISH without a topic name")
    if "+" in topic or "#" in topic:
        raise ProtocolError(f"PUBLISH to a topic filter {topic!r}")
    if packet_id == 0:
        raise ProtocolError("QoS 1 PUBLISH with packet id 0")
    return Publish(topic, body[j + props:], qos, bool(first & 0x01), packet_id)


def reason_code(packet: Packet, offset: int) -> int:
    """The byte at ``offset`` of ``packet``'s body (a CONNACK's or SUBACK's reason code)."""
    if len(packet.body) <= offset:
        raise ProtocolError(f"packet type {packet.kind} too short")
    return packet.body[offset]


class Connack(NamedTuple):
    """What a CONNACK says that a receiver acts on: the reason code (0 success) and the
    Server Keep Alive the client must use instead of its own, if the broker set one."""

    code: int
    server_keepalive_s: int | None


def connack(packet: Packet) -> Connack:
    """Decode a CONNACK: reason code and properties (only Server Keep Alive is kept)."""
    code = reason_code(packet, 1)
    if code or len(packet.body) == 2:  # a refusal (or an MQTT 3.1.1 answer) may have none
        return Connack(code, None)
    try:
        props = _properties(packet.body, 2)
    except (struct.error, IndexError, UnicodeDecodeError):
        raise ProtocolError("malformed CONNACK properties") from None
    keepalive = props.get(_PROP_SERVER_KEEPALIVE)
    return Connack(code, keepalive if isinstance(keepalive, int) else None)


def suback_codes(packet: Packet) -> bytes:
    """A SUBACK's reason codes, one per subscription asked for (>= 0x80: refused)."""
    try:
        props, j = _property_length(packet.body, 2)
    except IndexError:
        raise ProtocolError("SUBACK too short") from None
    return packet.body[j + props:]


def _property_length(body: bytes, j: int) -> tuple[int, int]:
    """The variable-length integer at ``body[j]`` and the offset after it (IndexError when
    the body ends first)."""
    value, shift = 0, 0
    while True:
        digit = body[j]
        j += 1
        value |= (digit & 0x7F) << shift
        if not digit & 0x80:
            return value, j
        shift += 7
        if shift > 21:
            raise ProtocolError("malformed property length")


def _properties(body: bytes, j: int) -> dict[int, int | bytes]:
    """The properties at ``body[j]`` (length first) by identifier: integers as ints, strings
    and binary data as bytes (a user property's pair is skipped). An unknown identifier is a
    ProtocolError; a body that ends early raises IndexError or struct.error."""
    length, j = _property_length(body, j)
    end = j + length
    if end > len(body):
        raise IndexError("properties longer than the packet")
    out: dict[int, int | bytes] = {}
    while j < end:
        ident, j = _property_length(body, j)
        if ident in _BYTE_PROPS:
            out[ident], j = body[j], j + 1
        elif ident in _TWO_BYTE_PROPS:
            (out[ident],), j = struct.unpack_from("!H", body, j), j + 2
        elif ident in _FOUR_BYTE_PROPS:
            (out[ident],), j = struct.unpack_from("!I", body, j), j + 4
        elif ident in _VARINT_PROPS:
            out[ident], j = _property_length(body, j)
        elif ident in _STRING_PROPS or ident in _PAIR_PROPS:
            for _ in range(2 if ident in _PAIR_PROPS else 1):
                (n,) = struct.unpack_from("!H", body, j)
                if ident not in _PAIR_PROPS:
                    out[ident] = body[j + 2:j + 2 + n]
                j += 2 + n
        else:
            raise ProtocolError(f"unknown property 0x{ident:02x}")
    if j != end:
        raise IndexError("a property runs past the properties' length")
    return out
