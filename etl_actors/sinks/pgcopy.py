"""PostgreSQL ``COPY ... FROM STDIN`` of an Arrow table: binary, built from Arrow buffers a
column at a time, where the types allow; CSV otherwise. No per-row Python either way.

Binary COPY is PostgreSQL's ``PGCOPY`` format: a header, then per row an int16 field
count and per field an int32 length (-1 for NULL) and the value in network byte order.
A fixed-width column becomes its fields in one numpy record array; a text column gets
its lengths from the Arrow offsets; ``binary_join_element_wise`` lays the fields of
each row side by side. Measured on 2M rows of ten columns (numbers, text, timestamps,
dates, booleans, nulls): 1.2 s in binary against 3.5 s as CSV, conversion included;
the server reads binary faster and the bytes are built twice as fast (0.5 s against 1.0 s).

A table goes in binary when every column pairs its Arrow type with the destination
column's PostgreSQL type as below and its values mean there what they would mean as
text; else, or when a value does not fit (an integer too wide for the column, a
timestamp with nanoseconds), the whole COPY is CSV, which the server converts as it
would any text (and refuses what it refuses, which a caller may retry row by row).

=========================================  =================================================
Arrow                                      PostgreSQL
=========================================  =================================================
bool                                       boolean
integers                                   smallint, integer, bigint (values that fit),
                                           double precision (values up to 2**53), numeric
float64 / float32                          double precision / real (NaN and infinities kept)
string, large_string                       text, varchar, char
timestamp, naive / zoned                   timestamp / timestamp with time zone
(whole microseconds)
date32, date64                             date
decimal128 of precision <= 18              numeric
null                                       any type
=========================================  =================================================

CSV carries zoned timestamps as UTC text (``2024-05-01 12:00:00.000000Z``): Arrow's CSV
writer formats them through the time zone database, 20x slower than naive ones, and
COPY reads both the same.
"""
from __future__ import annotations

import io
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from ..columns import as_array

HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension
TRAILER = b"\xff\xff"

# PostgreSQL's type oids (pg_type.oid)
BOOL, INT8, INT2, INT4, TEXT, FLOAT4, FLOAT8, BPCHAR, VARCHAR = 16, 20, 21, 23, 25, 700, 701, 1042, 1043
DATE, TIMESTAMP, TIMESTAMPTZ, NUMERIC = 1082, 1114, 1184, 1700

_INTEGERS = {INT2: pa.int16(), INT4: pa.int32(), INT8: pa.int64()}
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01, PostgreSQL's epoch, in Unix microseconds
_PG_EPOCH_DAYS = 10_957
_NULL_LENGTH = b"\xff\xff\xff\xff"   # a NULL field: length -1
_NUMERIC_POSITIVE, _NUMERIC_NEGATIVE = 0x0000, 0x4000
_INT64_DIGITS = 19


def column_types(cursor, quoted_table: str, quoted_columns: str) -> list[int]:
    """The PostgreSQL type oids of the table's columns, in the order given (one round
    trip, no rows read)."""
    cursor.execute(f"SELECT {quoted_columns} FROM {quoted_table} LIMIT 0")
    return [column.type_code for column in cursor.description]


def wire_table(table: pa.Table, oids: Sequence[int]) -> pa.Table | None:
    """``table`` with each column in the form :func:`binary_chunks` encodes for the
    PostgreSQL type of the same position; None when a column cannot go in binary."""
    columns = []
    for column, oid in zip(table.columns, oids):
        wired = _wired(column, oid)
        if wired is None:
            return None
        columns.append(wired)
    return pa.table(columns, names=table.column_names)


def binary_chunks(wire: pa.Table, rows: int) -> Iterator[pa.Buffer | bytes]:
    """The COPY data of a :func:`wire_table`: the header, ``rows`` rows at a time, the trailer."""
    yield HEADER
    for offset in range(0, wire.num_rows, rows):
        yield _encoded(wire.slice(offset, rows))
    yield TRAILER


