"""Test-side name of the local broker helpers (they live in the package for demo and bench)."""

from gridtao.transport.localbroker import (
    BrokerError,
    MosquittoBroker,
    Subscriber,
    find_mosquitto,
    free_port,
    publish,
    running_broker,
)

__all__ = [
    "BrokerError",
    "MosquittoBroker",
    "Subscriber",
    "find_mosquitto",
    "free_port",
    "publish",
    "running_broker",
]
