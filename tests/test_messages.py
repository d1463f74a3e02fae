"""Wire contract v1: parsing, rejection reasons, builders, topics, fuzzing."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gridtao.wire.messages import (
    DURATION_MAX_S,
    ID_MAX_CHARS,
    NODE_W_MAX,
    CapDispatch,
    FrequencySample,
    MessageRejected,
    ReleaseDispatch,
    ShedDispatch,
    Topics,
    ack_payload,
    offline_payload,
    parse_dispatch,
    parse_frequency,
    status_payload,
)

MAX = 4096


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def shed(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "e1",
        "kind": "shed",
        "fraction": 0.3,
        "duration_s": 30,
        "issued_at": 1763900000.5,
    }
    base.update(over)
    return base


def without(d: dict[str, object], key: str) -> dict[str, object]:
    return {k: v for k, v in d.items() if k != key}


# ---- valid messages -----------------------------------------------------------------------------


def test_frequency_valid() -> None:
    sample = parse_frequency(b'{"t": 1763900000.12, "hz": 49.68}', max_bytes=MAX)
    assert sample == FrequencySample(t=1763900000.12, hz=49.68)


def test_frequency_int_values_become_floats() -> None:
    sample = parse_frequency(b'{"t": 1763900000, "hz": 50}', max_bytes=MAX)
    assert sample == FrequencySample(1763900000.0, 50.0)
    assert type(sample.hz) is float and type(sample.t) is float


def test_shed_valid() -> None:
    d = parse_dispatch(enc(shed()), max_bytes=MAX)
    assert d == ShedDispatch(id="e1", fraction=0.3, duration_s=30.0, issued_at=1763900000.5)
    assert d.KIND == "shed"


def test_shed_full_fraction_and_max_duration_accepted() -> None:
    d = parse_dispatch(enc(shed(fraction=1, duration_s=DURATION_MAX_S)), max_bytes=MAX)
    assert isinstance(d, ShedDispatch) and d.fraction == 1.0 and d.duration_s == DURATION_MAX_S


def test_cap_valid() -> None:
    payload = {"id": "e2", "kind": "cap", "node_w": 3000, "duration_s": 600, "issued_at": 5.0}
    d = parse_dispatch(enc(payload), max_bytes=MAX)
    assert d == CapDispatch(id="e2", node_w=3000.0, duration_s=600.0, issued_at=5.0)
    assert d.KIND == "cap"


def test_release_valid() -> None:
    d = parse_dispatch(b'{"id": "e3", "kind": "release", "ref": "e1"}', max_bytes=MAX)
    assert d == ReleaseDispatch(id="e3", ref="e1", issued_at=None)
    assert d.KIND == "release"


def test_issued_at_optional_and_null() -> None:
    d1 = parse_dispatch(enc(without(shed(), "issued_at")), max_bytes=MAX)
    d2 = parse_dispatch(enc(shed(issued_at=None)), max_bytes=MAX)
    assert d1.issued_at is None and d2.issued_at is None


def test_unknown_fields_ignored() -> None:
    d = parse_dispatch(enc(shed(extra={"nested": [1, 2]}, note="hi", v=2)), max_bytes=MAX)
    assert d == ShedDispatch("e1", 0.3, 30.0, 1763900000.5)
    f = parse_frequency(b'{"t": 1, "hz": 50, "site": "x", "q": null}', max_bytes=MAX)
    assert f == FrequencySample(1.0, 50.0)


def test_payload_exactly_at_limit_is_accepted() -> None:
    payload = enc(shed())
    assert parse_dispatch(payload, max_bytes=len(payload)).id == "e1"


def test_id_at_max_length_accepted() -> None:
    ident = "x" * ID_MAX_CHARS
    assert parse_dispatch(enc(shed(id=ident)), max_bytes=MAX).id == ident


# ---- rejections ---------------------------------------------------------------------------------

DISPATCH_REJECTIONS: list[tuple[str, bytes, str, str | None]] = [
    ("oversize", enc(shed(pad="x" * 5000)), "payload too large", None),
    ("not utf-8", b'{"id": "e1\xff", "kind": "shed"}', "not UTF-8", None),
    ("bad json", b'{"id": "e1", "kind": ', "bad JSON", None),
    ("trailing garbage", enc(shed()) + b"x", "bad JSON", None),
    ("empty", b"", "bad JSON", None),
    ("top-level array", b'[{"id": "e1"}]', "top level must be a JSON object, got array", None),
    ("top-level string", b'"shed"', "top level must be a JSON object, got string", None),
    ("top-level null", b"null", "got null", None),
    ("NaN", b'{"id":"e1","kind":"shed","fraction":NaN,"duration_s":1}', "NaN", None),
    ("Infinity", b'{"id":"e1","kind":"cap","node_w":Infinity,"duration_s":1}', "Infinity", None),
    ("-Infinity", b'{"id":"e1","kind":"shed","fraction":-Infinity}', "-Infinity", None),
    ("overflow float", b'{"id":"e1","kind":"cap","node_w":1e999,"duration_s":1}', "finite", "e1"),
    ("missing id", enc(without(shed(), "id")), "missing field 'id'", None),
    ("id not string", enc(shed(id=7)), "field 'id' must be a string, got number", None),
    ("id empty", enc(shed(id="")), "field 'id' must not be empty", ""),
    ("id too long", enc(shed(id="x" * 129)), "too long: 129 chars > 128", "x" * 129),
    ("id unprintable", enc(shed(id="a\nb")), "printable", "a\nb"),
    ("missing kind", enc(without(shed(), "kind")), "missing field 'kind'", "e1"),
    ("unknown kind", enc(shed(kind="boost")), "unknown kind 'boost'", "e1"),
    ("kind not string", enc(shed(kind=3)), "field 'kind' must be a string", "e1"),
    ("missing fraction", enc(without(shed(), "fraction")), "missing field 'fraction'", "e1"),
    ("fraction string", enc(shed(fraction="0.3")), "'fraction' must be a number, got string", "e1"),
    ("fraction bool", enc(shed(fraction=True)), "'fraction' must be a number, got boolean", "e1"),
    ("fraction null", enc(shed(fraction=None)), "'fraction' must be a number, got null", "e1"),
    ("fraction zero", enc(shed(fraction=0)), "'fraction' must be in (0, 1]", "e1"),
    ("fraction negative", enc(shed(fraction=-0.1)), "'fraction' must be in (0, 1]", "e1"),
    ("fraction above one", enc(shed(fraction=1.01)), "'fraction' must be in (0, 1]", "e1"),
    ("missing duration", enc(without(shed(), "duration_s")), "missing field 'duration_s'", "e1"),
    ("duration zero", enc(shed(duration_s=0)), "'duration_s' must be in (0, 604800] s", "e1"),
    ("duration negative", enc(shed(duration_s=-5)), "'duration_s' must be in (0,", "e1"),
    ("duration > 7 days", enc(shed(duration_s=DURATION_MAX_S + 1)), "'duration_s'", "e1"),
    ("duration bool", enc(shed(duration_s=False)), "'duration_s' must be a number", "e1"),
    ("issued_at string", enc(shed(issued_at="now")), "'issued_at' must be a number", "e1"),
    ("issued_at bool", enc(shed(issued_at=True)), "'issued_at' must be a number", "e1"),
    (
        "cap missing node_w",
        enc({"id": "c", "kind": "cap", "duration_s": 5}),
        "missing field 'node_w'",
        "c",
    ),
    (
        "cap node_w zero",
        enc({"id": "c", "kind": "cap", "node_w": 0, "duration_s": 5}),
        "'node_w' must be in (0, 1e+07] W, got 0",
        "c",
    ),
    (
        "cap node_w negative",
        enc({"id": "c", "kind": "cap", "node_w": -100, "duration_s": 5}),
        "'node_w' must be in (0,",
        "c",
    ),
    (
        "cap node_w absurd",
        enc({"id": "c", "kind": "cap", "node_w": NODE_W_MAX * 2, "duration_s": 5}),
        "'node_w' must be in (0, 1e+07] W",
        "c",
    ),
    (
        "cap node_w huge int",
        b'{"id": "c", "kind": "cap", "node_w": 1' + b"0" * 400 + b', "duration_s": 5}',
        "'node_w' is out of range",
        "c",
    ),
    (
        "cap node_w bool",
        enc({"id": "c", "kind": "cap", "node_w": True, "duration_s": 5}),
        "'node_w' must be a number, got boolean",
        "c",
    ),
    (
        "cap missing duration",
        enc({"id": "c", "kind": "cap", "node_w": 100}),
        "missing field 'duration_s'",
        "c",
    ),
    (
        "release without ref",
        enc({"id": "r", "kind": "release"}),
        "release needs field 'ref'",
        "r",
    ),
    (
        "release ref empty",
        enc({"id": "r", "kind": "release", "ref": ""}),
        "'ref' must not be empty",
        "r",
    ),
    (
        "release ref not string",
        enc({"id": "r", "kind": "release", "ref": 1}),
        "'ref' must be a string",
        "r",
    ),
    ("deep nesting", b"[" * 5000 + b"]" * 5000, "bad JSON", None),
]


@pytest.mark.parametrize(
    ("payload", "reason", "event_id"),
    [pytest.param(p, r, e, id=name) for name, p, r, e in DISPATCH_REJECTIONS],
)
def test_dispatch_rejections(payload: bytes, reason: str, event_id: str | None) -> None:
    max_bytes = 4096 if not payload.startswith(b"[[") else 20_000
    with pytest.raises(MessageRejected) as info:
        parse_dispatch(payload, max_bytes=max_bytes)
    assert reason in info.value.reason
    assert info.value.event_id == event_id
    assert str(info.value) == info.value.reason


FREQUENCY_REJECTIONS: list[tuple[str, bytes, str]] = [
    ("oversize", b'{"t": 1, "hz": 50, "pad": "' + b"x" * 100 + b'"}', "payload too large"),
    ("not utf-8", b'{"t": 1, "hz": 50, "x": "\xc3\x28"}', "not UTF-8"),
    ("bad json", b"{t: 1}", "bad JSON"),
    ("array", b"[1, 50]", "top level must be a JSON object"),
    ("missing t", b'{"hz": 50}', "missing field 't'"),
    ("missing hz", b'{"t": 1}', "missing field 'hz'"),
    ("hz string", b'{"t": 1, "hz": "50"}', "'hz' must be a number, got string"),
    ("hz bool", b'{"t": 1, "hz": true}', "'hz' must be a number, got boolean"),
    ("t bool", b'{"t": false, "hz": 50}', "'t' must be a number, got boolean"),
    ("hz NaN", b'{"t": 1, "hz": NaN}', "NaN is not allowed"),
    ("hz Infinity", b'{"t": 1, "hz": Infinity}', "Infinity is not allowed"),
    ("hz overflow", b'{"t": 1, "hz": 1e400}', "'hz' must be finite"),
    ("hz too low", b'{"t": 1, "hz": 39.99}', "'hz' must be in [40, 70] Hz, got 39.99"),
    ("hz too high", b'{"t": 1, "hz": 70.01}', "'hz' must be in [40, 70] Hz"),
    ("t negative", b'{"t": -1, "hz": 50}', "'t' must be Unix seconds >= 0"),
]


@pytest.mark.parametrize(
    ("payload", "reason"), [pytest.param(p, r, id=name) for name, p, r in FREQUENCY_REJECTIONS]
)
def test_frequency_rejections(payload: bytes, reason: str) -> None:
    max_bytes = 64 if reason == "payload too large" else MAX
    with pytest.raises(MessageRejected) as info:
        parse_frequency(payload, max_bytes=max_bytes)
    assert reason in info.value.reason
    assert info.value.event_id is None


def test_oversize_is_checked_before_decoding() -> None:
    # Invalid UTF-8 *and* too large: the size check must win (no decoding of big payloads).
    with pytest.raises(MessageRejected, match="too large: 5000 bytes > 100"):
        parse_dispatch(b"\xff" * 5000, max_bytes=100)


def test_hz_bounds_inclusive() -> None:
    assert parse_frequency(b'{"t": 0, "hz": 40}', max_bytes=MAX).hz == 40.0
    assert parse_frequency(b'{"t": 0, "hz": 70}', max_bytes=MAX).hz == 70.0


# ---- builders -----------------------------------------------------------------------------------


def test_ack_payload_exact_keys_and_nulls() -> None:
    raw = ack_payload("e1", True, None, 1.5, 1.501, None)
    obj = json.loads(raw)
    assert list(obj) == ["id", "accepted", "reason", "received_at", "commanded_at", "reached_at"]
    assert obj == {
        "id": "e1",
        "accepted": True,
        "reason": None,
        "received_at": 1.5,
        "commanded_at": 1.501,
        "reached_at": None,
    }
    assert b" " not in raw  # compact


def test_ack_payload_rejection_without_id() -> None:
    obj = json.loads(ack_payload(None, False, "bad JSON: x", 2.0, None, None))
    assert obj["id"] is None and obj["accepted"] is False and obj["reason"] == "bad JSON: x"


def test_ack_payload_refuses_nan() -> None:
    with pytest.raises(ValueError):
        ack_payload("e1", True, None, math.nan, None, None)


def test_status_payload_exact_keys() -> None:
    gpu: dict[str, float | str | None] = {
        "index": 0,
        "power_w": 512.1234567,
        "limit_w": 700,
        "default_w": 700,
        "min_w": 200,
        "max_w": 700,
        "extra": 1,
    }
    lost: dict[str, float | str | None] = {**gpu, "index": 1, "fault": "GpuLost"}
    obj = json.loads(status_payload("node-1", True, 1763900000.0, "e1", [gpu, lost]))
    assert list(obj) == ["node", "online", "t", "event", "gpus"]
    assert obj["node"] == "node-1" and obj["online"] is True and obj["event"] == "e1"
    # The v1 keys, in order, then "fault" (an extension: null unless the GPU is failing).
    assert [list(g) for g in obj["gpus"]] == [
        ["index", "power_w", "limit_w", "default_w", "min_w", "max_w", "fault"]
    ] * 2
    assert obj["gpus"][0]["power_w"] == pytest.approx(512.123, abs=1e-3)
    assert obj["gpus"][0]["fault"] is None
    assert obj["gpus"][1]["index"] == 1 and obj["gpus"][1]["fault"] == "GpuLost"
    with pytest.raises(ValueError, match="number"):
        status_payload("n", True, 1.0, None, [{**gpu, "power_w": "lots"}])


def test_status_payload_no_event_and_missing_gpu_key() -> None:
    obj = json.loads(status_payload("n", True, 1.0, None, []))
    assert obj["event"] is None and obj["gpus"] == []
    with pytest.raises(ValueError, match="min_w"):
        status_payload(
            "n",
            True,
            1.0,
            None,
            [{"index": 0, "power_w": 1, "limit_w": 1, "default_w": 1, "max_w": 1}],
        )


def test_offline_payload() -> None:
    assert json.loads(offline_payload("node-1")) == {"node": "node-1", "online": False}
    assert json.loads(offline_payload("node-1", restored=False)) == {
        "node": "node-1", "online": False, "restored": False}


# ---- topics -------------------------------------------------------------------------------------


def test_topics() -> None:
    t = Topics("gridtao/demo", "node-1")
    assert t.frequency == "gridtao/demo/frequency"
    assert t.dispatch == "gridtao/demo/dispatch"
    assert t.ack == "gridtao/demo/nodes/node-1/ack"
    assert t.status == "gridtao/demo/nodes/node-1/status"


@pytest.mark.parametrize(
    ("prefix", "node"),
    [
        ("gridtao/+", "n"),
        ("gridtao/#", "n"),
        ("gridtao//demo", "n"),
        ("/gridtao", "n"),
        ("gridtao/", "n"),
        ("", "n"),
        ("gridtao", ""),
        ("gridtao", "a/b"),
        ("gridtao", "n+"),
        ("gridtao", "#"),
    ],
)
def test_topics_reject_wildcards_and_empty_levels(prefix: str, node: str) -> None:
    with pytest.raises(ValueError):
        Topics(prefix, node)


# ---- fuzzing ------------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
number = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**6), max_value=10**8),
    json_value,
)
dispatch_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=140), json_value),
        "kind": st.one_of(st.sampled_from(["shed", "cap", "release", "dr", "SHED", ""]),
                          json_value),
        "fraction": number,
        "node_w": number,
        "duration_s": number,
        "start_at": number,
        "ramp_s": number,
        "recovery_s": number,
        "reduction_w": number,
        "issued_at": number,
        "ref": st.one_of(st.text(max_size=140), json_value),
        "junk": json_value,
    },
)
frequency_like = st.fixed_dictionaries(
    {}, optional={"t": number, "hz": st.one_of(st.floats(30, 80), number), "junk": json_value}
)


def _check_dispatch_invariants(payload: bytes) -> None:
    try:
        d = parse_dispatch(payload, max_bytes=MAX)
    except MessageRejected as e:
        assert e.reason
        return
    assert isinstance(d.id, str) and 0 < len(d.id) <= ID_MAX_CHARS and d.id.isprintable()
    assert d.issued_at is None or math.isfinite(d.issued_at)
    if isinstance(d, ShedDispatch):
        assert 0 < d.fraction <= 1 and 0 < d.duration_s <= DURATION_MAX_S
    elif isinstance(d, CapDispatch):
        assert 0 < d.node_w <= NODE_W_MAX and 0 < d.duration_s <= DURATION_MAX_S
    elif isinstance(d, ReleaseDispatch):
        assert isinstance(d.ref, str) and 0 < len(d.ref) <= ID_MAX_CHARS
    else:
        assert 0 < d.duration_s <= DURATION_MAX_S
        assert d.start_at is None or d.start_at >= 0
        assert 0 <= d.ramp_s <= DURATION_MAX_S and 0 <= d.recovery_s <= DURATION_MAX_S
        assert (d.reduction_w is None) != (d.fraction is None)
        assert d.reduction_w is None or 0 < d.reduction_w <= NODE_W_MAX
        assert d.fraction is None or 0 < d.fraction <= 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(payload: bytes) -> None:
    _check_dispatch_invariants(payload)
    with contextlib.suppress(MessageRejected):
        parse_frequency(payload, max_bytes=MAX)


@settings(max_examples=400, deadline=None)
@given(dispatch_like)
def test_fuzz_structured_dispatch(obj: dict[str, Any]) -> None:
    _check_dispatch_invariants(json.dumps(obj).encode())


@settings(max_examples=300, deadline=None)
@given(frequency_like)
def test_fuzz_structured_frequency(obj: dict[str, Any]) -> None:
    try:
        f = parse_frequency(json.dumps(obj).encode(), max_bytes=MAX)
    except MessageRejected:
        return
    assert 40 <= f.hz <= 70 and f.t >= 0 and math.isfinite(f.t)
    assert type(f.hz) is float and type(f.t) is float


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["shed", "cap"]),
    st.floats(0.001, 1.0),
    st.floats(1.0, 1e6),
    st.floats(1.0, DURATION_MAX_S),
    st.text(st.characters(codec="utf-8", categories=["L", "N", "P"]), min_size=1, max_size=128),
)
def test_fuzz_valid_round_trip(
    kind: str, fraction: float, node_w: float, duration_s: float, ident: str
) -> None:
    payload = {
        "id": ident,
        "kind": kind,
        "fraction": fraction,
        "node_w": node_w,
        "duration_s": duration_s,
    }
    d = parse_dispatch(enc(payload), max_bytes=1 << 16)
    assert not isinstance(d, ReleaseDispatch)
    assert d.id == ident and d.duration_s == duration_s
    if isinstance(d, ShedDispatch):
        assert d.fraction == fraction
    else:
        assert isinstance(d, CapDispatch) and d.node_w == node_w


def _around(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Numbers inside ``[lo, hi]`` (most draws), on its ends, and just beyond them (one ulp,
    or far)."""
    inside = st.floats(lo, hi)
    return st.one_of(inside, inside, inside, st.sampled_from(
        [lo, hi, math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf), -1.0, hi * 2 + 1]))


