"""The window actor's half: merge partials of one shard, emit what the watermark passed.

:class:`WindowState` is a fold of partials (from ``assign.pre_aggregate``) plus the
watermark up to which windows were emitted. Windows are emitted once and forgotten;
a partial arriving afterwards for one of them is dropped and counted (this happens
only when an idle partition resumes behind the global watermark).

An emitted table has ``windowStart``, ``windowEnd`` (int64 epoch ms), the keyBy
fields (their input types), then one column per aggregation in spec order (count and
count_distinct int64, sum int64 or float64, avg float64, min/max the field's type),
rows sorted by window start, then keys. Before any partial was added the types of
keys, sums, minima and maxima are unknown and given as ``null``; afterwards an
empty table has the types seen so far. :func:`result_schema` gives the schema for a
known input schema.
"""
from __future__ import annotations

import zlib

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import TerminalError
from .aggregators import EVENTS, aggregators, states
from .assigners import assigner
from .groups import END, START, fold

SNAPSHOT_VERSION = 1
_COMPACT_AT = 4096     # fold the open partials when their rows pass twice the last fold's plus this


class WindowState:
    """Open windows of one shard; every method is a deterministic fold of its inputs,
    so a state restored from :meth:`snapshot` behaves as the one that took it."""

    def __init__(self, spec):
        self.spec = spec
        self.emitted_watermark: int | None = None
        self._emitted_through: int | None = None   # the greatest end + allowed lateness emitted
        self._open: list[pa.Table] = []            # partials, maybe several rows per window and key
        self._rows = 0
        self._folded = True                        # _open is one row per (window, key)
        self._folded_rows = 0                      # rows after the last fold: when to fold again
        self._schema = empty_partial(spec).schema

    def add(self, partial: pa.Table) -> int:
        """Merge ``partial``; return the events dropped because their window was
        already emitted (for a session: because it starts behind the emitted
        watermark by more than the allowed lateness)."""
        self._schema = _unify(self._schema, partial.schema, self.spec)
        late = self._late(partial)
        dropped = int(pc.sum(partial[EVENTS.column].filter(pa.array(late))).as_py() or 0) if late.any() else 0
        kept = partial.filter(pa.array(~late)) if late.any() else partial
        if kept.num_rows:
            self._open.append(kept)
            self._rows += kept.num_rows
            self._folded = False
        if self._rows > 2 * self._folded_rows + _COMPACT_AT:
            self._compact()
        return dropped

    def advance(self, watermark_ms: int | None) -> pa.Table:
        """Emit and forget every window with ``end + allowed lateness <= watermark_ms``."""
        if watermark_ms is None:
            return self._emit(None)
        self.emitted_watermark = _greatest(self.emitted_watermark, watermark_ms)
        return self._emit(watermark_ms - self.spec.allowed_lateness_ms)

    def flush(self) -> pa.Table:
        """Emit every open window (the input ended); events for any of them are late
        from now on."""
        emitted = self._emit(np.iinfo(np.int64).max)
        if self._emitted_through is not None:
            self.emitted_watermark = _greatest(self.emitted_watermark, self._emitted_through)
        return emitted

    def open_windows(self) -> int:
        """Open (window, key) groups."""
        return self._compact().num_rows

    def oldest_open_start(self) -> int | None:
        starts = [pc.min(t[START]).as_py() for t in self._open if t.num_rows]
        return min(starts) if starts else None

    def snapshot(self) -> bytes:
        """The state as zlib-compressed msgpack: plain values, and the open windows as
        an Arrow IPC stream (which keeps every column's type)."""
        document = {"v": SNAPSHOT_VERSION, "emitted": self.emitted_watermark, "through": self._emitted_through,
                    "open": _ipc(self._compact())}
        return zlib.compress(msgpack.packb(document, use_bin_type=True))

    @classmethod
    def restore(cls, spec, data: bytes | None) -> "WindowState":
        """The state a snapshot holds (None: an empty state); ValueError when the
        snapshot is of another version or of a spec with other keys or aggregations."""
        state = cls(spec)
        if data is None:
            return state
        document = msgpack.unpackb(zlib.decompress(data), raw=False)
        if document.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"window state snapshot version {document.get('v')!r}, expected {SNAPSHOT_VERSION}")
        state.emitted_watermark, state._emitted_through = document["emitted"], document["through"]
        table = pa.ipc.open_stream(document["open"]).read_all()
        expected = empty_partial(spec).column_names
        if table.column_names != expected:
            raise ValueError(f"window state of window {spec.id!r} has columns {table.column_names}, "
                             f"expected {expected}: the spec's keyBy or aggregations changed")
        state._schema = table.schema
        state._open, state._rows, state._folded_rows = [table], table.num_rows, table.num_rows
        state._folded = True                       # a snapshot holds folded windows
        return state

    def _late(self, partial: pa.Table) -> np.ndarray:
        if self.emitted_watermark is None or not partial.num_rows:
            return np.zeros(partial.num_rows, dtype=bool)
        bound = partial[START].to_numpy() + 1 if assigner(self.spec).merges else partial[END].to_numpy()
        return bound + self.spec.allowed_lateness_ms <= self.emitted_watermark

    def _emit(self, ends_through: int | None) -> pa.Table:
        """Emit the windows ending at or before ``ends_through`` (None: none)."""
        if ends_through is None or not self._rows:
            return emitted(self._empty(), self.spec)
        table = self._compact() if assigner(self.spec).merges else self._whole()
        ready = table[END].to_numpy() <= ends_through
        if not ready.any():
            return emitted(self._empty(), self.spec)
        rest = table.filter(pa.array(~ready))
        self._open, self._rows = [rest], rest.num_rows
        self._folded_rows = min(self._folded_rows, rest.num_rows)
        windows = fold(table.filter(pa.array(ready)), self.spec, merge=True).cast(self._schema)
        self._emitted_through = _greatest(self._emitted_through,
                                          pc.max(windows[END]).as_py() + self.spec.allowed_lateness_ms)
        return emitted(windows, self.spec)

    def _whole(self) -> pa.Table:
        if len(self._open) == 1:
            return self._open[0]
        try:
            table = pa.concat_tables(self._open, promote_options="permissive") if self._open else self._empty()
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise _type_changed(self.spec, exc) from None
        self._open = [table]
        return table

    def _compact(self) -> pa.Table:
        """Fold the open partials into one row per (window, key) (once: then it is
        the one partial)."""
        if self._folded:
            return self._whole()
        table = fold(self._whole(), self.spec, merge=True) if self._rows else self._empty()
        self._open, self._rows, self._folded_rows = ([table] if table.num_rows else []), table.num_rows, table.num_rows
        self._folded = True
        return table

    def _empty(self) -> pa.Table:
        return self._schema.empty_table()


