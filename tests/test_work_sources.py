"""Work sources (gridtao/work/): real expositions served on loopback ports, scraped over HTTP and
parsed with the Prometheus parser: counters, rates and totals exactly; a dead source, a slow one
(timeout, while the others keep their period), garbage and a server restart; the ``work:``
configuration; and an in-process agent that scrapes a source and serves the metrics.

Waits are generous (a loaded 2-core machine); the one timing test checks periods loosely.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker, Subscriber, publish
from powercap import set_energy, zone
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

from gridtao.app.agent import Agent, AgentOptions
from gridtao.clock import MonotonicClock, VirtualClock
from gridtao.config.agent import ConfigError, config_from_mapping, load_config
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.work import SourceSpec, WorkCollector, WorkScraper, parse
from gridtao.work.exposition import counters_for


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (the timeout test) breaks the pipe: expected


class Exposition:
    """A Prometheus endpoint on a loopback port: answers ``status`` with ``body``; while
    ``slow``, each answer waits until the endpoint is closed. ``times``: when each GET came
    (monotonic s)."""

    def __init__(self) -> None:
        self.body: str | bytes = ""
        self.status = 200
        self.slow = False
        self.times: list[float] = []
        self._release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.times.append(time.monotonic())
                if outer.slow:
                    outer._release.wait(30)
                body = outer.body
                data = body.encode() if isinstance(body, str) else body
                self.send_response(outer.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/metrics"

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def served() -> Iterator[Exposition]:
    ex = Exposition()
    yield ex
    ex.close()


def vllm_body(llama_gen: tuple[float, float], llama_prompt: float, qwen_gen: float) -> str:
    """A vLLM exposition: llama on two engines (summed), qwen on one, plus series gridtao
    ignores (a histogram, a gauge, a counter of another name)."""
    g0, g1 = llama_gen
    return f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="llama"}} 3.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",model_name="llama"}} {llama_prompt}
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",model_name="llama"}} {g0}
vllm:generation_tokens_total{{engine="1",model_name="llama"}} {g1}
vllm:generation_tokens_total{{engine="0",model_name="qwen"}} {qwen_gen}
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="llama"}} 17.0
# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_bucket{{engine="0",le="1.0",model_name="llama"}} 3.0
vllm:iteration_tokens_total_bucket{{engine="0",le="+Inf",model_name="llama"}} 9.0
vllm:iteration_tokens_total_count{{engine="0",model_name="llama"}} 9.0
vllm:iteration_tokens_total_sum{{engine="0",model_name="llama"}} 4242.0
"""


def dead_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


def spec(url: str, name: str = "llm", kind: str = "vllm", **kw: Any) -> SourceSpec:
    return SourceSpec(name=name, url=url, kind=kind, gpus=(0, 1), **kw)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# ---------------------------------------------------------------- counters, rates, totals


def test_counters_rates_and_totals_of_a_served_vllm_exposition(served: Exposition) -> None:
    clock = VirtualClock(100.0)
    scraper = WorkScraper([spec(served.url)], clock=clock)
    registry = CollectorRegistry()
    WorkCollector(scraper.snapshots, scraper.now, registry=registry)
    served.body = vllm_body((1000.0, 500.0), 4000.0, 70.0)
    first = scraper.scrape("llm")
    assert first.health == "ok" and first.reason == "" and first.last_success_s == 100.0
    assert first.values == {("llama", "generation"): 1500.0, ("llama", "prompt"): 4000.0,
                            ("qwen", "generation"): 70.0}
    assert first.totals == first.values and first.rates == {}  # one scrape: no rate yet
    clock.advance(5.0)
    served.body = vllm_body((1400.0, 600.0), 6000.0, 70.0)
    second = scraper.scrape("llm")
    assert second.rates == {("llama", "generation"): 100.0, ("llama", "prompt"): 400.0,
                            ("qwen", "generation"): 0.0}
    assert second.totals == {("llama", "generation"): 2000.0, ("llama", "prompt"): 6000.0,
                             ("qwen", "generation"): 70.0}
    assert second.scrapes == 2 and second.resets == 0
    clock.advance(2.5)
    assert value(registry, "gridtao_work_tokens_total", source="llm", model="llama",
                 kind="generation") == 2000.0
    assert value(registry, "gridtao_work_tokens_total", source="llm", model="llama",
                 kind="prompt") == 6000.0
    assert value(registry, "gridtao_work_tokens_total", source="llm", model="qwen",
                 kind="generation") == 70.0
    assert value(registry, "gridtao_work_source_up", source="llm") == 1.0
    assert value(registry, "gridtao_work_scrape_age_seconds", source="llm") == 2.5
    assert len(served.times) == 2


