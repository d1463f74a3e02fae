"""Property tests over the whole configuration schema (gridtao/config/).

The strategies are derived from the dataclasses themselves (``dataclasses.fields``, the type
hints and the ``rng`` ranges in each field's metadata), so a key added to the schema is fuzzed
without touching this file. Whatever the input (right and wrong types, numbers just outside
their range, integers of hundreds or thousands of digits, NaN and infinities, long strings, NUL
and other control characters, unpaired surrogates, nested junk, unknown keys), loading either
returns a :class:`Config` or raises :class:`ConfigError` with one printable line that starts
with the source and names a key path; never any other exception.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridtao.config.agent import Config, ConfigError, config_from_mapping, load_config

SOURCE = "fuzz.yaml"
TOP_KEYS = frozenset(f.name for f in dataclasses.fields(Config) if not f.metadata.get("internal"))
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Integers Python cannot even print (more than 4300 digits), ones a float cannot hold, and the
# edges of 64 bits (built on demand: hypothesis prints its strategies, and such an int has no
# text form).
HUGE_INTS = st.sampled_from(((1, 400), (-1, 400), (1, 5000), (1, 63), (-1, 63))).map(
    lambda sign_exp: sign_exp[0] * 10 ** sign_exp[1] if sign_exp[1] != 63 else sign_exp[0] * 2**63)
ODD_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308)
ODD_STRINGS = ("", " ", "\x00", "a\x00b", "line\nbreak", "\ud800", "tab\there", "\u2028",
               "\x1b[31mred", "x" * 4096, "x" * 4097, "é" * 5000, "+", "#", "a/b", "1.2", "1.3",
               "none", "null", "true", "localhost", "0.0.0.0", "::1", "10.0.0.5")


def _scalar_junk() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), HUGE_INTS,
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(ODD_FLOATS),
        st.text(max_size=20), st.sampled_from(ODD_STRINGS), st.binary(max_size=8),
    )


def _junk() -> st.SearchStrategy[Any]:
    """Anything a parsed file (or a caller) might hand over, nested a little (built once:
    :data:`JUNK`)."""
    return st.recursive(
        _scalar_junk(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.none()), inner,
                            max_size=3),
        ),
        max_leaves=6,
    )


JUNK = _junk()


def _in_range(tp: type, meta: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Numbers of type ``tp`` in the field's range, its edges and just outside them."""
    lo, hi = meta.get("min"), meta.get("max")
    edges: list[float] = []
    for bound in (lo, hi):
        if bound is not None:
            edges += [bound, bound - 1, bound + 1, bound * 1.0000001, bound - 1e-9]
    if tp is int:
        inside: st.SearchStrategy[Any] = st.integers(
            None if lo is None else math.ceil(lo), None if hi is None else math.floor(hi))
        near = [int(e) for e in edges if math.isfinite(e)]
        return st.one_of(inside, st.sampled_from(near) if near else st.nothing())
    inside = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    return st.one_of(inside, st.sampled_from(edges) if edges else st.nothing(),
                     st.integers(-(10**6), 10**6))


def value_strategy(tp: Any, meta: Mapping[str, Any], *, dirty: bool) -> st.SearchStrategy[Any]:
    """Values for a field of type ``tp``: of its type (mostly in range), and with ``dirty``
    also of every other kind. Raises TypeError for a type this walker does not know, so a new
    kind of field fails here rather than going unfuzzed."""
    junk = [JUNK] if dirty else []
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in get_args(tp) if a is not type(None)]
        return st.one_of(st.none(), *(value_strategy(a, meta, dirty=dirty) for a in inner))
    if origin is Literal:
        choices = get_args(tp)
        near = [float(c) if isinstance(c, int) else str(c).upper() for c in choices]
        return st.one_of(st.sampled_from(choices), st.sampled_from(near), *junk)
    if origin is tuple:
        (item, _ellipsis) = get_args(tp)
        items = value_strategy(item, {}, dirty=dirty)
        return st.one_of(st.lists(items, max_size=3), *junk)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return st.one_of(section_strategy(tp, dirty=dirty), *junk)
    if tp is bool:
        return st.one_of(st.booleans(), *junk)
    if tp in (int, float):
        return st.one_of(_in_range(tp, meta), *junk)
    if tp is str:
        return st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(ODD_STRINGS), *junk)
    raise TypeError(f"no strategy for a config field of type {tp!r}")


