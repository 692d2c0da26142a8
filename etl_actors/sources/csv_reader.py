"""The CSV reader of the file source.

The file is streamed with a typed parse, every column with the type of the file's
first block (``columns:`` override; a column of nulls is a string; a column pyarrow
infers as binary because of a byte that is not UTF-8 is a string too: text stays
text). After a conversion error the reader reopens at the current row and reads raw
bytes, casting column by column: rows with a value that is not text, or that does not
convert to its column's type, come back as dead letters, and the other rows load.
Rows with the wrong number of fields are dead letters too.

Every dead letter's record holds ``_file`` (the partition key) and ``_line``, the
row's line in the file with the header as line 1. ``_line`` counts records: it is
exact unless blank lines or quoted values spanning lines come before the row.
"""
from __future__ import annotations

import functools
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from ..batch import DeadLetter
from ..columns import failing_values
from .batching import Rows, Unreadable, block_size, closing_reader, grown_block
from .text import bad_byte, head_problem, label, readable, text_stream

HEAD_BYTES = 1 << 20
COLUMN_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                "timestamp": pa.timestamp("us"), "date": pa.date32()}
_BOM = b"\xef\xbb\xbf"


@functools.cache
def _null_words() -> pa.Array:
    """The CSV reader's null spellings (built on first use: pa.array at import time
    would load pandas into every worker)."""
    return pa.array(pcsv.ConvertOptions().null_values, pa.string())


class CsvReader:
    """Reads one CSV file for a :class:`~etl_actors.sources.file.FileSource`."""

    def __init__(self, source, fs, path: str, partition: str):
        self.source, self.fs, self.path, self.partition = source, fs, path, partition
        self.invalid: dict[int, DeadLetter] = {}
        self.skip, self.typed = 0, True
        with self._stream() as stream:
            self.head = stream.read(HEAD_BYTES)
        self.whole = len(self.head) < HEAD_BYTES
        self.block = block_size(self.head, source.batch_size)
        if problem := head_problem(self.head, source.encoding, self.whole):
            raise Unreadable(problem)

    def schema(self) -> pa.Schema | None:
        """The schema of every batch: the first block's inferred types (see the module
        docstring), or None for a file without a header."""
        if self._blank():
            return None
        while True:
            try:
                return self._inferred()
            except pa.ArrowInvalid as exc:
                self.block = grown_block(self.block, exc, 2)

    def pieces(self, start: int) -> Iterator[Rows]:
        """The file's rows from row ``start`` on (a header-only file has none)."""
        schema = self.schema()
        if schema is None or self._header_only():
            return
        consumed = start
        while True:
            try:
                for piece in self._blocks(schema, consumed):
                    consumed = piece.end
                    yield piece
                break
            except pa.ArrowInvalid as exc:
                self._adapt(exc, consumed)
        if self.invalid:
            yield Rows(consumed, schema.empty_table(), tuple(sorted(self.invalid.items())))

    def _adapt(self, exc: pa.ArrowInvalid, consumed: int) -> None:
        """Switch to casting after a conversion error, or grow the block after a row
        that did not fit; raise anything else."""
        if self.typed and "conversion error" in str(exc):
            self.typed = False
        else:
            self.block = grown_block(self.block, exc, consumed + 2)

    def _blocks(self, schema: pa.Schema, start: int) -> Iterator[Rows]:
        """Rows block by block from row ``start``: parsed as ``schema``, or as bytes then
        cast."""
        raw = pa.schema([(f.name, pa.binary()) for f in schema])
        for batch in self._open(schema if self.typed else raw, start):
            gaps = self._invalid_among(start, batch.num_rows)
            table, rejects = pa.Table.from_batches([batch]), []
            if not self.typed:
                table, reasons = cast_rows(table, schema, label(self.source.encoding))
                rejects = self._letters(pa.Table.from_batches([batch]), reasons, start, gaps)
            rejects += [(i, self.invalid.pop(i)) for i in gaps]
            piece = Rows(start, table, tuple(sorted(rejects, key=lambda r: r[0])))
            start = piece.end
            yield piece

    def _invalid_among(self, first: int, parsed: int) -> list[int]:
        """Rows skipped as invalid inside a block of ``parsed`` rows starting at row
        ``first`` (the parser reads ahead, so they are placed by row number)."""
        end, gaps = first + parsed, []
        for index in sorted(self.invalid):
            if index >= end:
                break
            gaps.append(index)
            end += 1
        return gaps

    def _letters(self, raw: pa.Table, reasons: dict[int, str], first: int, gaps: list[int]) -> list:
        """(row, dead letter) for the parsed rows ``reasons`` names."""
        letters = []
        for i in sorted(reasons):
            row = _row_number(first, i, gaps)
            record = {name: readable(value) for name, value in raw.slice(i, 1).to_pylist()[0].items()}
            letters.append((row, DeadLetter(reasons[i], {**record, "_file": self.partition, "_line": row + 2})))
        return letters

    def _inferred(self) -> pa.Schema:
        declared = {name: COLUMN_TYPES[t] for name, t in self.source.columns}
        options = pcsv.ConvertOptions(column_types=declared)
        source = pa.BufferReader(self._header_line()) if self._header_only() else None
        with (source or self._stream()) as stream, closing_reader(pcsv.open_csv(
                stream, read_options=self._read_options(0), parse_options=self._parse_options(lambda row: "skip"),
                convert_options=options)) as reader:
            schema = reader.schema
        return pa.schema([(f.name, _text_if_untyped(f.type)) for f in schema])

    def _open(self, schema: pa.Schema, skip: int):
        self.skip = skip
        with self._stream() as stream, closing_reader(pcsv.open_csv(
                stream, read_options=self._read_options(skip), parse_options=self._parse_options(self._on_invalid),
                convert_options=pcsv.ConvertOptions(column_types=schema, strings_can_be_null=False))) as reader:
            yield from reader

    def _stream(self):
        stream = self.fs.open_input_stream(self.path, compression="detect")
        return text_stream(stream, self.source.encoding, self.source.on_decode_error)

    def _blank(self) -> bool:
        return self.whole and not self.head.removeprefix(_BOM).strip()

    def _header_only(self) -> bool:
        """Whether the file is at most a header line (pyarrow cannot parse a header
        without its newline)."""
        return self.whole and b"\n" not in self.head.rstrip(b"\r\n")

    def _header_line(self) -> bytes:
        return self.head.rstrip(b"\r\n") + b"\n"

    def _read_options(self, skip: int) -> pcsv.ReadOptions:
        return pcsv.ReadOptions(block_size=self.block, use_threads=False, skip_rows_after_names=skip)

    def _parse_options(self, handler) -> pcsv.ParseOptions:
        return pcsv.ParseOptions(delimiter=self.source.delimiter, invalid_row_handler=handler)

    def _on_invalid(self, row) -> str:
        # Single-threaded parsing numbers rows from 1 at the header, across skips.
        index = row.number - 2 if row.number is not None else -1
        if 0 <= index < self.skip:
            return "skip"
        reason = f"row has {row.actual_columns} fields, expected {row.expected_columns}"
        self.invalid[index] = DeadLetter(reason, {"_row": row.text, "_file": self.partition,
                                                  "_line": row.number})
        return "skip"