def csv_chunks(table: pa.Table, rows: int) -> Iterator[bytes]:
    """The COPY data of ``table`` as CSV (no header), ``rows`` rows at a time."""
    ready = _csv_ready(table)
    for offset in range(0, ready.num_rows, rows):
        buffer = io.BytesIO()
        pcsv.write_csv(ready.slice(offset, rows), buffer, pcsv.WriteOptions(include_header=False))
        yield buffer.getvalue()


def _csv_ready(table: pa.Table) -> pa.Table:
    """The table with zoned timestamps as UTC text (see the module's docstring)."""
    columns = [_utc_text(c) if pa.types.is_timestamp(c.type) and c.type.tz else c for c in table.columns]
    return pa.table(columns, names=table.column_names)


# --- Arrow to the wire form ------------------------------------------------------------

def _wired(column: pa.ChunkedArray, oid: int) -> pa.Array | None:
    """One column as :func:`_fields` takes it (numbers, bool, binary, fixed-size binary
    or null), None when its Arrow type does not go in binary to the PostgreSQL type."""
    type_ = column.type
    try:
        if pa.types.is_null(type_):
            return as_array(column)
        if pa.types.is_boolean(type_):
            return as_array(column) if oid == BOOL else None
        if pa.types.is_integer(type_) and oid == NUMERIC:
            return _numeric(as_array(pc.cast(column, pa.int64())), _INT64_DIGITS, 0)
        if pa.types.is_integer(type_):
            target = _INTEGERS.get(oid) or (pa.float64() if oid == FLOAT8 else None)
            return None if target is None else as_array(pc.cast(column, target))
        if pa.types.is_floating(type_):
            same = (oid == FLOAT8 and type_ == pa.float64()) or (oid == FLOAT4 and type_ == pa.float32())
            return as_array(column) if same else None
        if pa.types.is_string(type_) or pa.types.is_large_string(type_):
            return as_array(pc.cast(column, pa.binary())) if oid in (TEXT, VARCHAR, BPCHAR) else None
        if pa.types.is_timestamp(type_):
            return _microseconds(column) if oid == (TIMESTAMPTZ if type_.tz else TIMESTAMP) else None
        if pa.types.is_date(type_):
            return _days(column) if oid == DATE else None
        if pa.types.is_decimal128(type_) and type_.precision < _INT64_DIGITS:
            return _numeric(as_array(column), type_.precision, type_.scale) if oid == NUMERIC else None
    except (pa.ArrowInvalid, OverflowError):
        return None  # a value that does not fit: the server says which, reading text
    return None


def _microseconds(column: pa.ChunkedArray) -> pa.Array:
    """Microseconds since PostgreSQL's epoch; a value with nanoseconds raises ArrowInvalid."""
    micros = pc.cast(pc.cast(column, pa.timestamp("us", column.type.tz)), pa.int64())
    return as_array(pc.subtract_checked(micros, _PG_EPOCH_US))


def _days(column: pa.ChunkedArray) -> pa.Array:
    days = pc.cast(pc.cast(column, pa.date32()), pa.int32())
    return as_array(pc.subtract_checked(days, pa.scalar(_PG_EPOCH_DAYS, pa.int32())))


def _numeric(array: pa.Array, precision: int, scale: int) -> pa.Array:
    """An int64 array, or a decimal128 one whose unscaled values fit in int64, as
    ``numeric`` values (fixed-size binary)."""
    if pa.types.is_decimal(array.type):  # the low word of each little-endian int128
        unscaled = np.frombuffer(array.buffers()[1], "<i8", count=2 * (array.offset + len(array)))[2 * array.offset::2]
    else:
        unscaled = array.fill_null(0).to_numpy()
    values = _numeric_values(unscaled, precision, scale)
    binary = pa.Array.from_buffers(pa.binary(values.itemsize), len(array), [None, pa.py_buffer(values)])
    return pc.if_else(array.is_valid(), binary, pa.scalar(None, binary.type)) if array.null_count else binary


