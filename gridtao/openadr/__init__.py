"""The OpenADR bridge: the facility's VEN (docs/openadr.md).

``gridtao openadr --config FILE`` registers with an OpenADR 2.0b VTN through openleadr's client
(or polls an OpenADR 3.0.1 VTN over plain HTTP), turns its events into signed gridtao ``dr``
dispatches on ``{prefix}/dispatch`` (or opts out by policy), and reports the site's measured
power back. The modules are private; what they offer is exported here. The 2.0b VEN itself
(``_ven``) needs openleadr (extra ``openadr``) and is loaded only when the bridge runs it.
"""

from gridtao.openadr._bridge import Bridge, make_signer, run_bridge
from gridtao.openadr._config import (
    BridgeConfig,
    BridgeMetricsConfig,
    DispatchConfig,
    LevelReduction,
    MappingConfig,
    PolicyConfig,
    ReportsConfig,
    SigningConfig,
    VtnConfig,
    bridge_config_from_mapping,
    load_bridge_config,
)
from gridtao.openadr._events import (
    EventRejected,
    OadrEvent,
    OadrInterval,
    OadrSignal,
    parse_event,
)
from gridtao.openadr._handler import EventHandler, dispatch_id
from gridtao.openadr._mapping import (
    REFUSAL_LABELS,
    Decision,
    PlannedDispatch,
    SiteSnapshot,
    decide,
    interval_reduction,
)
from gridtao.openadr._metrics import ERROR_LABELS, BridgeMetrics
from gridtao.openadr._oadr3 import (
    DISPATCH_TYPES,
    Event3,
    Interval3,
    Program3,
    Report3,
    check_event,
    check_program,
    check_report,
    parse_duration,
    signal_series,
    to_oadr_event,
)
from gridtao.openadr._oadr3_poll import Oadr3Poller, signals_document
from gridtao.openadr._outbox import DispatchOutbox
from gridtao.openadr._site import NodeStatus, SiteView, parse_status

__all__ = [
    "DISPATCH_TYPES",
    "ERROR_LABELS",
    "REFUSAL_LABELS",
    "Bridge",
    "BridgeConfig",
    "BridgeMetrics",
    "BridgeMetricsConfig",
    "Decision",
    "DispatchConfig",
    "DispatchOutbox",
    "Event3",
    "EventHandler",
    "EventRejected",
    "Interval3",
    "LevelReduction",
    "MappingConfig",
    "NodeStatus",
    "Oadr3Poller",
    "OadrEvent",
    "OadrInterval",
    "OadrSignal",
    "PlannedDispatch",
    "PolicyConfig",
    "Program3",
    "Report3",
    "ReportsConfig",
    "SigningConfig",
    "SiteSnapshot",
    "SiteView",
    "VtnConfig",
    "bridge_config_from_mapping",
    "check_event",
    "check_program",
    "check_report",
    "decide",
    "dispatch_id",
    "interval_reduction",
    "load_bridge_config",
    "make_signer",
    "parse_duration",
    "parse_event",
    "parse_status",
    "run_bridge",
    "signal_series",
    "signals_document",
    "to_oadr_event",
]