def section_strategy(cls: type, *, dirty: bool) -> st.SearchStrategy[dict[Any, Any]]:
    """Mappings for dataclass ``cls``: required keys always, the others maybe, and (dirty)
    sometimes an unknown key, including the internal ones."""
    hints = typing.get_type_hints(cls)
    required: dict[Any, st.SearchStrategy[Any]] = {}
    optional: dict[Any, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            if dirty:
                optional[f.name] = JUNK
            continue
        values = value_strategy(hints[f.name], f.metadata, dirty=dirty)
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        (required if missing and not dirty else optional)[f.name] = values
    if dirty:
        for unknown in ("colour", "Host", "port ", "a.b", "\x00", "\ud800", 7, None, True):
            optional[unknown] = JUNK
    return st.fixed_dictionaries(required, optional=optional)


def config_mappings() -> st.SearchStrategy[Any]:
    """Top-level inputs: mostly Config-shaped, well-typed or not; sometimes not a mapping."""
    return st.one_of(section_strategy(Config, dirty=False), section_strategy(Config, dirty=True),
                     JUNK)


MAPPINGS = config_mappings()


def assert_clear_error(message: str, source: str) -> None:
    """One printable line: ``<source>: <key path>: <reason>``, the path from a real key."""
    assert "\n" not in message and "\r" not in message, message
    message.encode("utf-8")  # no unpaired surrogate: the line can be logged and printed
    assert message.startswith(f"{source}: "), message
    rest = message[len(source) + 2:]
    if rest.startswith("<top level>: "):
        return
    first = re.match(r"[a-z_]+(?=[.\[:])", rest)
    if first is not None and first.group() in TOP_KEYS:
        return  # a section's key path: tracker.priorities[0].floor_w
    # A top-level key that is no section (the key itself, quoted unless a plain name).
    assert re.search(r": unknown key \(known keys: gpus, mqtt, ", rest), message


def assert_file_error(message: str, source: str) -> None:
    """A file's error: one printable line starting with the file; a key path unless the text
    is no YAML mapping at all (not UTF-8, NUL bytes, a YAML syntax error)."""
    if re.match(rf"{re.escape(source)}( \(line \d+, column \d+\))?: (not UTF-8 text|contains NUL "
                r"bytes|invalid YAML)\b", message):
        assert "\n" not in message, message
        message.encode("utf-8")
    else:
        assert_clear_error(message, source)


@FUZZ
@given(MAPPINGS)
def test_any_mapping_gives_a_config_or_one_clear_error(data: Any) -> None:
    try:
        cfg = config_from_mapping(data, source=SOURCE)
    except ConfigError as e:
        assert_clear_error(str(e), SOURCE)
    else:
        assert isinstance(cfg, Config) and cfg.source == SOURCE


def _printable_ints(value: Any) -> Any:
    """``value`` with integers PyYAML could not write (over 4300 digits) made smaller (the
    files get theirs as text: see YAML_SNIPPETS)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 10_000:
        return 10**400
    if isinstance(value, list):
        return [_printable_ints(v) for v in value]
    if isinstance(value, dict):
        return {_printable_ints(k): _printable_ints(v) for k, v in value.items()}
    return value


# Text PyYAML's own constructors choke on (ValueError, not YAMLError), control characters,
# escapes of unpaired surrogates, tags and anchors.
YAML_SNIPPETS = (
    "mqtt: {port: " + "9" * 5000 + "}\n",
    "products: [" + "1" * 4400 + "]\n",
    "gpus: {sim: {seed: -" + "7" * 6000 + "}}\n",
    "history: {retention_days: 2024-13-45}\n",
    "2024-02-30: 1\n",
    "mqtt: {port: !!int abc}\n",
    "control: {fast_hz: !!float abc}\n",
    "mqtt: {host: !!binary '???'}\n",
    "mqtt: {host: !!python/object/apply:os.system [true]}\n",
    "mqtt: {host: \"\\ud800\"}\n",
    "mqtt: {host: \"a\\nb\"}\n",
    "\"\\ud800\": 1\n",
    "mqtt: {\"a\\nb\": 1}\n",
    "mqtt:\n  host: a\x01b\n",
    "a: &a [x, x]\nb: &b [*a, *a]\nproducts: *b\n",
    "mqtt: {<<: {port: 5}}\n",
    "tracker: {priorities: !!set {a, b}}\n",
    "safety:\n  triggers:\n  - hz: .nan\n  - hz: -.inf\n",
    "\ufeffmqtt: {port: 1884}\n",
)
DEEP = "x: " + "[" * 3000 + "]" * 3000 + "\n"  # seconds to refuse: not in the fuzzed files
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1")


@st.composite
def config_files(draw: st.DrawFn) -> bytes:
    """A file's bytes: YAML of a generated mapping (or a snippet), perhaps cut short, spliced
    with a snippet or raw bytes, in some encoding; or plain random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    data = _printable_ints(draw(MAPPINGS))
    text = yaml.safe_dump(data, allow_unicode=draw(st.booleans()))
    how = draw(st.sampled_from(("as is", "snippet", "append", "truncate", "splice")))
    if how == "snippet":
        text = draw(st.sampled_from(YAML_SNIPPETS))
    elif how == "append":
        text += draw(st.sampled_from(YAML_SNIPPETS))
    elif how == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    encoding = draw(st.sampled_from(ENCODINGS))
    raw = text.encode(encoding, errors="surrogatepass" if encoding.startswith("utf") else "replace")
    if how == "splice":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    return raw


@FUZZ
@given(config_files())
def test_any_file_gives_a_config_or_one_clear_error(tmp_path_factory: pytest.TempPathFactory,
                                                    raw: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_bytes(raw)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert_file_error(str(e), str(path))
    else:
        assert isinstance(cfg, Config) and cfg.source == str(path)


@pytest.mark.parametrize("snippet", (*YAML_SNIPPETS, DEEP), ids=range(len(YAML_SNIPPETS) + 1))
def test_each_awkward_yaml_text_gives_a_config_or_one_clear_error(tmp_path: Path,
                                                                   snippet: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(snippet, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError as e:
        assert_file_error(str(e), str(path))


@pytest.mark.parametrize(("data", "needle"), [
    ({"mqtt": {"port": 10**5000}}, "mqtt.port: out of range (about 5000 digits)"),
    ({"mqtt": {"host": 10**5000}},
     "mqtt.host: expected a non-empty string, got an integer of about 5000 digits"),
    ({"planner": {"mtu_s": 900.0}}, "planner.mtu_s: must be one of 900, 3600, got 900.0"),
    ({"gpus": {"dry_run": 1, "backend": True}}, "gpus.dry_run: expected true or false"),
    ({"mqtt": {"host": "a\nb"}}, "mqtt.host: contains a control character ('\\n' at character 2)"),
    ({"mqtt": {"host": "\ud800"}}, "mqtt.host: contains an unpaired surrogate"),
    ({"mqtt": {"a\nb": 1}}, "mqtt.'a\\nb': unknown key"),
    ({"mqtt": {10**5000: 1}}, "mqtt.an integer of about 5000 digits: unknown key"),
    ({"mqtt": {"host": "x" * 3000, "port": "y" * 3000}}, "mqtt.port: expected an integer, got "
     "str 'yyy"),
])
def test_awkward_values_are_named_in_one_short_line(data: dict[Any, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_mapping(data, source=SOURCE)
    message = str(exc.value)
    assert needle in message, message
    assert_clear_error(message, SOURCE)
    assert len(message) < 400, message


def test_the_walker_knows_every_field_of_the_schema() -> None:
    """Every field type of every section has a strategy (a new kind of field fails here)."""
    seen: set[type] = set()

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.metadata.get("internal"):
                value_strategy(hints[f.name], f.metadata, dirty=True)
            for arg in (hints[f.name], *get_args(hints[f.name])):
                if isinstance(arg, type) and dataclasses.is_dataclass(arg):
                    walk(arg)

    walk(Config)
    assert len(seen) > 15  # every section, and the list items (triggers, keys, products, ...)
