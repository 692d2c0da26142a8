"""The table a database sink writes: created from a batch, reflected, and evolved by
the rule of :mod:`etl_actors.sinks.schema` (a new column is added nullable with
``ALTER TABLE ... ADD COLUMN``).

:func:`column_type` maps an Arrow type to the SQL type a new column gets. The
reflected SQLAlchemy type of a column decides its family (:func:`sql_family`); a type
outside the families (JSON, UUID, user types) is not checked, so tables users create
keep working. SQLite reflects a type name it does not know by its affinity (``UUID`` or
``STRING`` as NUMERIC); such a column, too, is a user type: not checked, and its values
are passed to SQLite as they are.
"""
from __future__ import annotations

from typing import Sequence

import re

import pyarrow as pa
import sqlalchemy as sa

from .schema import NULL, Column, Family, canonical

_FAMILIES = ((sa.Boolean, "boolean"), (sa.Integer, "integer"), ((sa.Float, sa.Numeric), "number"),
             (sa.String, "text"), (sa.DateTime, "timestamp"), (sa.Date, "date"), (sa.Time, "time"),
             (sa.LargeBinary, "binary"))


def column_type(type_: pa.DataType) -> sa.types.TypeEngine:
    """The SQL type an Arrow type is stored as; nested values are stored as JSON text."""
    if pa.types.is_dictionary(type_):
        return column_type(type_.value_type)
    if pa.types.is_boolean(type_):
        return sa.Boolean()
    if pa.types.is_integer(type_):
        wide = type_.bit_width > 32 or (type_.bit_width == 32 and pa.types.is_unsigned_integer(type_))
        return sa.BigInteger() if wide else sa.Integer()
    if pa.types.is_floating(type_):
        return sa.Float(precision=53)
    if pa.types.is_decimal(type_):
        return sa.Numeric(type_.precision, type_.scale)
    if pa.types.is_timestamp(type_):
        return sa.DateTime(timezone=type_.tz is not None)
    if pa.types.is_date(type_):
        return sa.Date()
    if pa.types.is_time(type_):
        return sa.Time()
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        return sa.LargeBinary()
    return sa.Text()


def sql_family(type_: sa.types.TypeEngine, zones: bool) -> Family | None:
    """The family of a SQL type, None outside the known families. ``zones``: whether
    the database records a timestamp's zone (SQLite does not)."""
    if zones and isinstance(type_, sa.DateTime) and type_.timezone:
        return "timestamp with time zone"
    return next((name for kind, name in _FAMILIES if isinstance(type_, kind)), None)


def batch_columns(schema: pa.Schema, zones: bool) -> tuple[Column, ...]:
    """A batch's columns as the rule sees them, each in the family of the SQL type it
    would be stored as (nested values are JSON text)."""
    return tuple(Column(f.name, NULL if pa.types.is_null(f.type) else sql_family(column_type(canonical(f.type)), zones),
                        str(f.type)) for f in schema)


def table_columns(table: sa.Table, dialect: sa.engine.Dialect, zones: bool) -> tuple[Column, ...]:
    """A reflected table's columns as the rule sees them."""
    return tuple(Column(c.name, sql_family(c.type, zones), _shown(c.type, dialect)) for c in table.columns)


def new_table(name: str, schema: str | None, fields: Sequence[pa.Field], keys: Sequence[str]) -> sa.Table:
    """A table of ``fields`` (canonical types), the key fields as its primary key."""
    columns = [sa.Column(f.name, column_type(canonical(f.type)), primary_key=f.name in keys,
                         nullable=f.name not in keys, autoincrement=False) for f in fields]
    return sa.Table(name, sa.MetaData(schema=schema), *columns)


def reflect(conn, name: str, schema: str | None) -> sa.Table | None:
    """The table as the database has it now, None when it does not exist. A SQLite
    column of a type SQLAlchemy does not know gets no type (NullType)."""
    if not sa.inspect(conn).has_table(name, schema=schema):
        return None
    table = sa.Table(name, sa.MetaData(schema=schema), autoload_with=conn)
    for column in _sqlite_user_types(conn, name, schema):
        table.c[column].type = sa.types.NullType()
    return table


def add_column(engine: sa.Engine, name: str, schema: str | None, field: pa.Field) -> None:
    """Add ``field`` as a nullable column, in its own transaction; a column another
    writer added meanwhile is not an error."""
    dialect = engine.dialect
    sql_type = column_type(canonical(field.type)).compile(dialect=dialect)
    column = f"{dialect.identifier_preparer.quote(field.name)} {sql_type}"
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {quoted(dialect, name, schema)} ADD COLUMN {column}", {})
    except sa.exc.DBAPIError:
        with engine.connect() as conn:
            if field.name not in {c["name"] for c in sa.inspect(conn).get_columns(name, schema=schema)}:
                raise  # not a race with another writer adding it


def ensure_unique(conn, name: str, schema: str | None, keys: Sequence[str]) -> None:
    """Upserts need a unique index on the key fields; make one if the table has none."""
    inspector = sa.inspect(conn)
    if set(inspector.get_pk_constraint(name, schema=schema)["constrained_columns"]) == set(keys):
        return
    uniques = inspector.get_unique_constraints(name, schema=schema)
    uniques += [i for i in inspector.get_indexes(name, schema=schema) if i["unique"]]
    if any(set(u["column_names"]) == set(keys) for u in uniques):
        return
    quote = conn.dialect.identifier_preparer.quote
    conn.exec_driver_sql(f"CREATE UNIQUE INDEX {quote(name + '__etl_key')} "
                         f"ON {quoted(conn.dialect, name, schema)} ({', '.join(quote(k) for k in keys)})", {})


def quoted(dialect: sa.engine.Dialect, name: str, schema: str | None) -> str:
    """``name`` (in ``schema``) quoted for SQL text."""
    prep = dialect.identifier_preparer
    return f"{prep.quote_schema(schema)}.{prep.quote(name)}" if schema else prep.quote(name)


def _sqlite_user_types(conn, name: str, schema: str | None) -> frozenset[str]:
    """The columns of a SQLite table declared with a type name SQLAlchemy does not know."""
    if conn.dialect.name != "sqlite":
        return frozenset()
    quote = conn.dialect.identifier_preparer.quote
    rows = conn.exec_driver_sql(f"PRAGMA {quote(schema) + '.' if schema else ''}table_info({quote(name)})")
    known = conn.dialect.ischema_names
    return frozenset(row[1] for row in rows if re.match(r"[\w ]*", row[2].upper()).group(0).strip() not in known)


def _shown(type_: sa.types.TypeEngine, dialect: sa.engine.Dialect) -> str:
    try:
        return type_.compile(dialect=dialect)
    except Exception:  # noqa: BLE001 - a type the dialect cannot render is still named
        return repr(type_)