def _in(value: float, lo: float, hi: float, *, lo_open: bool) -> bool:
    return (value > lo if lo_open else value >= lo) and value <= hi


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["shed", "cap", "dr"]),
    ident=st.one_of(
        st.text(st.characters(codec="utf-8", categories=["L", "N", "P"]), min_size=1,
                max_size=ID_MAX_CHARS),
        st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "Zs", "Cc"]),
                max_size=ID_MAX_CHARS + 2),
    ),
    duration_s=_around(0.0, DURATION_MAX_S),
    fraction=_around(0.0, 1.0),
    node_w=_around(0.0, NODE_W_MAX),
    by_fraction=st.booleans(),
    ramp_s=st.one_of(st.none(), _around(0.0, DURATION_MAX_S)),
    start_at=st.one_of(st.none(), _around(0.0, 2e9)),
)
def test_fuzz_near_valid_dispatch_is_accepted_exactly_when_in_range(
    kind: str, ident: str, duration_s: float, fraction: float, node_w: float,
    by_fraction: bool, ramp_s: float | None, start_at: float | None,
) -> None:
    """Messages one boundary away from valid, with an independent statement of the contract
    (README.md wire contract v1, docs/products.md for dr) as the oracle: accepted iff every
    field is in range, and what is accepted carries exactly the values sent."""
    body: dict[str, object] = {"id": ident, "kind": kind, "duration_s": duration_s}
    ok = 0 < len(ident) <= ID_MAX_CHARS and ident.isprintable()
    ok = ok and _in(duration_s, 0.0, DURATION_MAX_S, lo_open=True)
    if kind == "shed" or (kind == "dr" and by_fraction):
        body["fraction"] = fraction
        ok = ok and _in(fraction, 0.0, 1.0, lo_open=True)
    else:
        body["reduction_w" if kind == "dr" else "node_w"] = node_w
        ok = ok and _in(node_w, 0.0, NODE_W_MAX, lo_open=True)
    if kind == "dr":
        body |= {"ramp_s": ramp_s, "start_at": start_at}
        ok = ok and (ramp_s is None or _in(ramp_s, 0.0, DURATION_MAX_S, lo_open=False))
        ok = ok and (start_at is None or start_at >= 0)
    event("valid" if ok else "invalid")  # both show in --hypothesis-show-statistics
    try:
        d = parse_dispatch(enc(body), max_bytes=1 << 16)
    except MessageRejected as e:
        assert not ok, f"valid message refused: {e.reason}"
        assert e.reason and e.event_id == ident
        return
    assert ok, f"invalid message accepted: {body}"
    assert d.id == ident and not isinstance(d, ReleaseDispatch) and d.duration_s == duration_s
    if isinstance(d, ShedDispatch):
        assert d.fraction == fraction
    elif isinstance(d, CapDispatch):
        assert d.node_w == node_w
    else:
        assert (d.fraction, d.reduction_w) == ((fraction, None) if by_fraction
                                                else (None, node_w))
        assert d.ramp_s == (ramp_s or 0.0) and d.start_at == start_at


