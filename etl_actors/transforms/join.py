"""``type: join``: enrich rows from a lookup table (a file or a database table/query).

    - id: enrich
      type: join
      with: {type: file, path: regions.csv}          # format: csv | json | parquet
      # with: {type: database, connection: crm-database, table: regions}   # or query: "SELECT ..."
      on: {country: code}                            # left field: right field; or [shared, names]
      how: left                                      # or inner
      select: [region]                               # right fields to add (default: all non-key)
      refreshSeconds: 300                            # read the lookup again when it is older (streams)

The lookup table is read once per worker (in :meth:`JoinStep.open`, or at the first
batch) and kept in memory; it is never pickled with the step. Rows keep their input
order (several matches of one row: in lookup order), so a replay gives the same
table. With ``refreshSeconds`` the lookup is read again at the first batch after it
got that old (a long-running stream sees changes to its lookup table); a refresh that
fails keeps the table it had and tries again at the next batch. Semantics are SQL's: a null key matches nothing; a key found several times on
the right multiplies the left row (one output row per match); ``how: left`` keeps
unmatched rows with nulls, ``inner`` drops them (they count as filtered). A right
column whose name is already taken on the left gets the suffix ``_right``.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..batch import StepResult
from ..errors import SpecError, TerminalError, TransientError
from ..spec import Section, describe
from ..sources.listing import format_of
from .base import Transform, common_step_fields

_ROW, _RIGHT_ROW = "__etl_row", "__etl_right_row"


@dataclass(frozen=True)
class Lookup:
    """Where the right-hand table comes from: a file (``path``, ``format``) or a
    database (``url`` and a ``table`` or a ``query``)."""

    kind: str
    path: str | None = None
    format: str | None = None
    url: str | None = field(default=None, repr=False)
    table: str | None = None
    query: str | None = None

    @classmethod
    def from_spec(cls, section: Section, ctx) -> "Lookup":
        kind = section.get("type", types=str, choices=("file", "database"))
        if kind == "file":
            path = section.get("path", types=str)
            fmt = section.get("format", format_of(path), types=str, choices=("csv", "json", "parquet"))
            if fmt is None:
                raise SpecError(section.at("format"), f"is required: cannot tell the format of {path!r} "
                                                      "from its name (csv, json or parquet)")
            section.done()
            return cls(kind, path=ctx.resolve_path(path), format=fmt)
        url = ctx.connection(section)
        table, query = section.get("table", None, types=str), section.get("query", None, types=str)
        if (table is None) == (query is None):
            raise SpecError(section.path, "give either 'table' or 'query'")
        section.done()
        return cls(kind, url=url, table=table, query=query)

    def read(self) -> pa.Table:
        return _read_file(self.path, self.format) if self.kind == "file" else _read_database(self)

    def describe(self) -> str:
        if self.kind == "file":
            return f"file {self.path!r}"
        return f"table {self.table!r}" if self.table else "query"


@dataclass(frozen=True)
class JoinStep(Transform):
    """Adds ``select`` columns of the ``lookup`` table where ``left_keys`` equal
    ``right_keys``."""

    id: str
    lookup: Lookup
    left_keys: tuple[str, ...]
    right_keys: tuple[str, ...]
    how: str = "left"
    select: tuple[str, ...] | None = None
    required: bool = True
    refresh_seconds: float | None = None

    type: ClassVar[str] = "join"

    @classmethod
    def from_spec(cls, section, ctx) -> "JoinStep":
        if True in section.data and "on" not in section.data:  # a YAML 1.1 loader read `on:` as true
            section.data["on"] = section.data.pop(True)
        common = common_step_fields(section)
        lookup = Lookup.from_spec(section.section("with"), ctx)
        left_keys, right_keys = _keys(section.get("on"), section.at("on"))
        how = section.get("how", "left", types=str, choices=("left", "inner"))
        select = section.str_list("select", None)
        refresh = section.get("refresh_seconds", None, types=(int, float),
                              check=lambda v: None if v > 0 else f"expected a positive number of seconds, got {v}")
        section.done()
        return cls(lookup=lookup, left_keys=left_keys, right_keys=right_keys, how=how, select=select,
                   refresh_seconds=refresh, **common)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_right", "_read_at")}

    def open(self) -> None:
        """Read the lookup table into memory, afresh for every run (a warm worker must
        not join against last run's lookup)."""
        self._load()

    def _load(self) -> pa.Table:
        right = self._checked(self.lookup.read())
        object.__setattr__(self, "_right", right)
        object.__setattr__(self, "_read_at", time.monotonic())
        return right

    def apply(self, table: pa.Table) -> StepResult:
        missing = [k for k in self.left_keys if k not in table.column_names]
        if missing:
            raise TerminalError(f"step {self.id!r}: join key(s) {', '.join(map(repr, missing))} not found "
                                f"(columns: {', '.join(table.column_names)})", step=self.id)
        right = self._matching_types(self._lookup_table(), table)
        left = table.append_column(_ROW, pa.array(np.arange(table.num_rows)))
        joined = left.join(right, keys=list(self.left_keys), right_keys=list(self.right_keys),
                           join_type="left outer" if self.how == "left" else "inner",
                           right_suffix="_right", use_threads=False)
        order = pc.sort_indices(joined, sort_keys=[(_ROW, "ascending"), (_RIGHT_ROW, "ascending")])
        joined = joined.take(order).drop_columns([_ROW, _RIGHT_ROW])
        return StepResult(joined.select([*table.column_names, *[c for c in joined.column_names
                                                                if c not in table.column_names]]))

    def _lookup_table(self) -> pa.Table:
        right = self.__dict__.get("_right")
        if right is None:
            return self._load()
        age = time.monotonic() - self.__dict__.get("_read_at", 0.0)
        if self.refresh_seconds is not None and age >= self.refresh_seconds:
            try:
                return self._load()
            except Exception:  # noqa: BLE001 - keep joining against the table we have; retried next batch
                return right
        return right

    def _checked(self, right: pa.Table) -> pa.Table:
        wanted = [*self.right_keys, *(self.select or ())]
        missing = [c for c in dict.fromkeys(wanted) if c not in right.column_names]
        if missing:
            raise TerminalError(f"step {self.id!r}: column(s) {', '.join(map(repr, missing))} not in the lookup "
                                f"{self.lookup.describe()} (columns: {', '.join(right.column_names)})", step=self.id)
        select = self.select if self.select is not None else [c for c in right.column_names if c not in self.right_keys]
        right = right.select([*self.right_keys, *[c for c in select if c not in self.right_keys]])
        return right.append_column(_RIGHT_ROW, pa.array(np.arange(right.num_rows)))

    def _matching_types(self, right: pa.Table, left: pa.Table) -> pa.Table:
        """Cast right keys to the left keys' types (a CSV code read as int, say)."""
        for lk, rk in zip(self.left_keys, self.right_keys):
            want, got = left.schema.field(lk).type, right.schema.field(rk).type
            if want != got:
                try:
                    right = right.set_column(right.schema.get_field_index(rk), rk, right[rk].cast(want))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise TerminalError(f"step {self.id!r}: cannot match {lk!r} ({want}) with lookup key "
                                        f"{rk!r} ({got})", step=self.id) from None
        return right


def _keys(on: Any, path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``on`` as (left keys, right keys): a mapping left->right, a list or one name."""
    if isinstance(on, str):
        on = [on]
    if isinstance(on, list) and on and all(isinstance(k, str) for k in on):
        return tuple(on), tuple(on)
    if isinstance(on, dict) and on and all(isinstance(k, str) and isinstance(v, str) for k, v in on.items()):
        return tuple(on), tuple(on.values())
    raise SpecError(path, f"expected a mapping of left field to right field, or a list of shared field names, "
                          f"got {describe(on)}")


def _read_file(path: str, fmt: str) -> pa.Table:
    import pyarrow.csv as csv
    import pyarrow.fs as pafs
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    try:
        if "://" in path:
            fs, inner = pafs.FileSystem.from_uri(path)
            with fs.open_input_file(inner) as handle:
                data = handle.read()
        else:
            with open(path, "rb") as handle:
                data = handle.read()
    except OSError as exc:
        raise TerminalError(f"cannot read lookup file {path!r}: {exc.strerror or exc}") from None
    try:
        if fmt == "parquet":
            return pq.read_table(pa.BufferReader(data))
        if fmt == "csv":
            return csv.read_csv(pa.BufferReader(data))
        if data.lstrip()[:1] == b"[":
            return pa.Table.from_pylist(json.loads(data))
        return pajson.read_json(io.BytesIO(data))
    except (pa.ArrowInvalid, ValueError) as exc:
        raise TerminalError(f"cannot read lookup file {path!r} as {fmt}: {exc}") from None


def _read_database(lookup: Lookup) -> pa.Table:
    import sqlalchemy as sa

    from ..db import db_reason, engine_for, redact

    if lookup.table is not None:
        schema, _, name = lookup.table.rpartition(".")
        statement = sa.select(sa.text("*")).select_from(sa.table(name, schema=schema or None))
    else:
        statement = sa.text(lookup.query)
    try:
        with engine_for(lookup.url).connect() as conn:
            result = conn.execute(statement)
            names, rows = list(result.keys()), result.fetchall()
    except sa.exc.SQLAlchemyError as exc:
        reason = db_reason(exc)
        error = TransientError if isinstance(exc, sa.exc.OperationalError) else TerminalError
        raise error(f"cannot read the lookup {lookup.describe()} from {redact(lookup.url)}: {reason}") from None
    columns = list(zip(*rows)) if rows else [[] for _ in names]
    return pa.table({name: pa.array(list(values)) for name, values in zip(names, columns)})
