"""Where sources, sinks and transforms register by their ``type`` string.

Adding a plugin is one module and one line here. Entries are import paths, so a
plugin's optional dependencies load only when a spec uses it.
"""
from __future__ import annotations

import importlib

from .errors import SpecError

PLUGINS: dict[str, dict[str, str]] = {
    "source": {
        "file": "etl_actors.sources.file:FileSource",
        "s3": "etl_actors.sources.file:FileSource",
        "database": "etl_actors.sources.database:DatabaseSource",
        "kafka": "etl_actors.sources.kafka:KafkaSource",
        "api": "etl_actors.sources.api:ApiSource",
        "postgres-cdc": "etl_actors.sources.postgres_cdc:PostgresCdcSource",
    },
    "transform": {
        "map": "etl_actors.transforms.map:MapStep",
        "filter": "etl_actors.transforms.filter:FilterStep",
        "aggregate": "etl_actors.transforms.aggregate:AggregateStep",
        "join": "etl_actors.transforms.join:JoinStep",
        "function": "etl_actors.transforms.function:FunctionStep",
        "enrich": "etl_actors.transforms.enrich:EnrichStep",
        "validate": "etl_actors.transforms.validate:ValidateStep",
    },
    "sink": {
        "database": "etl_actors.sinks.database:DatabaseSink",
        "data-warehouse": "etl_actors.sinks.warehouse:WarehouseSink",
        "file": "etl_actors.sinks.file:FileSink",
        "s3": "etl_actors.sinks.file:FileSink",
        "kafka": "etl_actors.sinks.kafka:KafkaSink",
        "api": "etl_actors.sinks.api:ApiSink",
    },
}


def lookup(kind: str, type_name: str, path: str) -> type:
    known = PLUGINS[kind]
    if type_name not in known:
        raise SpecError(path, f"{type_name!r} is not one of {', '.join(sorted(known))}")
    module, _, attr = known[type_name].partition(":")
    return getattr(importlib.import_module(module), attr)
