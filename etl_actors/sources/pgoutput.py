"""PostgreSQL's ``pgoutput`` logical replication messages, decoded into change rows.

The messages (protocol version 1, text tuple values) are those of the built-in
plugin, documented in the manual's "Logical Replication Message Formats":

    B  begin      final LSN, commit time, xid
    R  relation   id, namespace, name, replica identity, columns (flags, name, type, typmod)
    I  insert     relation id, new tuple
    U  update     relation id, [old key 'K' | old row 'O'], new tuple
    D  delete     relation id, old key 'K' | old row 'O'
    C  commit     flags, commit LSN, end LSN, commit time
    T  truncate   relation ids: a ``t`` row (columns null) per table
    Y type, O origin, M message: read past

A :class:`Decoder` turns the messages of whole transactions into rows, one list of
text values per column (as PostgreSQL prints them), and :func:`to_arrow` types the
columns by their PostgreSQL types. The same typing serves the snapshot, which reads
the tables' values as text, so a row has the same Arrow types whether it came from
the snapshot or from the log.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import TerminalError

PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_I16, _I32, _I64 = struct.Struct("!h"), struct.Struct("!i"), struct.Struct("!q")
_BEGIN = struct.Struct("!qqi")
_COMMIT = struct.Struct("!bqqq")

# PostgreSQL type OIDs -> Arrow types; any other type is carried as its text
_INTEGERS = {20: pa.int64(), 21: pa.int16(), 23: pa.int32(), 26: pa.int64()}
_FLOATS = {700: pa.float32(), 701: pa.float64()}
BOOL, BYTEA, NUMERIC, DATE, TIMESTAMP, TIMESTAMPTZ = 16, 17, 1700, 1082, 1114, 1184


def arrow_type(type_oid: int, typmod: int = -1) -> pa.DataType:
    """The Arrow type a PostgreSQL column becomes (numeric without a declared
    precision, and every type not listed here, stay text)."""
    if type_oid in _INTEGERS:
        return _INTEGERS[type_oid]
    if type_oid in _FLOATS:
        return _FLOATS[type_oid]
    if type_oid == BOOL:
        return pa.bool_()
    if type_oid == BYTEA:
        return pa.binary()
    if type_oid == NUMERIC and typmod >= 4:
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        if 0 < precision <= 38:
            return pa.decimal128(precision, scale)
    if type_oid == DATE:
        return pa.date32()
    if type_oid == TIMESTAMP:
        return pa.timestamp("us")
    if type_oid == TIMESTAMPTZ:
        return pa.timestamp("us", tz="UTC")
    return pa.string()


def typed(values: list, type_oid: int, typmod: int, where: str) -> pa.Array:
    """Text values (None for NULL) as the Arrow array of their column's type; a value
    the type cannot take (PostgreSQL's ``infinity`` dates) is a TerminalError naming
    ``where``."""
    target = arrow_type(type_oid, typmod)
    if target == pa.binary():
        return pa.array([None if v is None else bytes.fromhex(v[2:]) for v in values], pa.binary())
    text = pa.array(values, pa.string())
    if target == pa.string():
        return text
    if target == pa.bool_():
        return pc.equal(text, "t")
    try:
        return pc.cast(text, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TerminalError(f"{where}: a value does not fit {target} ({exc})") from None


@dataclass
class Column:
    name: str
    type_oid: int
    typmod: int
    key: bool


@dataclass
class Relation:
    """A table as the relation message describes it."""

    id: int
    schema: str
    name: str
    identity: str                  # replica identity: d(efault), n(othing), f(ull), i(ndex)
    columns: list[Column]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def keys(self) -> list[str]:
        return [c.name for c in self.columns if c.key]

    @property
    def key_index(self) -> list[int]:
        return [i for i, c in enumerate(self.columns) if c.key]


@dataclass
class Changes:
    """Change rows of one table: each row's values (text, one per column of the
    relation, None for NULL), and per row its op, commit LSN, commit time (µs since
    1970), xid and the LSN of its own WAL record."""

    relation: Relation
    ops: list = field(default_factory=list)
    lsns: list = field(default_factory=list)
    times: list = field(default_factory=list)
    xids: list = field(default_factory=list)
    offsets: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    latest: dict = field(default_factory=dict)      # key -> the index of its last row

    def add(self, op: str, values: list, offset: int, xid: int) -> None:
        self.latest[tuple(values[i] for i in self.relation.key_index)] = len(self.rows)
        self.rows.append(values)
        self.ops.append(op)
        self.lsns.append(None)                   # set at commit
        self.times.append(None)
        self.xids.append(xid)
        self.offsets.append(offset)

    def value(self, index: int, column: str):
        """Row ``index``'s text value of ``column``."""
        at = next(i for i, c in enumerate(self.relation.columns) if c.name == column)
        return self.rows[index][at]


