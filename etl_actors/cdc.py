"""``etl-actors cdc``: the hygiene of change-data-capture pipelines.

``cdc drop PIPELINE`` drops the pipeline's replication slot and publication (an
abandoned slot makes PostgreSQL keep WAL forever) and appends ``WatermarkReset`` to
its log, so a later run snapshots the tables again instead of failing on the missing
slot. ``status`` adds the slot's lag (:func:`cdc_status`).
"""
from __future__ import annotations

from .errors import UsageError


def cdc_source(spec_file: str):
    """The postgres-cdc source of the spec in ``spec_file``."""
    from .spec import parse_file

    source = parse_file(spec_file).source
    if getattr(source, "type", None) != "postgres-cdc":
        raise UsageError(f"{spec_file}: the source is {getattr(source, 'type', None)!r}, not postgres-cdc")
    return source


def drop(pipeline: str, spec_file: str, log_url: str) -> dict:
    """Drop the slot and publication of ``pipeline`` (as ``spec_file`` names them) and
    forget its committed position; what was dropped."""
    from . import events as ev
    from .eventlog import EventLog
    from .events import pipeline_stream

    source = cdc_source(spec_file)
    dropped = source.drop()
    log = EventLog(log_url)
    stream = pipeline_stream(pipeline)
    version = log.version(stream)
    if version:
        log.append(stream, [ev.WatermarkReset(pipeline=pipeline, reason=f"cdc drop: slot {source.slot!r} and "
                                              f"publication {source.publication!r} dropped")], version)
    return {"pipeline": pipeline, "slot": source.slot, "publication": source.publication,
            "slotDropped": dropped["slot"], "publicationDropped": dropped["publication"]}


def cdc_status(source) -> dict:
    """The slot's lag for ``status`` (``{"slot", "lagBytes", "lagSeconds", ...}``), or
    ``{"slot", "error"}`` when the server cannot be asked."""
    try:
        lag = source.slot_lag()
    except Exception as exc:  # noqa: BLE001 - status shows what it can
        from .errors import first_line
        from .redaction import redact_text

        return {"slot": source.slot, "error": redact_text(first_line(exc))}
    return lag if lag is not None else {"slot": source.slot, "exists": False}