def _text_if_untyped(type_: pa.DataType) -> pa.DataType:
    """A column of nulls, or of bytes that are not all UTF-8, is read as text."""
    return pa.string() if pa.types.is_null(type_) or pa.types.is_binary(type_) else type_


def _row_number(first: int, parsed: int, gaps: list[int]) -> int:
    """The row of the ``parsed``-th parsed row of a block starting at row ``first``,
    given the (sorted) invalid rows skipped inside it."""
    row = first + parsed
    for gap in gaps:
        if gap <= row:
            row += 1
    return row


def cast_rows(table: pa.Table, schema: pa.Schema, encoding: str = "UTF-8") -> tuple[pa.Table, dict[int, str]]:
    """Cast a table of raw bytes to ``schema``: the typed table of the rows that convert,
    and the reason for each row (by index in ``table``) that does not, because a value
    is not text in ``encoding`` or does not convert to its column's type."""
    reasons: dict[int, str] = {}
    columns = [_column(table[f.name].combine_chunks(), f, reasons, encoding) for f in schema]
    bad = pa.array(sorted(reasons), pa.int64())
    keep = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), value_set=bad))
    typed = pa.table([pc.cast(c.filter(keep), f.type) for c, f in zip(columns, schema)], schema=schema)
    return typed, reasons


def _column(column: pa.Array, field_: pa.Field, reasons: dict[int, str], encoding: str) -> pa.Array:
    """One column as text ready to cast to ``field_``'s type (values that are not text,
    and null spellings in typed columns, as nulls), noting the reasons of bad rows."""
    undecodable = _bad_rows(column, pa.string())
    for i in undecodable:
        reasons.setdefault(i, f"{field_.name}: not valid {encoding} text (byte 0x{bad_byte(column[i].as_py()):02x})")
    column = pc.cast(_nulled(column, undecodable), pa.string())
    if pa.types.is_string(field_.type):
        return column
    column = pc.if_else(pc.is_in(column, value_set=_null_words()), pa.scalar(None, pa.string()), column)
    for i in _bad_rows(column, field_.type):
        reasons.setdefault(i, f"{field_.name}: cannot convert {column[i].as_py()!r} to {field_.type}")
    return column


def _nulled(column: pa.Array, rows: list[int]) -> pa.Array:
    if not rows:
        return column
    mask = pc.is_in(pa.array(range(len(column)), pa.int64()), value_set=pa.array(rows, pa.int64()))
    return pc.if_else(mask, pa.scalar(None, column.type), column)


def _bad_rows(column: pa.Array, type_: pa.DataType) -> list[int]:
    """Indices of values that do not cast to ``type_``."""
    return failing_values(column, lambda v: pc.cast(v, type_, safe=True),
                          (pa.ArrowInvalid, pa.ArrowNotImplementedError))