def _numeric_values(unscaled: np.ndarray, precision: int, scale: int) -> np.ndarray:
    """``unscaled / 10**scale`` in ``numeric``'s binary form: int16 digit count, weight
    (of the first digit), sign, display scale, then base-10000 digits. Every value has
    the digits the precision and scale allow, zeros included: the server strips them."""
    before = -(-(precision - scale) // 4)  # base-10000 digits before the point
    after = -(-scale // 4)
    digits = max(before + after, 1)
    record = np.zeros(len(unscaled), [("ndigits", ">i2"), ("weight", ">i2"), ("sign", ">u2"), ("dscale", ">i2"),
                                      ("digits", ">i2", (digits,))])
    record["ndigits"], record["weight"], record["dscale"] = digits, before - 1, scale
    record["sign"] = np.where(unscaled < 0, _NUMERIC_NEGATIVE, _NUMERIC_POSITIVE)
    integer, fraction = np.divmod(np.abs(unscaled).astype(np.uint64), 10 ** scale)  # |int64 min| too
    pad = 4 * after - scale  # the zeros that fill the last digit
    for position in range(before + after - 1, before - 1, -1):
        fraction, digit = np.divmod(fraction, 10 ** (4 - pad))
        record["digits"][:, position], pad = digit * 10 ** pad, 0
    for position in range(before - 1, -1, -1):
        integer, record["digits"][:, position] = np.divmod(integer, 10_000)
    return record


# --- the wire form to COPY's bytes -------------------------------------------------------

def _encoded(wire: pa.Table) -> pa.Buffer:
    """The rows of ``wire`` in COPY's binary format: the bytes of one Arrow binary array
    whose element ``i`` is row ``i``."""
    count = _fixed(np.full(wire.num_rows, wire.num_columns, ">i2"))
    rows = pc.binary_join_element_wise(count, *(_fields(as_array(c)) for c in wire.columns), b"")
    offsets = np.frombuffer(rows.buffers()[1], np.int32, count=len(rows) + 1, offset=rows.offset * 4)
    return rows.buffers()[2][offsets[0]:offsets[-1]]


def _fields(array: pa.Array) -> pa.Array:
    """Each value as one binary field: its length and bytes, or -1 for NULL."""
    if pa.types.is_null(array.type):
        return _fixed(np.full(len(array), -1, ">i4"))
    if pa.types.is_binary(array.type):
        offsets = np.frombuffer(array.buffers()[1], np.int32, count=len(array) + 1, offset=array.offset * 4)
        fields = pc.binary_join_element_wise(_fixed(np.diff(offsets).astype(">i4")), array, b"")
        return _nulls_as_fields(fields, array)
    if pa.types.is_fixed_size_binary(array.type):
        values = np.frombuffer(array.buffers()[1], f"V{array.type.byte_width}", count=len(array),
                               offset=array.offset * array.type.byte_width)
    else:
        filled = array.fill_null(False if pa.types.is_boolean(array.type) else 0) if array.null_count else array
        values = filled.to_numpy(zero_copy_only=False)
    record = np.empty(len(values), [("length", ">i4"), ("value", values.dtype.newbyteorder(">"))])
    record["length"], record["value"] = values.dtype.itemsize, values
    return _nulls_as_fields(_fixed(record), array)


def _nulls_as_fields(fields: pa.Array, array: pa.Array) -> pa.Array:
    """``fields`` with the NULL field where ``array`` has no value."""
    return pc.if_else(array.is_valid(), fields, pa.scalar(_NULL_LENGTH, pa.binary())) if array.null_count else fields


def _fixed(values: np.ndarray) -> pa.Array:
    """A binary array of the elements of ``values``, each as its bytes."""
    fixed = pa.Array.from_buffers(pa.binary(values.itemsize), len(values), [None, pa.py_buffer(values)])
    return fixed.cast(pa.binary())


def _utc_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    text = pc.cast(column.cast(pa.timestamp(column.type.unit)), pa.string())
    return pc.binary_join_element_wise(text, pa.scalar("Z"), "")
