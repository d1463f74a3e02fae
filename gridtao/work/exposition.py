"""One scrape of a Prometheus text endpoint: fetch it over HTTP within a deadline, parse it with
prometheus_client's parser and pick out the work counters of the source's kind.

Which counters each kind reads (docs/sources.md, "Work sources", cites each server's reference):

* ``vllm``: ``vllm:generation_tokens_total`` and ``vllm:prompt_tokens_total`` (counters);
* ``sglang``: ``sglang:generation_tokens_total`` and ``sglang:prompt_tokens_total`` (counters);
* ``tgi``: the sums of the histograms ``tgi_request_generated_tokens`` and
  ``tgi_request_input_length`` (``..._sum``: tokens of the finished requests; TGI exports no
  token counter, and writes these only once it has served a request);
* ``nim``: ``generation_tokens_total`` and ``prompt_tokens_total`` (counters);
* ``custom``: the counters named in the configuration, one unit each.

Tokens are keyed by the ``model_name`` label ("" without one); series of one counter that
differ only in other labels (vLLM's ``engine``, data-parallel ranks) are summed. Everything here
runs on the calling thread (a work source's scrape thread); nothing is shared.
"""

from __future__ import annotations

import http.client
import math
import socket
import time
import urllib.parse
from collections.abc import Sequence
from typing import NamedTuple

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["KIND_COUNTERS", "MAX_BODY_BYTES", "Counter", "Key", "SourceDown", "SourceGarbage",
           "counters_for", "fetch", "parse"]

#: An exposition larger than this is refused as garbage (a vLLM one is some 100 kB).
MAX_BODY_BYTES = 16 * 1024 * 1024
MODEL_LABEL = "model_name"

#: (model, kind) for token counters: kind "generation" or "prompt"; ("", unit) for custom.
Key = tuple[str, str]


class Counter(NamedTuple):
    """A sample name to read and what it counts: ``kind`` is "generation" or "prompt" for
    tokens (``by_model``: keyed by the model_name label), else the custom counter's unit."""

    sample: str
    kind: str
    by_model: bool = True


KIND_COUNTERS: dict[str, tuple[Counter, ...]] = {
    "vllm": (Counter("vllm:generation_tokens_total", "generation"),
             Counter("vllm:prompt_tokens_total", "prompt")),
    "sglang": (Counter("sglang:generation_tokens_total", "generation"),
               Counter("sglang:prompt_tokens_total", "prompt")),
    "tgi": (Counter("tgi_request_generated_tokens_sum", "generation"),
            Counter("tgi_request_input_length_sum", "prompt")),
    "nim": (Counter("generation_tokens_total", "generation"),
            Counter("prompt_tokens_total", "prompt")),
}


class SourceDown(Exception):
    """The endpoint did not answer in time, refused the connection or answered an error
    status; the message is the reason, one line."""


class SourceGarbage(Exception):
    """The endpoint answered, but not an exposition with the counters expected; the message is
    the reason, one line."""


def counters_for(kind: str, custom: Sequence[str] = ()) -> tuple[Counter, ...]:
    """The counters a source of ``kind`` is read for (``custom``: the names configured)."""
    if kind == "custom":
        return tuple(Counter(name, name.removesuffix("_total"), by_model=False)
                     for name in custom)
    return KIND_COUNTERS[kind]


def fetch(url: str, timeout_s: float, *, max_bytes: int = MAX_BODY_BYTES) -> str:
    """GET ``url`` (``http://`` only) and return its body as text, within about ``timeout_s``
    seconds in all (connect, headers, body; a server trickling its headers may take a little
    longer). Raises :class:`SourceDown` or :class:`SourceGarbage`."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SourceGarbage(f"not an http:// URL: {url!r}")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    deadline = time.monotonic() + timeout_s
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)
    try:
        conn.connect()
        sock = conn.sock
        conn.request("GET", path, headers={"Accept": "text/plain; version=0.0.4",
                                           "User-Agent": "gridtao"})
        _left(sock, deadline, timeout_s)
        resp = conn.getresponse()
        if resp.status != 200:
            raise SourceDown(f"HTTP {resp.status} {resp.reason}".strip())
        body = bytearray()
        while chunk := _read(resp, sock, deadline, timeout_s):
            body += chunk
            if len(body) > max_bytes:
                raise SourceGarbage(f"the exposition is larger than {max_bytes} bytes")
    except TimeoutError:
        raise SourceDown(f"no answer within {timeout_s:g} s") from None
    except ConnectionRefusedError:
        raise SourceDown("connection refused") from None
    except http.client.RemoteDisconnected:
        raise SourceDown("the server closed the connection without answering") from None
    except http.client.HTTPException as e:
        raise SourceGarbage(f"not an HTTP answer ({type(e).__name__})") from None
    except OSError as e:
        raise SourceDown(e.strerror or str(e) or type(e).__name__) from None
    finally:
        conn.close()
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceGarbage(f"not UTF-8 text (byte {e.start})") from None


def _left(sock: socket.socket | None, deadline: float, timeout_s: float) -> None:
    """Bound the socket's next operations by what is left of the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"{timeout_s:g} s")
    if sock is not None:
        sock.settimeout(left)


def _read(resp: http.client.HTTPResponse, sock: socket.socket | None, deadline: float,
          timeout_s: float) -> bytes:
    _left(sock, deadline, timeout_s)
    return resp.read1(65536)


def parse(text: str, counters: Sequence[Counter]) -> dict[Key, float]:
    """The values of ``counters`` in the exposition ``text``, summed per key (see
    :data:`Key`). Raises :class:`SourceGarbage` when the text is not an exposition, a value is
    negative or not finite, or none of the counters is there."""
    wanted = {c.sample: c for c in counters}
    values: dict[Key, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                counter = wanted.get(sample.name)
                if counter is None:
                    continue
                value = float(sample.value)
                if not math.isfinite(value) or value < 0:
                    raise SourceGarbage(f"{sample.name} is {value!r}: a counter is finite "
                                        "and >= 0")
                model = sample.labels.get(MODEL_LABEL, "") if counter.by_model else ""
                key = (model, counter.kind)
                values[key] = values.get(key, 0.0) + value
    except SourceGarbage:
        raise
    except Exception as e:  # the parser raises ValueError, and worse on stranger input
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise SourceGarbage(f"not a Prometheus exposition ({reason})") from None
    if not values:
        names = ", ".join(wanted)
        raise SourceGarbage(f"none of {names} in the exposition (wrong kind or URL?)")
    return values
