"""Schema evolution: one rule for every sink, so that a destination's schema never
depends on which batch lands first.

The rule, applied to each batch before it is written:

- **A batch column the destination lacks is added, nullable**, with the canonical type
  of its family (:func:`canonical`: int64, float64, string, binary, timestamp[us] in
  UTC or naive, ...). A new column is never a key: key fields must already exist.
- **A destination column the batch lacks is written as NULL** (a database column's
  default applies instead, and an upsert leaves it unchanged in existing rows).
- **A column whose type changes is refused**: a :class:`~etl_actors.errors.TerminalError`
  naming the column, the batch (whose id names its file) and both types. With
  ``errorHandling: continue`` too: it is a schema problem, not a row problem.
- **A column without values** (Arrow type ``null``, say an empty CSV column) tells
  nothing about its type: it is written as NULL into an existing column, and it is not
  added until a batch brings values.

Types of one *family* are not a change: every integer width; float, double, real and
decimal; text of any width (and dictionary-encoded text); booleans; timestamps of
any unit (zoned and naive timestamps are two families where the destination records
the difference: Arrow files and PostgreSQL); dates; times; binaries. An integer
written to a number column widens; a nested type is compared field by field. A
destination column of a type outside these families (a database's JSON or UUID, a
user type) is not checked.

This module is pure: destinations describe their columns as :class:`Column` s and
:func:`columns_to_add` applies the rule; :func:`conform` fits an Arrow batch to an
Arrow schema for the sinks that store Arrow types (file sinks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import pyarrow as pa

from ..errors import TerminalError, first_line

# "integer", "number", "text", ... or a tuple for nested types: ("list", item),
# ("struct", ((name, family), ...)), ("map", key, item).
Family = Union[str, tuple]

NULL = "null"


@dataclass(frozen=True)
class Column:
    """A column as the rule sees it: ``family`` None means any batch type is accepted;
    ``shown`` is the type as messages name it."""

    name: str
    family: Family | None
    shown: str


def family(type_: pa.DataType, zones: bool = True) -> Family:
    """The family of an Arrow type; with ``zones`` False zoned and naive timestamps
    are one family (for destinations that cannot tell them apart)."""
    if pa.types.is_dictionary(type_):
        return family(type_.value_type, zones)
    if pa.types.is_timestamp(type_):
        return "timestamp with time zone" if zones and type_.tz else "timestamp"
    if _is_list(type_):
        return "list", family(type_.value_type, zones)
    if pa.types.is_struct(type_):
        return "struct", tuple((f.name, family(f.type, zones)) for f in type_)
    if pa.types.is_map(type_):
        return "map", family(type_.key_type, zones), family(type_.item_type, zones)
    return next((name for name, test in _SCALARS if test(type_)), str(type_))


def _any(*names: str):
    """A test for Arrow types by ``pyarrow.types`` predicate names (those this pyarrow has)."""
    tests = [getattr(pa.types, name) for name in names if hasattr(pa.types, name)]
    return lambda type_: any(test(type_) for test in tests)


_SCALARS = (
    (NULL, _any("is_null")),
    ("boolean", _any("is_boolean")),
    ("integer", _any("is_integer")),
    ("number", _any("is_floating", "is_decimal")),
    ("text", _any("is_string", "is_large_string", "is_string_view")),
    ("binary", _any("is_binary", "is_large_binary", "is_binary_view", "is_fixed_size_binary")),
    ("date", _any("is_date")),
    ("time", _any("is_time")),
)


def accepts(destination: Family | None, batch: Family) -> bool:
    """Whether a destination column of family ``destination`` takes values of family
    ``batch`` without a type change."""
    if destination is None or batch == NULL or destination == batch:
        return True
    if (batch, destination) == ("integer", "number"):
        return True
    if not (isinstance(destination, tuple) and isinstance(batch, tuple)):
        return False
    if destination[0] != batch[0] or len(destination) != len(batch):
        return False
    if destination[0] == "struct":
        return [n for n, _ in destination[1]] == [n for n, _ in batch[1]] and all(
            accepts(d, b) for (_, d), (_, b) in zip(destination[1], batch[1]))
    return all(accepts(d, b) for d, b in zip(destination[1:], batch[1:]))


def columns_to_add(destination: Sequence[Column], batch: Sequence[Column], batch_id: str, where: str,
                   keys: Sequence[str] = ()) -> tuple[Column, ...]:
    """The batch columns the destination must gain (in batch order), by the rule.

    ``where`` names the destination in messages (``table 'people'``). Raises
    TerminalError (with ``column`` and ``batch_id``) when a column's type changes or
    a key field would be a new column."""
    held = {c.name: c for c in destination}
    for column in batch:
        if column.name in held and not accepts(held[column.name].family, column.family):
            raise type_change(column, held[column.name], batch_id, where)
    added = tuple(c for c in batch if c.name not in held and c.family != NULL)
    if new_keys := [c.name for c in added if c.name in keys]:
        raise TerminalError(f"key fields {new_keys} are not columns of {where}; a new column is never a key",
                            column=new_keys[0], batch_id=batch_id)
    return added


def type_change(column: Column, held: Column, batch_id: str, where: str) -> TerminalError:
    """The error for a batch column whose type is not the destination's."""
    return TerminalError(f"column {column.name!r} of batch {batch_id!r} is {column.shown}, but {where} has it as "
                         f"{held.shown}; type changes are refused (schema evolution only adds nullable columns)",
                         column=column.name, batch_id=batch_id)


