"""The bridge's Prometheus metrics, on an injected registry (tests read them back).

Counters and gauges are written on the bridge's event loop; the Prometheus HTTP thread reads
them at scrape time (prometheus_client's own locks make that safe).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ERROR_LABELS", "BridgeMetrics"]

#: Reasons a VTN exchange failed (``gridtao_openadr_errors_total{reason}``).
ERROR_LABELS: Final = (
    "unreachable",  # no connection, a timeout, a reset
    "http_status",  # an HTTP status other than 200
    "malformed",  # not XML, not OpenADR 2.0b, too large, or empty
    "signature",  # a signed reply whose signature or fingerprint does not check
    "vtn_refused",  # an OpenADR response code other than 200
    "not_registered",  # the registration gave no registration or VEN id
    "bad_event",  # an event the bridge cannot read (a field missing or out of range)
    "bad_status",  # a node status payload that is not one
)


class BridgeMetrics:
    """``gridtao_openadr_*``: errors by reason, events by outcome, refusals by reason,
    dispatches by kind, node acks, registration state and the site as the bridge sees it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.errors = Counter(
            "gridtao_openadr_errors", "VTN exchanges or inputs that failed, by reason",
            ["reason"], registry=registry)
        self.events = Counter(
            "gridtao_openadr_events", "OpenADR event versions handled, by result "
            "(opt_in, opt_out, cancelled, completed, duplicate)", ["result"], registry=registry)
        self.refusals = Counter(
            "gridtao_openadr_refusals", "Events or modifications opted out of, by reason",
            ["reason"], registry=registry)
        self.dispatches = Counter(
            "gridtao_openadr_dispatches", "gridtao dispatches published, by kind (dr, release)",
            ["kind"], registry=registry)
        self.node_acks = Counter(
            "gridtao_openadr_node_acks", "Node acks of the bridge's dispatches, by result "
            "(accepted, refused)", ["result"], registry=registry)
        self.registered = Gauge(
            "gridtao_openadr_registered", "1 while the VEN is registered with the VTN",
            registry=registry)
        self.polls = Counter(
            "gridtao_openadr_polls", "Polls of the VTN that got an answer", registry=registry)
        self.reports = Counter(
            "gridtao_openadr_report_samples", "Report samples handed to the VTN client, by "
            "data point", ["point"], registry=registry)
        self.nodes = Gauge(
            "gridtao_openadr_nodes", "Nodes whose status is online and fresh", registry=registry)
        self.site_power = Gauge(
            "gridtao_openadr_site_it_watts", "Measured IT power summed over those nodes, W",
            registry=registry)
        for reason in ERROR_LABELS:
            self.errors.labels(reason)  # exported at 0 from the start

    def error(self, reason: str) -> None:
        self.errors.labels(reason).inc()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's value (0 when absent): for tests and the log."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else float(found)