@dataclass
class Transaction:
    xid: int
    final_lsn: int
    commit_ts: int
    rows: list = field(default_factory=list)      # (Changes, row index)


class UnchangedToast:
    """The marker of a TOASTed value an update left unchanged (not sent)."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = UnchangedToast()


class Decoder:
    """Decodes a replication stream's messages in order. Relations are remembered
    across transactions; a column whose type changes raises a TerminalError naming
    the table and the column. Complete transactions accumulate in :attr:`pending`
    (``Changes`` per table) until :meth:`take`."""

    def __init__(self, key_columns=None):
        self.key_columns = key_columns     # table -> its primary key's columns (None: the message's flags)
        self.relations: dict[int, Relation] = {}
        self.types: dict[tuple[str, str], tuple[int, int]] = {}   # (table, column) -> (oid, typmod) first seen
        self.txn: Transaction | None = None
        self.pending: dict[str, Changes] = {}
        self.rows = 0
        self.last_commit: tuple[int, int, int] | None = None    # (commit LSN, end LSN, commit time µs)
        self.skip_until: int = 0       # transactions whose commit LSN is at or before it are left out
        self.keep = None               # (relation, key values, commit LSN) -> bool, or None: keep every row

    def feed(self, data: bytes, offset: int = 0) -> bool:
        """Decode one message; True when it committed a transaction."""
        kind = data[:1]
        if kind == b"B":
            final_lsn, ts, xid = _BEGIN.unpack_from(data, 1)
            self.txn = Transaction(xid, final_lsn, ts)
        elif kind == b"C":
            _, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(data, 1)
            self._commit(commit_lsn, end_lsn, _unix_us(ts))
            return True
        elif kind == b"R":
            self._relation(data)
        elif kind in (b"I", b"U", b"D"):
            self._change(kind, data, offset)
        elif kind == b"T":
            self._truncate(data, offset)
        return False

    def _truncate(self, data: bytes, offset: int) -> None:
        """TRUNCATE: a ``t`` row (every column null) for each table it empties."""
        (count,) = _I32.unpack_from(data, 1)
        for i in range(count):
            (rel_id,) = _I32.unpack_from(data, 6 + 4 * i)
            relation = self.relations[rel_id]
            self._row(relation, "t", [None] * len(relation.columns), offset)

    def _relation(self, data: bytes) -> None:
        (rel_id,) = _I32.unpack_from(data, 1)
        schema, pos = _cstring(data, 5)
        name, pos = _cstring(data, pos)
        identity = chr(data[pos])
        (count,) = _I16.unpack_from(data, pos + 1)
        pos += 3
        columns = []
        for _ in range(count):
            flags = data[pos]
            column, pos = _cstring(data, pos + 1)
            oid, typmod = struct.unpack_from("!Ii", data, pos)
            pos += 8
            columns.append(Column(column, oid, typmod, bool(flags & 1)))
        relation = Relation(rel_id, schema, name, identity, columns)
        keys = self.key_columns(relation.qualified) if self.key_columns is not None else None
        if keys:        # the flags mark the replica identity: every column under FULL, an index's under USING INDEX
            for column in columns:
                column.key = column.name in keys
        for column in columns:
            known = self.types.setdefault((relation.qualified, column.name), (column.type_oid, column.typmod))
            if arrow_type(*known) != arrow_type(column.type_oid, column.typmod):
                raise TerminalError(f"table {relation.qualified!r}: column {column.name!r} changed type "
                                    f"(from {arrow_type(*known)} to {arrow_type(column.type_oid, column.typmod)}); "
                                    "the stream stops here: mirror the change in the destination, then run with "
                                    "--reset to snapshot again", table=relation.qualified, column=column.name)
        known = self.relations.get(rel_id)
        if known is not None and (known.schema, known.name, known.identity, known.columns) == \
                (schema, name, identity, columns):
            return          # sent again unchanged (before a truncate, after an invalidation): the same shape
        self.relations[rel_id] = relation

    def _change(self, kind: bytes, data: bytes, offset: int) -> None:
        (rel_id,) = _I32.unpack_from(data, 1)
        relation = self.relations[rel_id]
        pos = 5
        if kind == b"I":
            new, pos = _tuple(data, pos + 1)
            self._row(relation, "c", new, offset)
            return
        old = None
        if data[pos:pos + 1] in (b"K", b"O"):
            old, pos = _tuple(data, pos + 1)
        if kind == b"D":
            self._row(relation, "d", old, offset)
            return
        new, pos = _tuple(data, pos + 1)
        if old is not None and UNCHANGED in new:      # REPLICA IDENTITY FULL: the old row has the value
            new = [o if n is UNCHANGED else n for n, o in zip(new, old)]
        if UNCHANGED in new:                          # else the key's last image in this batch may have it
            new = self._fill(relation, new)
        if old is not None and relation.keys and _key(relation, old) != _key(relation, new):
            self._row(relation, "d", old, offset)      # the key changed: the old row is gone
        self._row(relation, "u", new, offset)

    def _fill(self, relation: Relation, new: list) -> list:
        changes = self.pending.get(relation.qualified)
        if changes is None or changes.relation is not relation:
            return new
        index = changes.latest.get(tuple(new[i] for i in relation.key_index))
        if index is None or changes.ops[index] == "d":
            return new
        return [p if n is UNCHANGED else n for n, p in zip(new, changes.rows[index])]

    def _row(self, relation: Relation, op: str, values: list, offset: int) -> None:
        txn, table = self.txn, relation.qualified
        changes = self.pending.get(table)
        if changes is not None and changes.relation is not relation:
            self._split(table)                          # the relation changed shape within the batch
            changes = None
        if changes is None:
            changes = self.pending[table] = Changes(relation)
        txn.rows.append((changes, len(changes.ops)))
        changes.add(op, values, offset, txn.xid)

    def _split(self, table: str) -> None:
        """Keep the rows decoded under a relation's earlier shape apart (and first)."""
        changes = self.pending.pop(table)
        self.pending[f"{table}#{len(self.pending)}"] = changes

    def _commit(self, commit_lsn: int, end_lsn: int, ts_us: int) -> None:
        txn, self.txn = self.txn, None
        if txn is None:
            return
        if commit_lsn <= self.skip_until:
            self._drop(txn)
            return
        drop = []
        for changes, index in txn.rows:
            changes.lsns[index], changes.times[index] = commit_lsn, ts_us
            if self.keep is not None and not self.keep(changes.relation, changes, index, commit_lsn):
                drop.append((changes, index))
        if drop:
            self._drop_rows(drop)
        self.rows += len(txn.rows) - len(drop)
        self.last_commit = (commit_lsn, end_lsn, ts_us)

    def _drop(self, txn: Transaction) -> None:
        self._drop_rows(txn.rows)

    def _drop_rows(self, rows) -> None:
        """Take rows out (a transaction already applied, or rows the snapshot has)."""
        by_changes: dict[int, tuple[Changes, set]] = {}
        for changes, index in rows:
            by_changes.setdefault(id(changes), (changes, set()))[1].add(index)
        for changes, indexes in by_changes.values():
            keep = [i for i in range(len(changes.ops)) if i not in indexes]
            for name in ("ops", "lsns", "times", "xids", "offsets", "rows"):
                column = getattr(changes, name)
                setattr(changes, name, [column[i] for i in keep])
            key_index = changes.relation.key_index
            changes.latest = {tuple(row[i] for i in key_index): n for n, row in enumerate(changes.rows)}

    def take(self) -> dict[str, Changes]:
        """The committed changes decoded since the last take, per table."""
        pending, self.pending, self.rows = self.pending, {}, 0
        return {t: c for t, c in pending.items() if c.ops}


