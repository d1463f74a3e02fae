"""Configuration: YAML into frozen, typed dataclasses.

Every error names the file, the key path and the reason, and is raised as :class:`ConfigError`
(the CLI prints its message and exits with status 2). Keys are validated against the dataclass
fields: unknown keys, wrong types and out-of-range values are all rejected before anything starts.
Ranges live next to each field in ``metadata`` so the schema is the single source of truth.

This module holds the root (:class:`Config`) and its loading: the file read by
:mod:`gridtao.config.yamlfile`, each key checked by :mod:`gridtao.config.schema`, the rules
spanning keys by :mod:`gridtao.config.rules`. Each section's dataclasses live in a module of
their own (gpus, endpoints, control, security, audit, grid, planner, work, site), and each is
re-exported here (``__all__``): importers need not know which module holds a section.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field

from gridtao.config.audit import AuditConfig, JournalConfig
from gridtao.config.control import ControlConfig, FrequencyTrigger, SafetyConfig
from gridtao.config.endpoints import MetricsConfig, MqttConfig, TlsConfig
from gridtao.config.gpus import GpusConfig, SimConfig, SimFault, SimWorkload
from gridtao.config.grid import (
    FacilityConfig,
    GpuPriority,
    ProductConfig,
    ProductKind,
    TrackerConfig,
)
from gridtao.config.planner import HistoryConfig, PlannerConfig
from gridtao.config.rules import (
    MAX_NODE_ID_CHARS,
    check_consistency,
    check_not_another_file,
    is_loopback,
    sim_device_problem,
)
from gridtao.config.schema import ConfigError, build
from gridtao.config.security import AuthConfig, AuthKey, LimitsConfig
from gridtao.config.site import SiteConfig
from gridtao.config.work import CpuPowerConfig, WorkConfig, WorkSource
from gridtao.config.yamlfile import MAX_CONFIG_BYTES, read_yaml_file

__all__ = [
    "ENV_VAR",
    "MAX_CONFIG_BYTES",
    "MAX_NODE_ID_CHARS",
    "AuditConfig",
    "AuthConfig",
    "AuthKey",
    "Config",
    "ConfigError",
    "ControlConfig",
    "CpuPowerConfig",
    "FacilityConfig",
    "FrequencyTrigger",
    "GpuPriority",
    "GpusConfig",
    "HistoryConfig",
    "JournalConfig",
    "LimitsConfig",
    "MetricsConfig",
    "MqttConfig",
    "PlannerConfig",
    "ProductConfig",
    "ProductKind",
    "SafetyConfig",
    "SimConfig",
    "SimFault",
    "SimWorkload",
    "SiteConfig",
    "TlsConfig",
    "TrackerConfig",
    "WorkConfig",
    "WorkSource",
    "config_from_mapping",
    "is_loopback",
    "load_config",
    "read_yaml_file",
    "sim_device_problem",
]

ENV_VAR = "GRIDTAO_CONFIG"

log = logging.getLogger("gridtao.config")


@dataclass(frozen=True)
class Config:
    gpus: GpusConfig = field(default_factory=GpusConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    products: tuple[ProductConfig, ...] = ()
    facility: FacilityConfig = field(default_factory=FacilityConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    work: WorkConfig = field(default_factory=WorkConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    source: str = field(default="<defaults>", metadata={"internal": True})


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load ``path``, else ``$GRIDTAO_CONFIG``, else built-in defaults.

    Raises :class:`ConfigError` naming the file, key path and reason.
    """
    if path is None:
        path = os.environ.get(ENV_VAR) or None
    if path is None:
        return Config()
    where = str(path)
    data = read_yaml_file(path)
    if data is None:
        log.warning("%s is empty: running on the built-in defaults", where)
        data = {}
    return config_from_mapping(data, source=where)


def config_from_mapping(data: object, *, source: str = "<mapping>") -> Config:
    """Validate a parsed mapping (e.g. from YAML) into a :class:`Config`."""
    check_not_another_file(data, source)
    cfg = build(Config, data, source, "")
    check_consistency(cfg, source)
    return dataclasses.replace(cfg, source=source)