def canonical(type_: pa.DataType) -> pa.DataType:
    """The type a new column of ``type_`` is stored as: the widest of its family, so
    that the order batches arrive in does not decide it."""
    if pa.types.is_dictionary(type_):
        return canonical(type_.value_type)
    if _is_list(type_):
        return pa.list_(type_.value_field.with_type(canonical(type_.value_type)))
    if pa.types.is_struct(type_):
        return pa.struct([f.with_type(canonical(f.type)) for f in type_])
    if pa.types.is_map(type_):
        return pa.map_(canonical(type_.key_type), canonical(type_.item_type))
    if pa.types.is_timestamp(type_):
        return pa.timestamp("us", "UTC" if type_.tz else None)
    return next((wide for test, wide in _WIDEST if test(type_)), type_)


_WIDEST = (
    (_any("is_integer"), pa.int64()),
    (_any("is_floating"), pa.float64()),
    (_any("is_large_string", "is_string_view"), pa.string()),
    (_any("is_large_binary", "is_binary_view", "is_fixed_size_binary"), pa.binary()),
    (_any("is_date"), pa.date32()),
    (_any("is_time"), pa.time64("us")),
)


def arrow_columns(schema: pa.Schema, zones: bool = True) -> tuple[Column, ...]:
    """An Arrow schema's columns as the rule sees them."""
    return tuple(Column(f.name, family(f.type, zones), str(f.type)) for f in schema)


def evolved(schema: pa.Schema, batch: pa.Schema, batch_id: str, where: str) -> pa.Schema:
    """An Arrow destination schema after the batch: with the batch's new columns
    appended (nullable, canonical types); the same object when nothing is added."""
    added = columns_to_add(arrow_columns(schema), arrow_columns(batch), batch_id, where)
    if not added:
        return schema
    return pa.schema(list(schema) + [pa.field(c.name, canonical(batch.field(c.name).type)) for c in added])


def conform(table: pa.Table, schema: pa.Schema, batch_id: str, where: str) -> pa.Table:
    """The batch as ``schema`` holds it: its columns in schema order, missing ones (and
    columns without values) as nulls, each cast safely to the schema's type. Columns
    not in ``schema`` are dropped. A value that does not convert is refused like a
    type change."""
    return pa.Table.from_arrays([_column(table, f, batch_id, where) for f in schema], schema=schema)


def _column(table: pa.Table, field: pa.Field, batch_id: str, where: str) -> pa.ChunkedArray | pa.Array:
    if field.name not in table.column_names or pa.types.is_null(table.schema.field(field.name).type):
        return pa.nulls(table.num_rows, field.type)
    column = table.column(field.name)
    if column.type == field.type:
        return column
    try:
        return column.cast(field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        first = first_line(exc)
        raise TerminalError(f"column {field.name!r} of batch {batch_id!r} is {column.type}, and a value does not "
                            f"convert to {field.type} as {where} has it: {first}",
                            column=field.name, batch_id=batch_id) from None


def _is_list(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_)