def _key(relation: Relation, values: list) -> tuple:
    return tuple(v for c, v in zip(relation.columns, values) if c.key)


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode(), end + 1


def _tuple(data: bytes, pos: int) -> tuple[list, int]:
    """TupleData: the column count, then per column n(ull) | u(nchanged TOAST) | t(ext)."""
    (count,) = _I16.unpack_from(data, pos)
    pos += 2
    values = []
    append = values.append
    for _ in range(count):
        kind = data[pos]
        if kind == 0x74:        # 't'
            (length,) = _I32.unpack_from(data, pos + 1)
            append(data[pos + 5:pos + 5 + length].decode())
            pos += 5 + length
        elif kind == 0x6E:      # 'n'
            append(None)
            pos += 1
        elif kind == 0x75:      # 'u'
            append(UNCHANGED)
            pos += 1
        else:
            raise TerminalError(f"pgoutput: unexpected tuple value kind {chr(kind)!r} (binary mode is not used)")
    return values, pos


def _unix_us(pg_us: int) -> int:
    """PostgreSQL timestamps count µs from 2000-01-01; ours from 1970."""
    return pg_us + 946_684_800_000_000


def to_arrow(changes: Changes) -> pa.Table:
    """One table's change rows as Arrow: ``_op``, ``_table``, ``_lsn``, ``_commitTs``,
    ``_txId``, then the relation's columns, typed. An update's TOASTed value that was
    not sent (unchanged, replica identity not FULL) is listed by name in ``_unchanged``
    (the column itself is null there)."""
    relation, n = changes.relation, len(changes.ops)
    names = ["_op", "_table", "_lsn", "_commitTs", "_txId"]
    arrays = [pa.array(changes.ops, pa.string()),
              pa.array([relation.qualified] * n, pa.string()),
              pa.array(changes.lsns, pa.int64()),
              pa.array(changes.times, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
              pa.array(changes.xids, pa.int64())]
    unchanged = None
    columns = list(zip(*changes.rows)) if n else [()] * len(relation.columns)
    for column, values in zip(relation.columns, columns):
        if UNCHANGED in values:
            unchanged = unchanged or [None] * n
            for i, v in enumerate(values):
                if v is UNCHANGED:
                    unchanged[i] = [*(unchanged[i] or []), column.name]
            values = [None if v is UNCHANGED else v for v in values]
        names.append(column.name)
        arrays.append(typed(values, column.type_oid, column.typmod,
                            f"table {relation.qualified!r} column {column.name!r}"))
    if unchanged is not None:
        names.append("_unchanged")
        arrays.append(pa.array(unchanged, pa.list_(pa.string())))
    return pa.table(arrays, names=names)


def lsn_text(lsn: int | None) -> str | None:
    """An LSN as PostgreSQL writes it (``16/B374D848``)."""
    return None if lsn is None else f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_int(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def pg_time(us: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=us)