# ---- demand-response events (kind "dr", additive to v1) ----------------------------------------


def dr(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"id": "dr1", "kind": "dr", "start_at": 1763900600.0,
                               "duration_s": 1800, "ramp_s": 60, "recovery_s": 120,
                               "reduction_w": 800}
    base.update(over)
    return base


def test_dr_valid_and_defaults() -> None:
    from gridtao.wire.messages import DrDispatch

    d = parse_dispatch(enc(dr()), max_bytes=MAX)
    assert d == DrDispatch("dr1", 1800.0, 1763900600.0, 60.0, 120.0, 800.0, None, None)
    d = parse_dispatch(enc({"id": "d2", "kind": "dr", "duration_s": 60, "fraction": 0.2}),
                       max_bytes=MAX)
    assert isinstance(d, DrDispatch)
    assert (d.start_at, d.ramp_s, d.recovery_s, d.reduction_w, d.fraction) == (
        None, 0.0, 0.0, None, 0.2)


@pytest.mark.parametrize(("payload", "reason"), [
    (without(dr(), "reduction_w"), "dr needs exactly one of 'reduction_w' or 'fraction'"),
    (dr(fraction=0.1), "dr needs exactly one of 'reduction_w' or 'fraction'"),
    (dr(ramp_s=-1), "field 'ramp_s' must be in [0, 604800] s, got -1"),
    (dr(start_at=-5), "field 'start_at' must be Unix seconds >= 0, got -5"),
    (dr(reduction_w=0), "field 'reduction_w' must be in (0, 1e+07] W, got 0"),
    (without(dr(), "duration_s"), "missing field 'duration_s'"),
    (dr(recovery_s="60"), "field 'recovery_s' must be a number, got string"),
])
def test_dr_rejected(payload: dict[str, object], reason: str) -> None:
    with pytest.raises(MessageRejected) as info:
        parse_dispatch(enc(payload), max_bytes=MAX)
    assert info.value.reason == reason and info.value.event_id == "dr1"


def test_tracker_topic_and_payload() -> None:
    from gridtao.wire.messages import tracker_payload

    assert Topics("gridtao/demo", "n1").tracker == "gridtao/demo/nodes/n1/tracker"
    body = json.loads(tracker_payload("n1", 12.5, {"it_w": 4800.0, "node": "spoof"}))
    assert body == {"it_w": 4800.0, "node": "n1", "t": 12.5}