def empty_partial(spec, input_schema: pa.Schema | None = None) -> pa.Table:
    """A partial with no rows: its types from ``input_schema`` where it has the
    field, else null."""
    def kind(name: str | None) -> pa.DataType:
        if input_schema is None or name not in input_schema.names:
            return pa.null()
        kind = input_schema.field(name).type
        return kind.value_type if pa.types.is_dictionary(kind) else kind

    fields = [(START, pa.int64()), (END, pa.int64()), *((k, kind(k)) for k in spec.key_by)]
    fields += [(s.column, s.type(kind(s.field))) for s in states(spec)]
    return pa.schema(fields).empty_table()


def result_schema(spec, input_schema: pa.Schema | None = None) -> pa.Schema:
    """The schema of every table a WindowState of ``spec`` emits, for input of
    ``input_schema`` (None: unknown, nulls for the key and field types)."""
    return emitted(empty_partial(spec, input_schema), spec).schema


def emitted(windows: pa.Table, spec) -> pa.Table:
    """The emitted form of merged partials: bounds, keys, aggregations, sorted."""
    columns = {START: windows[START], END: windows[END], **{k: windows[k] for k in spec.key_by}}
    columns.update((a.name, a.result(windows)) for a in aggregators(spec))
    table = pa.table(columns)
    if table.num_rows < 2:
        return table
    return table.sort_by([(START, "ascending"), *((k, "ascending") for k in spec.key_by)])


def _unify(schema: pa.Schema, other: pa.Schema, spec) -> pa.Schema:
    try:
        return pa.unify_schemas([schema, other], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _type_changed(spec, exc) from None


def _type_changed(spec, exc: Exception) -> TerminalError:
    return TerminalError(f"window {spec.id!r}: a batch's keys or fields changed type: {exc}", step=spec.id)


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _greatest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)
