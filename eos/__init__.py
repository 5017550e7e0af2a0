"""eos: exactly-once stream processing on Kafka, in Python.

Job authors need one import::

    from eos import JSON, STRING, Job, Params

    def build(params: Params) -> Job:
        job = Job("running-sum")
        ...

The names are loaded on first use, so `eos.errors`, which every layer of the product
imports, pulls in nothing above it (`__init__.pyi` tells type checkers what they are).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Job": "service.job.api",
    "Params": "service.job.api",
    "Stream": "service.job.api",
    "KeyedStream": "service.job.api",
    "KeyedProcessFunction": "service.job.api",
    "WindowedStream": "service.job.api",
    "Tumbling": "service.eventtime.windows",
    "Hopping": "service.eventtime.windows",
    "Session": "service.eventtime.windows",
    "Sliding": "service.eventtime.windows",
    "Count": "service.eventtime.windows",
    "Serde": "connectors.serdes",
    "SerdeError": "connectors.serdes",
    "JSON": "connectors.serdes",
    "STRING": "connectors.serdes",
    "BYTES": "connectors.serdes",
    "PICKLE": "connectors.serdes",
    "INT32": "connectors.serdes",
    "INT64": "connectors.serdes",
    "FLOAT64": "connectors.serdes",
    "SchemaRegistry": "connectors.registry",
    "Table": "service.job.tables",
    "GroupedTable": "service.job.tables",
    "GlobalTable": "service.job.tables",
    "Change": "service.tables.change",
    "JSON_CODEC": "statestore.codecs",
    "PostgresSink": "connectors.postgres",
    "TransactionalSink": "connectors.two_phase",
    "TwoPhaseCommitSink": "connectors.two_phase",
    "SinkContext": "connectors.two_phase",
    "CommitDeadline": "connectors.two_phase",
    "PICKLE_CODEC": "statestore.codecs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'eos' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