def test_a_counter_going_down_is_a_restart_its_rate_skipped_and_totals_go_on(
    served: Exposition,
) -> None:
    clock = VirtualClock()
    scraper = WorkScraper([spec(served.url)], clock=clock)
    totals, rates = [], []
    for gen in (1000.0, 1500.0, 200.0, 500.0):  # the server restarts between 1500 and 200
        served.body = vllm_body((gen, 0.0), 10.0, 5.0)
        snap = scraper.scrape("llm")
        totals.append(snap.totals[("llama", "generation")])
        rates.append(snap.rates.get(("llama", "generation")))
        clock.advance(2.0)
    assert totals == [1000.0, 1500.0, 1700.0, 2000.0]
    assert rates == [None, 250.0, None, 150.0]
    assert snap.resets == 1
    assert snap.rates[("llama", "prompt")] == 0.0  # counters that did not go down keep theirs


@pytest.mark.parametrize(("kind", "counters", "text", "expected"), [
    ("sglang", (), """# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 7.56e+06
sglang:prompt_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 8.13e+06
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28
""", {("meta-llama/Llama-3.1-8B-Instruct", "generation"): 7560000.0,
      ("meta-llama/Llama-3.1-8B-Instruct", "prompt"): 8130000.0}),
    ("tgi", (), """# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="10"} 3
tgi_request_generated_tokens_bucket{le="+Inf"} 5
tgi_request_generated_tokens_sum 812
tgi_request_generated_tokens_count 5
tgi_request_input_length_sum 2048
tgi_request_input_length_count 5
tgi_request_count 5
""", {("", "generation"): 812.0, ("", "prompt"): 2048.0}),
    ("nim", (), """# TYPE generation_tokens_total counter
generation_tokens_total{model_name="meta/llama-3.1-8b-instruct"} 42
prompt_tokens_total{model_name="meta/llama-3.1-8b-instruct"} 420
num_requests_running{model_name="meta/llama-3.1-8b-instruct"} 1
""", {("meta/llama-3.1-8b-instruct", "generation"): 42.0,
      ("meta/llama-3.1-8b-instruct", "prompt"): 420.0}),
    ("custom", ("train_samples_total", "train_steps"), """# TYPE train_samples_total counter
train_samples_total{rank="0"} 100
train_samples_total{rank="1"} 50
# TYPE train_steps untyped
train_steps 7
train_loss 0.3
""", {("", "train_samples"): 150.0, ("", "train_steps"): 7.0}),
], ids=["sglang", "tgi", "nim", "custom"])
def test_each_kind_reads_its_own_counters(kind: str, counters: tuple[str, ...], text: str,
                                          expected: dict[tuple[str, str], float]) -> None:
    assert parse(text, counters_for(kind, counters)) == expected


def test_custom_counters_are_exported_as_units(served: Exposition) -> None:
    scraper = WorkScraper([spec(served.url, name="trainer", kind="custom",
                                counters=("train_samples_total",))], clock=VirtualClock())
    registry = CollectorRegistry()
    WorkCollector(scraper.snapshots, scraper.now, registry=registry)
    served.body = "# TYPE train_samples_total counter\ntrain_samples_total 1234\n"
    assert scraper.scrape("trainer").health == "ok"
    assert value(registry, "gridtao_work_units_total", source="trainer",
                 unit="train_samples") == 1234.0
    assert value(registry, "gridtao_work_tokens_total", source="trainer", model="",
                 kind="train_samples") is None


# ---------------------------------------------------------------- down, garbage, slow


