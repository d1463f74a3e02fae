"""The hand-written MQTT v5 packets of the receive-only connection: what the reader splits out
of a byte stream, however the stream is cut, and what it refuses."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridtao.transport import packets as p
from gridtao.transport.diagnose import diagnose
from gridtao.transport.errors import ConnectRefused


def publish_bytes(topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                  packet_id: int = 7, props: bytes = b"") -> bytes:
    """A PUBLISH as a broker sends it (``props``: raw property bytes, skipped by the reader)."""
    body = struct.pack("!H", len(topic.encode())) + topic.encode()
    if qos:
        body += struct.pack("!H", packet_id)
    body += p._varint(len(props)) + props + payload
    return bytes(((p.PUBLISH << 4) | (qos << 1) | int(retain),)) + p._varint(len(body)) + body


def test_publishes_come_out_whole_however_the_stream_is_cut() -> None:
    # A 300-byte payload: a two-byte remaining length; a property to skip (message expiry).
    stream = (publish_bytes("a/freq", b'{"hz": 49.9}')
              + publish_bytes("a/dispatch", b"x" * 300, qos=1, packet_id=513,
                              props=b"\x02\x00\x00\x00\x3c")
              + publish_bytes("a/r", b"", retain=True)
              + bytes((p.PINGRESP << 4, 0)))
    for size in (1, 2, 3, 7, 64, len(stream)):
        reader = p.PacketReader()
        out: list[p.Publish | p.Packet] = []
        for k in range(0, len(stream), size):
            out += reader.feed(stream[k:k + size])
        assert out == [
            p.Publish("a/freq", b'{"hz": 49.9}', 0, False, None),
            p.Publish("a/dispatch", b"x" * 300, 1, False, 513),
            p.Publish("a/r", b"", 0, True, None),
            p.Packet(p.PINGRESP, b""),
        ], size


def test_an_oversize_packet_is_refused_before_its_body_is_buffered() -> None:
    reader = p.PacketReader(max_packet_bytes=1000)
    header = publish_bytes("t", b"y" * 5000)[:4]  # the fixed header alone says 5,000+ bytes
    with pytest.raises(p.ProtocolError, match="larger than the 1000 bytes allowed"):
        reader.feed(header)
    assert len(p.PacketReader(max_packet_bytes=1000).feed(publish_bytes("t", b"y" * 900))) == 1


@pytest.mark.parametrize("stream, reason", [
    (bytes((0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01)), "remaining length"),
    (bytes((0x36, 2, 0, 0)), "QoS 3"),
    (bytes((0x30, 3, 0, 9, 0x61)), "malformed PUBLISH"),  # topic longer than the packet
    (bytes((0x30, 4, 0, 1, 0x61, 0x09)), "properties longer"),
    (bytes((0x30, 5, 0, 2, 0xFF, 0xFE, 0)), "malformed PUBLISH"),  # topic not UTF-8
    (publish_bytes("", b"x", props=b"\x23\x00\x01"), "without a topic name"),  # an alias
    (publish_bytes("a/+", b"x"), "topic filter"),
    (publish_bytes("a", b"x", qos=1, packet_id=0), "packet id 0"),
])
def test_malformed_packets_are_protocol_errors(stream: bytes, reason: str) -> None:
    with pytest.raises(p.ProtocolError, match=reason):
        p.PacketReader().feed(stream)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_packets_or_a_protocol_error(stream: bytes) -> None:
    reader = p.PacketReader(max_packet_bytes=256)
    try:
        for packet in reader.feed(stream):
            assert isinstance(packet, p.Publish | p.Packet)
    except p.ProtocolError:
        pass


def test_connect_and_subscribe_say_what_the_broker_needs() -> None:
    connect = p.connect_packet("node-1", keepalive_s=10, username="u", password="pw",
                               max_packet_bytes=66_560)
    assert connect[0] == 0x10
    body = connect[2:]  # remaining length fits one byte here
    assert body[:7] == b"\x00\x04MQTT\x05"  # protocol name and version 5
    assert body[7] == 0x02 | 0x80 | 0x40  # clean start, user name, password
    assert body[10:16] == b"\x05\x27" + struct.pack("!I", 66_560)  # Maximum Packet Size
    assert body.endswith(b"\x00\x06node-1\x00\x01u\x00\x02pw")
    subscribe = p.subscribe_packet(1, [("a/#", 1, 2), ("b", 0, 0)])
    assert subscribe[0] == 0x82 and subscribe.endswith(b"\x00\x03a/#\x21\x00\x01b\x00")
    assert p.suback_codes(p.Packet(p.SUBACK, b"\x00\x01\x00\x01\x87")) == b"\x01\x87"
    assert p.puback_packet(513) == b"\x40\x02\x02\x01"


def test_the_good_packets_before_a_bad_one_are_kept() -> None:
    """A malformed packet ends the connection, but what came whole before it in the same read
    (a trigger, say) is still handed over, to be delivered and acknowledged."""
    good = publish_bytes("a/dispatch", b"trigger", qos=1, packet_id=9)
    with pytest.raises(p.ProtocolError) as caught:
        p.PacketReader().feed(good + bytes((0x36, 2, 0, 0)))
    assert caught.value.parsed == [p.Publish("a/dispatch", b"trigger", 1, False, 9)]


def test_a_connack_says_its_code_and_the_brokers_keepalive() -> None:
    props = (bytes((0x21,)) + struct.pack("!H", 20)  # Receive Maximum, walked past
             + bytes((0x12,)) + struct.pack("!H", 3) + b"abc"  # Assigned Client Identifier
             + bytes((0x26,)) + struct.pack("!H", 1) + b"k" + struct.pack("!H", 1) + b"v"
             + bytes((0x13,)) + struct.pack("!H", 15))  # Server Keep Alive
    ack = p.connack(p.Packet(p.CONNACK, bytes((0, 0)) + p._varint(len(props)) + props))
    assert ack == p.Connack(0, 15)
    assert p.connack(p.Packet(p.CONNACK, bytes((0, 0, 0)))) == p.Connack(0, None)
    assert p.connack(p.Packet(p.CONNACK, bytes((0, 0x87)))) == p.Connack(0x87, None)
    assert p.connack(p.Packet(p.CONNACK, bytes((0, 1)))) == p.Connack(1, None)  # MQTT 3.1.1
    with pytest.raises(p.ProtocolError, match="CONNACK"):
        p.connack(p.Packet(p.CONNACK, bytes((0, 0, 5, 0x13, 0))))  # cut short
    with pytest.raises(p.ProtocolError, match="unknown property"):
        p.connack(p.Packet(p.CONNACK, bytes((0, 0, 2, 0x7F, 0))))


@pytest.mark.parametrize("code, says", [
    (0x86, "Bad user name or password"),
    (0xFE, "unknown reason code"),
    (0x01, "does the broker speak MQTT v5"),
])
def test_a_refused_connect_is_named_whatever_its_code(code: int, says: str) -> None:
    assert says in str(ConnectRefused(code))
    line = diagnose(ConnectRefused(code), host="h", port=1883).line
    assert line.startswith("broker h:1883 refused") and says.lower() in line.lower(), line
