"""Checks of a whole pipeline that no single plugin can make alone, run by the spec
parser once every part is built (so ``validate`` reports them with their paths).

- The transformation chain is tried on an empty table with the source's schema, where
  the source can tell it cheaply (declared columns, a file's header or footer): an
  expression that can only fail at run time (a string column compared with a number)
  fails here instead, naming its path.
- A sink must not write where its own source reads (a file sink inside the source's
  folder would re-ingest its own output on every run).
"""
from __future__ import annotations

from typing import Any, Sequence

import pyarrow as pa

from .columns import empty_table
from .errors import SpecError, TerminalError
from .redaction import redact_url

# steps whose output cannot be known without running the user's code or reading lookups
_OPAQUE_STEPS = ("function", "join")
_PROBE_NAME = "part-00000000000000000000"


def check_pipeline(source: Any, steps: Sequence[Any], destination: Any, paths: dict[str, str]) -> list[SpecError]:
    """Every cross-part problem of a built pipeline, each naming its spec path.

    ``paths`` holds the spec paths of ``"source"``, ``"transformations"`` (the list;
    step ``i`` is at ``f"{paths['transformations']}[{i}]"``) and ``"destination"``.
    Parts that failed to build are ``None`` and are skipped.
    """
    return [*_dry_run(source, steps, paths), *_reads_own_output(source, destination, paths)]


def _schema(source: Any) -> pa.Schema | None:
    """The source's schema if it can tell it; a failure to tell is no answer."""
    try:
        return source.schema()
    except Exception:  # noqa: BLE001 - a schema is a bonus: the run reports read errors
        return None


def _dry_run(source: Any, steps: Sequence[Any], paths: dict[str, str]) -> list[SpecError]:
    """Run the steps in order on an empty table of the source's schema, up to the
    first step whose output cannot be known; the first failure is a SpecError at the
    failing expression's path (errors carry ``path``) or else at the step's. A step
    marked ``required: false`` may fail: the user said so, and the run then skips it,
    so its failure here is passed over the same way."""
    schema = _schema(source) if source is not None else None
    if not isinstance(schema, pa.Schema):
        return []
    table = empty_table(schema)
    for i, step in enumerate(steps):
        if step is None or step.type in _OPAQUE_STEPS or getattr(step, "opaque", False):
            return []
        try:
            table = _output(step, table)
        except (TerminalError, pa.ArrowException) as exc:
            if not getattr(step, "required", True):
                continue
            path = getattr(exc, "path", None) or f"{paths['transformations']}[{i}]"
            return [SpecError(path, getattr(exc, "reason", None) or str(exc))]
    return []


def _output(step: Any, table: pa.Table) -> pa.Table:
    if step.blocking:
        return step.combine([step.partial(table)])
    return step.apply(table).table


def _reads_own_output(source: Any, destination: Any, paths: dict[str, str]) -> list[SpecError]:
    """A file sink whose files the source would read on its next run."""
    if source is None or destination is None:
        return []
    try:
        folder = destination.writes_files_in()
        reads = bool(folder) and source.would_read(_probe(folder, destination))
    except Exception:  # noqa: BLE001 - an undecidable location is not an error of the spec
        return []
    if not reads:
        return []
    return [SpecError(f"{paths['destination']}.path",
                      f"the file sink writes into {redact_url(folder)!r}, where the source reads: the source would read "
                      "this pipeline's own output again on every run; write to another folder, or narrow the "
                      "source's path or pattern")]


def _probe(folder: str, destination: Any) -> str:
    """A file name the sink could write in ``folder``, with its format's extension."""
    return f"{folder.rstrip('/')}/{_PROBE_NAME}.{getattr(destination, 'format', None) or 'parquet'}"