def test_subscribers_get_each_successful_scrape_with_its_wall_time(served: Exposition) -> None:
    clock = VirtualClock(100.0, wall_offset=1_763_900_000.0)
    scraper = WorkScraper([spec(served.url), spec(dead_url(), name="dead")], clock=clock)
    got: list[tuple[object, ...]] = []
    scraper.subscribe(lambda *args: got.append(args))
    served.body = vllm_body((1000.0, 500.0), 4000.0, 70.0)
    scraper.scrape("llm")
    scraper.scrape("dead")  # a failed scrape hands nothing on
    (wall, name, kind, gpus, values), = got
    assert (wall, name, kind) == (1_763_900_100.0, "llm", "vllm")
    assert gpus == spec(served.url).gpus
    assert values == {("llama", "generation"): 1500.0, ("llama", "prompt"): 4000.0,
                      ("qwen", "generation"): 70.0}


def test_a_dead_source_is_down_said_once_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    scraper = WorkScraper([spec(dead_url(), name="dead")], clock=VirtualClock())
    registry = CollectorRegistry()
    WorkCollector(scraper.snapshots, scraper.now, registry=registry)
    assert value(registry, "gridtao_work_source_up", source="dead") == 0.0  # not scraped yet
    with caplog.at_level(logging.INFO, logger="gridtao.work"):
        for _ in range(3):
            snap = scraper.scrape("dead")
    assert (snap.health, snap.reason, snap.scrapes) == ("down", "connection refused", 3)
    assert snap.last_success_s is None and snap.totals == {}
    lines = [r for r in caplog.records if r.name == "gridtao.work"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "work source dead (vllm at http://127.0.0.1:" in lines[0].getMessage()
    assert "is down: connection refused" in lines[0].getMessage()
    assert value(registry, "gridtao_work_source_up", source="dead") == 0.0
    age = value(registry, "gridtao_work_scrape_age_seconds", source="dead")
    assert age is not None and math.isnan(age)


def test_an_error_status_is_down_and_the_source_comes_back(
    served: Exposition, caplog: pytest.LogCaptureFixture,
) -> None:
    scraper = WorkScraper([spec(served.url)], clock=VirtualClock())
    served.status = 503
    with caplog.at_level(logging.INFO, logger="gridtao.work"):
        assert scraper.scrape("llm").reason == "HTTP 503 Service Unavailable"
        assert scraper.scrape("llm").health == "down"
        served.status, served.body = 200, vllm_body((5.0, 5.0), 1.0, 1.0)
        assert scraper.scrape("llm").health == "ok"
        assert scraper.scrape("llm").health == "ok"
    said = [r.getMessage() for r in caplog.records if r.name == "gridtao.work"]
    assert len(said) == 2
    assert said[0].endswith("is down: HTTP 503 Service Unavailable; skipped until it answers")
    assert said[1].endswith(": back")


@pytest.mark.parametrize(("body", "reason"), [
    ("<html><body>It works!</body></html>\n", "not a Prometheus exposition ("),
    ("# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total 3.5\n",
     "none of vllm:generation_tokens_total, vllm:prompt_tokens_total in the exposition"),
    ('vllm:generation_tokens_total{model_name="m"} -5\n',
     "vllm:generation_tokens_total is -5.0: a counter is finite and >= 0"),
    ('vllm:generation_tokens_total{model_name="m"} NaN\n', "vllm:generation_tokens_total is nan"),
    (b"vllm:generation_tokens_total 1\n\xff\xfe\n", "not UTF-8 text (byte 31)"),
], ids=["html", "other-metrics", "negative", "nan", "not-utf8"])
def test_garbage_is_reported_and_skipped_and_totals_are_kept(
    served: Exposition, body: str | bytes, reason: str, caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    scraper = WorkScraper([spec(served.url)], clock=clock)
    registry = CollectorRegistry()
    WorkCollector(scraper.snapshots, scraper.now, registry=registry)
    served.body = vllm_body((100.0, 0.0), 10.0, 1.0)
    scraper.scrape("llm")
    clock.advance(5.0)
    served.body = body
    with caplog.at_level(logging.WARNING, logger="gridtao.work"):
        bad = scraper.scrape("llm")
        scraper.scrape("llm")
    assert bad.health == "garbage" and reason in bad.reason
    assert bad.totals[("llama", "generation")] == 100.0 and bad.last_success_s == 0.0
    assert len([r for r in caplog.records if r.name == "gridtao.work"]) == 1
    assert "returns garbage" in caplog.records[0].getMessage()
    assert value(registry, "gridtao_work_source_up", source="llm") == 0.0
    assert value(registry, "gridtao_work_tokens_total", source="llm", model="llama",
                 kind="generation") == 100.0
    assert value(registry, "gridtao_work_scrape_age_seconds", source="llm") == 5.0
    clock.advance(5.0)
    served.body = vllm_body((300.0, 0.0), 10.0, 1.0)
    good = scraper.scrape("llm")  # the rate spans the garbage: over the last two successes
    assert good.health == "ok" and good.rates[("llama", "generation")] == 20.0
    assert good.totals[("llama", "generation")] == 300.0


def test_a_slow_source_times_out_on_time(served: Exposition) -> None:
    served.slow = True
    scraper = WorkScraper([spec(served.url, timeout_s=0.3)])
    began = time.monotonic()
    snap = scraper.scrape("llm")
    took = time.monotonic() - began
    assert (snap.health, snap.reason) == ("down", "no answer within 0.3 s")
    assert 0.25 <= took < 1.5, took


def test_a_slow_source_keeps_its_period_and_the_others_go_on() -> None:
    fast, slow = Exposition(), Exposition()
    try:
        fast.body = vllm_body((10.0, 0.0), 1.0, 1.0)
        slow.slow = True
        scraper = WorkScraper([
            spec(fast.url, name="fast", period_s=0.2, timeout_s=0.2),
            spec(slow.url, name="slow", period_s=0.5, timeout_s=0.25),
        ])
        scraper.start()
        time.sleep(3.0)
        scraper.close()
        by_name = {s.spec.name: s for s in scraper.snapshots()}
    finally:
        fast.close()
        slow.close()
    assert by_name["fast"].health == "ok"
    assert (by_name["slow"].health, by_name["slow"].reason) == ("down", "no answer within 0.25 s")
    # On a fixed schedule: ~15 scrapes of the fast source at 0.2 s, ~6 of the slow one at 0.5 s,
    # each slow scrape given up at 0.25 s (never stretching its own period, nor the others').
    fast_gaps = [b - a for a, b in zip(fast.times, fast.times[1:], strict=False)]
    slow_gaps = [b - a for a, b in zip(slow.times, slow.times[1:], strict=False)]
    assert len(fast.times) >= 10, fast.times
    assert 4 <= len(slow.times) <= 8, slow.times
    assert 0.15 <= sum(fast_gaps) / len(fast_gaps) <= 0.3, fast_gaps
    assert 0.4 <= sum(slow_gaps) / len(slow_gaps) <= 0.7, slow_gaps
    assert not any(t.name.startswith("work-") and t.is_alive() for t in threading.enumerate())


# ---------------------------------------------------------------- configuration


def _work(**over: Any) -> dict[str, Any]:
    src: dict[str, Any] = {"name": "llm", "url": "http://127.0.0.1:8000/metrics",
                           "kind": "vllm", "gpus": [0, 1]}
    return {"work": {"sources": [{**src, **over}]}}


def test_a_work_source_is_configured_with_its_defaults() -> None:
    cfg = config_from_mapping(_work(), source="<test>")
    (src,) = cfg.work.sources
    assert (src.name, src.kind, src.gpus, src.period_s, src.timeout_s, src.counters) == (
        "llm", "vllm", (0, 1), 5.0, 1.0, ())
    assert cfg.work.cpu_power.enabled and cfg.work.cpu_power.root == "/sys/class/powercap"


@pytest.mark.parametrize(("over", "message"), [
    ({"url": "https://127.0.0.1/metrics"}, "work.sources[0].url: must be an http:// URL"),
    ({"url": "http://user:pw@127.0.0.1/metrics"}, "work.sources[0].url: must not hold "
     "credentials"),
    ({"url": "http://127.0.0.1:99999/metrics"}, "work.sources[0].url: not a valid URL"),
    ({"kind": "triton"}, "work.sources[0].kind: must be one of 'vllm', 'sglang', 'tgi', 'nim', "
     "'custom', got 'triton'"),
    ({"kind": "custom"}, "work.sources[0].counters: kind custom needs the names"),
    ({"counters": ["x_total"]}, "work.sources[0].counters: only kind custom names its counters"),
    ({"kind": "custom", "counters": ["9lives"]}, "work.sources[0].counters[0]: must start with"),
    ({"kind": "custom", "counters": ["a", "a_total"]}, "work.sources[0].counters[1]: 'a_total' "
     "is listed twice (its unit is 'a')"),
    ({"gpus": []}, "work.sources[0].gpus: list the indices"),
    ({"gpus": [0, -1]}, "work.sources[0].gpus[1]: a GPU index is >= 0, got -1"),
    ({"gpus": [3, 3]}, "work.sources[0].gpus[1]: GPU 3 is listed twice"),
    ({"period_s": 0.01}, "work.sources[0].period_s: must be >= 0.1, got 0.01"),
    ({"timeout_s": 6.0}, "work.sources[0].timeout_s: 6 s is longer than its period_s 5 s"),
    ({"name": "two words"}, "work.sources[0].name: must be printable, without spaces"),
    ({"gpus": None}, "work.sources[0].gpus: expected a list, got nothing (null)"),
])
def test_bad_work_sources_name_file_key_and_problem(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping(_work(**over), source="<test>")
    assert str(err.value).startswith(f"<test>: {message}"), str(err.value)


def test_two_sources_of_one_name_and_a_missing_key_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "gridtao.yaml"
    path.write_text("work:\n  sources:\n"
                    "    - {name: a, url: 'http://h/m', kind: nim, gpus: [0]}\n"
                    "    - {name: a, url: 'http://h/n', kind: nim, gpus: [1]}\n")
    with pytest.raises(ConfigError, match=r"gridtao.yaml: work.sources\[1\].name: two work "
                       "sources are named 'a'"):
        load_config(path)
    path.write_text("work:\n  sources:\n    - {name: a, url: 'http://h/m', kind: nim}\n")
    with pytest.raises(ConfigError, match=r"work.sources\[0\].gpus: required key is missing"):
        load_config(path)
    path.write_text("work:\n  cpu_power: {enabled: maybe}\n")
    with pytest.raises(ConfigError, match=r"work.cpu_power.enabled: expected true or false"):
        load_config(path)


# ---------------------------------------------------------------- in the agent


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_the_agent_scrapes_its_work_source_and_serves_the_metrics(
    mqtt_broker: MosquittoBroker, served: Exposition, tmp_path: Path,
) -> None:
    served.body = vllm_body((100.0, 20.0), 300.0, 0.0)
    rapl = zone(tmp_path / "powercap", "intel-rapl:0", "package-0", 1_000_000)
    cfg = config_from_mapping({
        "gpus": {"sim": {"count": 2, "noise_w": 0.0}},
        "mqtt": {"port": mqtt_broker.port, "node_id": "worker", "prefix": "gridtao/t-work"},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "work": {"sources": [{"name": "llm", "url": served.url, "kind": "vllm", "gpus": [0, 1],
                              "period_s": 0.2, "timeout_s": 0.2}],
                 "cpu_power": {"root": str(tmp_path / "powercap")}},
    }, source="<test work>")
    clock = MonotonicClock()
    agent = Agent(cfg, clock=clock, backend=NvmlBackend(SimNvml.from_config(cfg.gpus.sim, clock)),
                  options=AgentOptions(connect_timeout_s=20.0))
    gen = (("kind", "generation"), ("model", "llama"), ("source", "llm"))
    try:
        agent.start()
        server = agent._metrics_server
        assert server is not None
        port = server.port
        wait_until(lambda: _scrape(port).get(("gridtao_work_tokens_total", gen)) == 120.0,
                   "the agent's first scrape of the work source", timeout_s=15.0)
        served.body = vllm_body((150.0, 20.0), 300.0, 0.0)
        set_energy(rapl, 3_500_000)
        wait_until(lambda: _scrape(port).get(("gridtao_work_tokens_total", gen)) == 170.0,
                   "the next scrape, a period later", timeout_s=15.0)
        wait_until(lambda: _scrape(port).get(("gridtao_cpu_energy_joules_total",
                                              (("package", "package-0"),))) == 2.5,
                   "the CPU energy read on the RAPL timer", timeout_s=15.0)
        samples = _scrape(port)
        assert samples[("gridtao_work_source_up", (("source", "llm"),))] == 1.0
        assert 0.0 <= samples[("gridtao_work_scrape_age_seconds", (("source", "llm"),))] < 5.0
        assert samples[("gridtao_cpu_power_watts", (("package", "package-0"),))] >= 0.0
        # Tier 1 keeps its rate (control.fast_hz 100) while the source is scraped.
        loops = agent.registry.get_sample_value("gridtao_fast_loop_seconds_count") or 0.0
        time.sleep(1.0)
        later = agent.registry.get_sample_value("gridtao_fast_loop_seconds_count") or 0.0
        assert later - loops >= 20, later - loops
    finally:
        agent.close()
    alive = {t.name for t in threading.enumerate() if t.is_alive()}
    assert "work-llm" not in alive and "cpu-power" not in alive


def test_the_agent_keeps_its_loops_with_dead_slow_and_garbage_sources(
    mqtt_broker: MosquittoBroker, tmp_path: Path,
) -> None:
    """Three broken work sources at once (nothing listening, an answer that never comes, bytes
    that are not an exposition): each is reported down, and tier 1 and the island keep their
    pace: a dispatch is cut and acked as on a node with no work sources."""
    slow, garbage = Exposition(), Exposition()
    slow.slow = True
    garbage.body = b"\x00\xff not { an exposition\n" * 50
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/metrics"
    dead.close()  # nothing listens there any more
    sources = [{"name": n, "url": u, "kind": "vllm", "gpus": [0, 1], "period_s": 0.5,
                "timeout_s": 0.4} for n, u in (("dead", dead_url), ("slow", slow.url),
                                                ("junk", garbage.url))]
    cfg = config_from_mapping({
        "gpus": {"sim": {"count": 2, "noise_w": 0.0}},
        "mqtt": {"port": mqtt_broker.port, "node_id": "badwork", "prefix": "gridtao/t-badwork"},
        "metrics": {"enabled": False},
        "work": {"sources": sources},
    }, source="<test bad work>")
    clock = MonotonicClock()
    sim = SimNvml.from_config(cfg.gpus.sim, clock)
    for i in range(2):
        sim.set_demand_w(i, 600.0)
    agent = Agent(cfg, clock=clock, backend=NvmlBackend(sim),
                  options=AgentOptions(connect_timeout_s=20.0, serve_metrics=False))
    try:
        agent.start()
        up = ("gridtao_work_source_up", "source")
        wait_until(lambda: all(agent.registry.get_sample_value(up[0], {up[1]: n}) == 0.0
                               for n in ("dead", "slow", "junk")),
                   "every broken source reported down", timeout_s=15.0)
        loops = agent.registry.get_sample_value("gridtao_fast_loop_seconds_count") or 0.0
        time.sleep(1.0)
        later = agent.registry.get_sample_value("gridtao_fast_loop_seconds_count") or 0.0
        assert later - loops >= 20, later - loops  # alive at its 100 Hz, give or take a lot
        with Subscriber(mqtt_broker.host, mqtt_broker.port, agent.topics.ack) as acks:
            publish(mqtt_broker.host, mqtt_broker.port, agent.topics.dispatch, json.dumps(
                {"id": "w1", "kind": "shed", "fraction": 0.3, "duration_s": 30}).encode(),
                qos=1)
            ack = json.loads(acks.wait(1, 15.0)[0].payload)
        assert ack["accepted"] is True and ack["commanded_at"] is not None
    finally:
        agent.close()
        slow.close()
        garbage.close()
