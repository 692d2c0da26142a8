"""The CSV reader of the file source.

The file is streamed in chunks of whole lines, parsed on several threads at once,
each with a typed parse, every column with the type of the file's first block
(``columns:`` override; a column of nulls is a string; a column pyarrow infers as
binary because of a byte that is not UTF-8 is a string too: text stays text). A chunk
with a conversion error is parsed again as raw bytes and cast column by column: rows
with a value that is not text, or that does not convert to its column's type, come back
as dead letters, and the other rows load. Rows with the wrong number of fields are dead
letters too.

Every dead letter's record holds ``_file`` (the partition key) and ``_line``, the
row's line in the file with the header as line 1. ``_line`` counts records (rows are
numbered by counting the rows of the chunks before them, not by one thread reading
the file): it is exact unless blank lines or quoted values spanning lines come before
the row. As with pyarrow's own block reader, a quoted value may not span the line
where a chunk ends.
"""
from __future__ import annotations

import functools
import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from ..batch import DeadLetter
from ..columns import empty_table, failing_values
from .batching import Rows, Unreadable, block_size, grown_block
from .text import bad_byte, head_problem, label, readable, text_stream

HEAD_BYTES = 1 << 20
CHUNK_BYTES = 4 << 20                                   # bytes of whole lines parsed at a time
PARSE_THREADS = max(1, min(4, os.cpu_count() or 1))      # chunks parsed side by side
# bytes of chunks handed to the parse threads and not yet taken: every thread busy, and
# two chunks more ready, so none waits while the oldest chunk is being handed on (a
# count of chunks would not do: a block's line shared with the next is a chunk too)
IN_FLIGHT_BYTES = (PARSE_THREADS + 2) * CHUNK_BYTES
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
        with self._stream() as stream:
            self.head = stream.read(HEAD_BYTES)
        self.whole = len(self.head) < HEAD_BYTES
        self._first_rows: tuple[int, pa.Table] | None = None   # (block bytes, its rows), see _inferred
        # the first block: the rows the types are inferred from, and, parsed so, the
        # first batch; sized from the head's lines for a twentieth more than a batch, so
        # that batch need not wait for the next chunk's parse for its last rows
        self.block = block_size(self.head, source.batch_size + source.batch_size // 20)
        if problem := head_problem(self.head, source.encoding, self.whole):
            raise Unreadable(problem)

    @functools.cached_property
    def _schema(self) -> pa.Schema | None:
        if self._blank():
            return None
        while True:
            try:
                return self._inferred()
            except pa.ArrowInvalid as exc:
                self.block = grown_block(self.block, exc, 2)

    def schema(self) -> pa.Schema | None:
        """The schema of every batch: the first block's inferred types (see the module
        docstring), or None for a file without a header."""
        return self._schema

    def pieces(self, start: int) -> Iterator[Rows]:
        """The file's rows from row ``start`` on (a header-only file has none).

        The file is cut into chunks of whole lines (:data:`CHUNK_BYTES` or more), parsed
        side by side on :data:`PARSE_THREADS` threads (pyarrow parses without the GIL),
        :data:`IN_FLIGHT_BYTES` of them at a time, and handed on in file order; a chunk's
        first row is the count of rows, good and invalid, of the chunks before it, so
        every row keeps its exact number. A read resumed at ``start`` parses the rows
        before it again and drops them."""
        schema = self.schema()
        if schema is None or self._header_only():
            return
        raw = pa.schema([(f.name, pa.binary()) for f in schema])
        first = 0
        with self._stream() as stream, ThreadPoolExecutor(PARSE_THREADS, "etl-csv") as pool:
            parsing: deque = deque()        # (future, chunk bytes), in file order
            chunks, queued = self._chunks(stream, parsing), 0
            try:
                while True:
                    while queued < IN_FLIGHT_BYTES and (chunk := next(chunks, None)) is not None:
                        parsing.append((pool.submit(self._parse, chunk, schema, raw), chunk.size))
                        queued += chunk.size
                    if not parsing:
                        return
                    future, size = parsing.popleft()
                    queued -= size
                    piece = self._numbered(*future.result(), schema, first)
                    first = piece.end
                    if piece.end > start:
                        yield piece.split(start)[1] if piece.first < start else piece
            finally:
                for future, _ in parsing:
                    future.cancel()

    def _chunks(self, stream, parsing: deque) -> Iterator[pa.Buffer]:
        """The chunks to parse; the first block's rows, when inferring its types gave
        them as they are, go first into ``parsing`` as parsed, and the chunks start
        after that block."""
        first_rows, self._first_rows = self._first_rows, None
        if first_rows is None:
            return _line_chunks(stream)
        size, table = first_rows
        parsed: Future = Future()
        parsed.set_result((table, [], True))
        parsing.append((parsed, 0))
        while size > 0 and (skipped := stream.read_buffer(min(size, CHUNK_BYTES)).size):
            size -= skipped
        return _line_chunks(stream, header=False)

    def _parse(self, chunk: pa.Buffer, schema: pa.Schema, raw: pa.Schema) -> tuple[pa.Table, list, bool]:
        """One chunk as ``(table, invalid rows, typed)``: parsed as ``schema``, or after a
        conversion error as bytes (``typed`` False) for :func:`cast_rows` to sort out.
        An invalid row is ``(number in the chunk from 1, its fields, expected, text)``."""
        invalid: list = []

        def on_invalid(row) -> str:
            invalid.append((row.number, row.actual_columns, row.expected_columns, row.text))
            return "skip"

        def parse(columns: pa.Schema, check_utf8: bool = True) -> pa.Table:
            invalid.clear()
            return pcsv.read_csv(pa.BufferReader(chunk), read_options=pcsv.ReadOptions(
                column_names=columns.names, use_threads=False, block_size=chunk.size + 1),
                parse_options=self._parse_options(on_invalid),
                convert_options=pcsv.ConvertOptions(column_types=columns, strings_can_be_null=False,
                                                    check_utf8=check_utf8))

        if chunk.size == 0:
            return empty_table(schema), [], True
        try:
            return parse(schema, check_utf8=not _is_utf8(chunk)), invalid, True
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc):
                raise
        return parse(raw), invalid, False

    def _numbered(self, table: pa.Table, invalid: list, typed: bool, schema: pa.Schema, first: int) -> Rows:
        """A parsed chunk whose first row is row ``first``, as :class:`Rows`: invalid rows
        and (for a chunk parsed as bytes) rows that do not convert become dead letters."""
        rejects = [(first + number - 1, DeadLetter(f"row has {actual} fields, expected {expected}", {
            "_row": text, "_file": self.partition, "_line": first + number + 1}))
            for number, actual, expected, text in invalid]
        if not typed:
            gaps = [row for row, _ in rejects]
            raw, (table, reasons) = table, cast_rows(table, schema, label(self.source.encoding))
            rejects += self._letters(raw, reasons, first, gaps)
        return Rows(first, table, tuple(sorted(rejects, key=lambda r: r[0])))

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
        # declared columns are read as text here, so a bad value in the first block is
        # its row's dead letter later, not a file that cannot be read
        options = pcsv.ConvertOptions(column_types={name: pa.string() for name in declared})
        block, invalid = self._first_block(), []
        # the block parsed on all cores, in parts (read_csv infers each column's type
        # across all of them, as over the block whole), nothing read ahead (pyarrow's
        # streaming reader would read and parse the next block too)
        table = pcsv.read_csv(pa.BufferReader(block), read_options=pcsv.ReadOptions(
            block_size=max(HEAD_BYTES, -(-block.size // (2 * PARSE_THREADS))), use_threads=True),
            parse_options=self._parse_options(lambda row: invalid.append(row) or "skip"), convert_options=options)
        schema = pa.schema([(f.name, declared.get(f.name) or _text_if_untyped(f.type)) for f in table.schema])
        if not invalid and table.schema.equals(schema):
            # these are the block's rows as the typed parse of its chunks would give them,
            # so they are not parsed again; otherwise (a declared type, a column of nulls
            # or of bytes, a row without every field) the typed parse numbers them
            self._first_rows = (block.size, table)
        return schema

    def _first_block(self) -> pa.Buffer:
        """The file's first block (``self.block`` bytes, decoded) up to its last line
        break, whose rows the types are inferred from; the whole file when it is
        shorter. The head already read holds it when the block is no larger. Raises the
        error :func:`grown_block` grows the block for when no row ends in it."""
        if self._header_only():
            return pa.py_buffer(self._header_line())
        if self.whole or self.block <= len(self.head):
            block = pa.py_buffer(self.head[:self.block])
        else:
            with self._stream() as stream:
                block = stream.read_buffer(self.block)
        if block.size < self.block:
            return block
        end = _find(block, b"\n", last=True)
        if end <= _find(block, b"\n", last=False):       # not even the header and one row
            raise pa.ArrowInvalid("a row straddles the first block")
        return block.slice(0, end + 1)

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

    def _parse_options(self, handler) -> pcsv.ParseOptions:
        return pcsv.ParseOptions(delimiter=self.source.delimiter, invalid_row_handler=handler)


def _line_chunks(stream, header: bool = True) -> Iterator[pa.Buffer]:
    """The stream's data rows in chunks of whole lines, the ``header`` line (and a BOM)
    left out, without copying the data: each block read (:data:`CHUNK_BYTES`) gives
    the slice from its first line break to its last, and the line it shares with the
    next block (the only bytes copied) comes as a small chunk of its own."""
    carry = b""
    while True:
        block = stream.read_buffer(CHUNK_BYTES)
        if block.size == 0:
            if carry and not header:
                yield pa.py_buffer(carry)
            return
        first = _find(block, b"\n", last=False)
        if first < 0:               # a line longer than a block
            carry += block.to_pybytes()
            continue
        seam = carry + block.slice(0, first + 1).to_pybytes()
        if header:
            header = False
        else:
            yield pa.py_buffer(seam)
        last = _find(block, b"\n", last=True)
        if last > first:
            yield block.slice(first + 1, last - first)
        carry = block.slice(last + 1).to_pybytes()


def _find(block: pa.Buffer, byte: bytes, last: bool, window: int = 4096) -> int:
    """The offset of the first (or ``last``) ``byte`` in ``block``, or -1; looked for in
    a growing window at the start (or end), so a block is not scanned whole."""
    size = block.size
    while True:
        width = min(window, size)
        if last:
            found = block.slice(size - width).to_pybytes().rfind(byte)
            found = found + size - width if found >= 0 else -1
        else:
            found = block.slice(0, width).to_pybytes().find(byte)
        if found >= 0 or width == size:
            return found
        window *= 8


def _is_utf8(chunk: pa.Buffer) -> bool:
    """Whether ``chunk`` is UTF-8 throughout, checked at once (a tenth of what checking
    field by field costs). Then so is every field cut from it, at ASCII delimiters,
    quotes and line breaks, and the parse need not check each string again."""
    offsets = pa.py_buffer(struct.pack("<2q", 0, chunk.size))
    try:
        pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, chunk]).cast(pa.large_string())
    except pa.ArrowInvalid:
        return False
    return True


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
